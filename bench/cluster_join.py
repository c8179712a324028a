"""Join at hub B -> the endpoint listed online at an endpoint of hub A (two hubs on one PostgreSQL), against one hub.

Three set-ups in the same run, their trials interleaved (one of each per round, the first round a warm-up):

* `one hub`: a single hub on its embedded SQLite, observer and newcomer agents on it (bench/join_online.py's set-up);
* `cluster, same hub`: hubs A and B on one PostgreSQL; observer and newcomer both at hub A;
* `cluster, other hub`: the observer at hub A, the newcomer joins at hub B (its permit lists B only).

Two kinds of trials:

* `cli` (real processes): `ztm join` on the newcomer's agent, the observer agent's API (`GET /api/meshes/M/endpoints`)
  polled back to back until it lists the new endpoint online, then `ztm leave` and a wait until it is listed offline
  (bench/join_online.py's `join_cli`, `poll_api`, `leave`). Reported: join started -> visible, join returned ->
  visible, and, from the newcomer hub's log (millisecond timestamps), enrolment answered -> visible and session open
  at the newcomer's hub -> visible.
* `protocol` (the product's client code in this process, as bench/hub_load.py's agents): a watcher endpoint on each
  hub reads its event stream; a new endpoint enrols at hub B (`ztm.agent.mesh.enroll`), dials B with its new
  certificate and opens its event stream (`hello`); reported: enrolment answered -> the `endpoint` event (online) at
  the watcher on A, hello -> that event at A, and the same at B's own watcher (the one-hub path on the same hubs).
  Each trial closes the connection and waits until A's watcher hears the endpoint went offline.

Run:  .venv/bin/python -m bench.cluster_join [--trials 20] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster_common import ClusterHubs
from bench.common import Agent, Hub, Workspace, machine_facts, ms, summary, table, tree_facts
from bench.join_online import MESH, join_cli, leave, poll_api

LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_times(log: Path, ep_id: str) -> tuple[float | None, float | None]:
    """(enrolled, online) wall-clock times of endpoint `ep_id` from a hub's log (its asctime, milliseconds)."""
    enrolled = online = None
    for line in log.read_text(errors="replace").splitlines():
        if ep_id not in line:
            continue
        m = LOG_TIME.match(line)
        if not m:
            continue
        t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as logged
        if "enrolled endpoint" in line:
            enrolled = t
        elif "is online from" in line:
            online = t
    return enrolled, online


# ---------------------------------------------------------------------------------------------- cli trials


@dataclasses.dataclass
class Setup:
    label: str
    observer: Agent
    newcomer: Agent
    join_hub: Hub  # whose permit the newcomer joins with (bootstraps narrowed to the hub it must join at)
    log: Path  # that hub's log


def cli_cycle(s: Setup) -> dict[str, float]:
    wall0, perf0 = time.time(), time.perf_counter()
    start, end, ep_id = join_cli(s.newcomer, s.join_hub)
    seen, _polls = poll_api(s.observer, ep_id)
    enrolled, online = log_times(s.log, ep_id)
    leave(s.newcomer, s.observer, ep_id)

    def wall(perf: float) -> float:
        return wall0 + (perf - perf0)

    out = {"start": seen - start, "returned": seen - end}
    if enrolled is not None:
        out["enrolled"] = wall(seen) - enrolled
    if online is not None:
        out["online"] = wall(seen) - online
    return out


# ----------------------------------------------------------------------------------------- protocol trials


class Watcher:
    """An endpoint on one hub reading its event stream; notes when each endpoint was first heard online/offline."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.online: dict[str, float] = {}
        self.offline: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def read(self, reader: Any) -> None:
        while (event := await reader.next()) is not None:
            if event.get("type") != "endpoint":
                continue
            ep = event["ep"]
            now = time.perf_counter()
            if ep.get("online"):
                self.online.setdefault(ep["id"], now)
            elif ep["id"] in self.online:  # offline after online (an enrolment announces it offline first)
                self.offline.setdefault(ep["id"], now)
            self.changed.set()


class Protocol:
    def __init__(self, permit_path: Path, directory: Path) -> None:
        from ztm.permit import Permit

        self.permit = Permit.parse(permit_path.read_text())
        self.dir = directory
        self.conns: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def endpoint(self, address: str, name: str) -> tuple[str, Any, Any, dict[str, float]]:
        """Enrol `name` at `address` and connect there: (ep id, connection, event reader, timestamps)."""
        from ztm import pki
        from ztm.addr import Address
        from ztm.agent.link import CONNECT_TIMEOUT, EventReader, dial
        from ztm.agent.mesh import enroll
        from ztm.agent.tls import MeshFiles

        p = self.permit
        assert p.private_key is not None
        key, ep_id = pki.new_key(), str(uuid.uuid4())
        files = MeshFiles(self.dir / name)
        files.write(
            ca=pki.cert_to_pem(p.ca),
            user_cert=pki.cert_to_pem(p.certificate),
            user_key=pki.key_to_pem(p.private_key),
            ep_cert=None,
            agent_key=pki.key_to_pem(key),
        )
        here = Address.parse(address)
        t = {"start": time.perf_counter()}
        answer = await enroll(dataclasses.replace(p, bootstraps=(here,)), files, key, ep_id=ep_id, name=name, labels=[])
        t["enrolled"] = time.perf_counter()
        files.write_ep_cert(answer["certificate"])
        conn, _hub = await dial([here], p.mesh_id, files.ep_context())
        stream = await conn.open_stream("GET", "/api/events")
        await asyncio.wait_for(stream.response(), CONNECT_TIMEOUT)
        reader = EventReader(stream)
        hello = await asyncio.wait_for(reader.next(), CONNECT_TIMEOUT)
        assert hello is not None and hello.get("type") == "hello", hello
        t["hello"] = time.perf_counter()
        self.conns.append(conn)
        return ep_id, conn, reader, t

    async def watcher(self, address: str, label: str) -> Watcher:
        _ep, _conn, reader, _t = await self.endpoint(address, f"watch-{label}-{uuid.uuid4().hex[:6]}")
        w = Watcher(label)
        self.tasks.append(asyncio.get_running_loop().create_task(w.read(reader)))
        return w

    async def until(self, watcher: Watcher, book: str, ep_id: str, timeout: float = 10.0) -> float:
        deadline = time.perf_counter() + timeout
        while ep_id not in getattr(watcher, book):
            watcher.changed.clear()
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"watcher {watcher.label} never heard {ep_id} {book}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watcher.changed.wait(), left)
        return float(getattr(watcher, book)[ep_id])

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for conn in self.conns:
            conn.close()


async def protocol_trials(
    permit: Path, directory: Path, target: str, watch: dict[str, str], trials: int
) -> dict[str, list[float]]:
    """Endpoints enrol and connect at `target`; a watcher on each hub of `watch` (label -> address) times them."""
    proto = Protocol(permit, directory)
    out: dict[str, list[float]] = {}
    try:
        watchers = [await proto.watcher(address, label) for label, address in watch.items()]
        for i in range(trials + 1):  # trial 0: a warm-up
            ep_id, conn, _reader, t = await proto.endpoint(target, f"p{i}-{uuid.uuid4().hex[:6]}")
            seen = {w.label: await proto.until(w, "online", ep_id) for w in watchers}
            conn.close()
            closed = time.perf_counter()
            gone = {w.label: await proto.until(w, "offline", ep_id) for w in watchers}
            if i == 0:
                continue
            for label, at in seen.items():
                out.setdefault(f"enrolled->{label}", []).append(at - t["enrolled"])
                out.setdefault(f"hello->{label}", []).append(at - t["hello"])
                out.setdefault(f"start->{label}", []).append(at - t["start"])
                out.setdefault(f"closed->offline {label}", []).append(gone[label] - closed)
            out.setdefault("enrol call", []).append(t["enrolled"] - t["start"])
            out.setdefault("enrolled->hello", []).append(t["hello"] - t["enrolled"])
    finally:
        proto.close()
        await asyncio.sleep(0.1)
    return out


# ------------------------------------------------------------------------------------------------------ main


def row(label: str, values: list[float]) -> list[object]:
    s = summary(values)
    return [label, s["n"], ms(s["min"]), ms(s["p50"]), ms(s["p90"]), ms(s["max"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="counted trials per set-up and kind (default 20)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    args = parser.parse_args(argv)
    print(machine_facts())
    print(tree_facts())
    started = time.perf_counter()
    cli: dict[str, dict[str, list[float]]] = {}
    with Workspace("cjoin", keep=args.keep) as ws:
        cluster = ClusterHubs.start(ws, 2)
        try:
            a, b = cluster.hubs
            single = ws.start_hub(name="single")
            at_a = dataclasses.replace(a, permit=cluster.permit_for([0], ws.dir / "permit-a.json"))
            at_b = dataclasses.replace(b, permit=cluster.permit_for([1], ws.dir / "permit-b.json"))
            agents = {n: ws.start_agent(n) for n in ("obs1", "new1", "obsc", "newc")}
            agents["obs1"].cli("join", MESH, "--as", "observer", "--permit", str(single.permit))
            agents["obsc"].cli("join", MESH, "--as", "observer", "--permit", str(at_a.permit))
            setups = [
                Setup("one hub (SQLite)", agents["obs1"], agents["new1"], single, single.data / "hub.log"),
                Setup("cluster, same hub (A)", agents["obsc"], agents["newc"], at_a, a.data / "hub.log"),
                Setup("cluster, other hub (B -> A)", agents["obsc"], agents["newc"], at_b, b.data / "hub.log"),
            ]
            for i in range(args.trials + 1):
                for s in setups:
                    result = cli_cycle(s)
                    if i:
                        for k, v in result.items():
                            cli.setdefault(s.label, {}).setdefault(k, []).append(v)
                print(f"cli round {i} done", file=sys.stderr)
            proto_cluster = asyncio.run(
                protocol_trials(a.permit, ws.dir / "proto-c", b.address, {"A": a.address, "B": b.address}, args.trials)
            )
            proto_single = asyncio.run(
                protocol_trials(single.permit, ws.dir / "proto-1", single.address, {"one": single.address}, args.trials)
            )
        finally:
            cluster.close()
    elapsed = time.perf_counter() - started

    print()
    print(f"{args.trials} counted trials per set-up and kind (plus a warm-up each); run took {elapsed:.0f}s; ms")
    print()
    print("cli trials (real agents; the observer agent's API polled back to back):")
    rows = []
    for label, res in cli.items():
        rows.append(row(f"{label}: `ztm join` started -> observer lists it online", res["start"]))
        rows.append(row(f"{label}: `ztm join` returned -> observer lists it online", res["returned"]))
        if res.get("enrolled"):
            rows.append(row(f"{label}: enrolment answered (hub log) -> observer lists it online", res["enrolled"]))
        if res.get("online"):
            rows.append(row(f"{label}: session open at its hub (hub log) -> observer lists it online", res["online"]))
    print(table(["measure", "n", "min", "p50", "p90", "max"], rows))
    print()
    print("protocol trials (enrol + connect with the product's client code; watchers read their event streams):")
    rows = [
        row("cluster: enrolment at B answered -> `endpoint` online at A's watcher", proto_cluster["enrolled->A"]),
        row("cluster: hello at B -> `endpoint` online at A's watcher", proto_cluster["hello->A"]),
        row("cluster: enrolment at B answered -> at B's own watcher", proto_cluster["enrolled->B"]),
        row("cluster: hello at B -> at B's own watcher", proto_cluster["hello->B"]),
        row("cluster: enrol started -> at A's watcher", proto_cluster["start->A"]),
        row("cluster: enrol call at B", proto_cluster["enrol call"]),
        row("cluster: enrolment answered -> hello at B", proto_cluster["enrolled->hello"]),
        row("cluster: connection closed at B -> offline at A's watcher", proto_cluster["closed->offline A"]),
        row("one hub: enrolment answered -> at the watcher", proto_single["enrolled->one"]),
        row("one hub: hello -> at the watcher", proto_single["hello->one"]),
        row("one hub: enrol call", proto_single["enrol call"]),
        row("one hub: connection closed -> offline at the watcher", proto_single["closed->offline one"]),
    ]
    print(table(["measure", "n", "min", "p50", "p90", "max"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
