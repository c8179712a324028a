"""10,000 simulated agents online at once across 3 hubs on one PostgreSQL; then kill -9 of one hub.

The hubs are real `ztm run hub --store postgresql://...` processes on a throwaway PostgreSQL 15
(`bench/cluster_common.py`). The agents are simulated in `--workers` processes with bench/hub_load.py's `Worker`,
speaking the real protocol with the product's client code (`ztm.agent.mesh.enroll`, `ztm.agent.link.dial` with its
kernel keepalive, the event stream, and the liveness the hub's `hello` asks for: an HTTP/2 PING every `heartbeat` s,
or `POST /api/heartbeat` at that interval for a hub without `"liveness": "ping"`, as `HubLink`). What changes here:

* every agent has a home hub (agents are spread round-robin over the hubs) where it enrols and first connects, and
  knows every hub's address, home first;
* when its connection ends (the hub died) it dials again at once, as `HubLink` does, skipping the lost hub (the
  others in its own order, raced by `ztm.agent.link.dial` 0.25 s apart, the lost one last), with `HubLink`'s
  backoff (0.1 s doubling to 5 s) between failed rounds; it records when it lost its hub, when it had a `hello`
  again, and where;
* the event stream is read in full but not parsed line by line: `endpoint` events are counted in the raw bytes, so
  the load generator spends its CPU on TLS and HTTP/2 like an agent, not on JSON it never uses;
* the event stream asks for `watched` `endpoint` events (`--events`, PROTOCOL.md section 5), as an agent without a
  policy or network mode does: it keeps no endpoint list (`--events none` behaves as an agent of an earlier release,
  which gets every event, the O(n^2) fan-out of the earlier runs).

Phases:

1. ramp: `--levels` (default 1000,10000) agents, added at `--concurrency` enrolments in flight per worker; after each
   step the script waits until the fan-out is over (every worker's `endpoint`-event count still for 3 s and every
   hub's `GET /api/endpoints` listing every agent online);
2. steady state at the top level over `--window` seconds: each hub's RSS, fds and CPU, PostgreSQL's CPU (the
   postmaster and all its processes), the workers' CPU, from /proc;
3. `GET /api/endpoints` (the whole list) `--seq` times in a row from one agent on each hub: p50/p90/p99/max;
4. failover: probes start (one agent on each surviving hub calls `GET /api/hubs` every 100 ms, one lists the
   endpoints every second, and the coordinator runs `SELECT count(*) FROM presence` on the store every 100 ms), hub
   `--kill` is SIGKILLed, and the script waits until every agent is online again, none on the dead hub; it reports
   when each of the dead hub's agents had its `hello` elsewhere (after the kill: p50/p90/max), when the surviving hubs
   listed all agents online again, and the probes' latencies before and during the move.

Run:  .venv/bin/python -m bench.cluster_scale [--levels 1000,10000] [--workers 8] [--window 30] [--kill 2]

Idle cost against another revision (`--baseline-rev REV`, e.g. e2a1c9a): `--rounds` rounds, each starting a fresh
cluster of this tree and one of REV (`git archive` of its src/, hubs and generator both running it), A/B then B/A,
ramping to the top of `--levels` and measuring one steady `--window`; it prints hub and generator CPU per 1,000 agents.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baseline import BaselineError, check_imports_from, export_revision, resolve_revision
from bench.cluster_common import ClusterHubs, cpu_delta
from bench.common import (
    PYTHON,
    REPO,
    SRC,
    Workspace,
    bench_env,
    cpu_seconds,
    fd_limit,
    machine_facts,
    ms,
    open_fds,
    raise_nofile,
    rss_kib,
    summary,
    table,
    tree_facts,
)
from bench.hub_load import SimAgent, Worker, WorkerHandle, ask_all, needs_beats, open_session

MARK = b'{"type":"endpoint"'


# ------------------------------------------------------------------------------------------------------- worker


class ClusterAgent(SimAgent):
    """A simulated agent with a home hub and every hub's address; it moves to another hub when its hub goes away."""

    worker: ClusterWorker

    def __init__(self, worker: ClusterWorker, index: int) -> None:
        super().__init__(worker, index)
        n, g = len(worker.hubs), worker.number + index * worker.count
        self.home = g % n
        others = [(self.home + 1 + k) % n for k in range(n - 1)]
        turn = (g // n) % max(1, n - 1)
        self.mine = [self.home, *others[turn:], *others[:turn]]
        """This agent's hub list (indexes), home first; the others' order alternates between agents, as permits
        written at different hubs list them differently, so a dead hub's agents spread over the survivors."""
        self.hub = -1
        """Index of the hub it is connected to (-1: offline)."""
        self.moves: list[tuple[float, float, int, int]] = []
        """(lost at, hello again at, from hub, to hub), monotonic seconds."""
        self.stopping = False

    def order(self, after: int | None = None) -> list[Any]:
        """The hub addresses to dial: this agent's list, or after a loss the hubs after `after` in it (it last)."""
        start = 0 if after is None else self.mine.index(after) + 1
        n = len(self.mine)
        return [self.worker.hubs[self.mine[(start + k) % n]] for k in range(n)]

    async def enroll(self) -> None:
        """As `SimAgent.enroll`, at the home hub (the permit's bootstraps narrowed to it)."""
        from ztm import pki
        from ztm.agent.mesh import enroll
        from ztm.agent.tls import MeshFiles

        w = self.worker
        key = pki.new_key()
        self.files = MeshFiles(self.dir)
        self.files.write(
            ca=w.ca_pem, user_cert=w.user_cert_pem, user_key=w.user_key_pem, ep_cert=None, agent_key=pki.key_to_pem(key)
        )
        permit = dataclasses.replace(w.permit, bootstraps=(w.hubs[self.home],))
        answer = await enroll(permit, self.files, key, ep_id=self.ep_id, name=self.name, labels=[])
        self.files.write_ep_cert(answer["certificate"])

    async def connect(self) -> None:
        stream = await self._open([self.worker.hubs[self.home]])  # its home only: `dial` races the next ones
        self.tasks.append(asyncio.get_running_loop().create_task(self._supervise(stream)))

    async def _open(self, order: list[Any]) -> Any:
        """Dial `order` (first that answers), open the event stream, wait for hello; start the heartbeats."""
        w = self.worker
        conn, hub_id, reader, hello = await open_session(order, w.permit.mesh_id, self.files, w.events)
        self.conn = conn
        port = conn.peer_address[1] if conn.peer_address else 0
        self.hub = next((i for i, a in enumerate(w.hubs) if a.port == port), -1)
        w.hub_ids[self.hub] = hub_id
        interval = float(hello.get("heartbeat", 5.0))
        if needs_beats(conn, hello):
            self.tasks.append(asyncio.get_running_loop().create_task(self._beat_on(conn, interval)))
        return reader

    async def _supervise(self, reader: Any) -> None:
        """Read the event stream; when it ends, reconnect (next hub first) until it works, and record the move."""
        from ztm.aio import Backoff

        while not self.stopping:
            await self._count(reader)
            lost, was = time.monotonic(), self.hub
            self.hub = -1
            self.lost = True
            self.conn.close()
            if self.stopping:
                return
            backoff = Backoff(0.1, 5.0)
            while not self.stopping:
                try:
                    reader = await self._open(self.order(was))
                    break
                except Exception as exc:
                    self.worker.note(f"{self.name}: reconnect failed: {type(exc).__name__}: {exc}")
                    await asyncio.sleep(backoff.next())
            self.lost = False
            self.moves.append((lost, time.monotonic(), was, self.hub))

    async def _count(self, reader: Any) -> None:
        """Read the event stream to its end, counting `endpoint` events in the raw bytes (what the reader holds
        after the hello first)."""
        tail = reader._buf
        self.events += tail.count(MARK)
        tail = tail[-(len(MARK) - 1) :]
        try:
            while chunk := await reader.stream.read():
                data = tail + chunk
                self.events += data.count(MARK)
                tail = data[-(len(MARK) - 1) :]
        except Exception as exc:
            if not self.stopping:
                self.worker.note(f"{self.name}: event stream failed: {type(exc).__name__}: {exc}")

    async def _beat_on(self, conn: Any, interval: float) -> None:
        """`HubLink._beat`: a heartbeat every `interval`; no answer and nothing else received: close (reconnect)."""
        from ztm.agent.link import request
        from ztm.errors import Timeout

        while not conn.closed:
            await asyncio.sleep(interval)
            received = conn.bytes_received
            try:
                await request(conn, "POST", "/api/heartbeat", {}, timeout=max(2.0, 2 * interval))
                self.beats += 1
            except Timeout as exc:
                self.beat_errors += 1
                self.worker.note(f"{self.name}: heartbeat failed: Timeout: {exc}")
                if conn.closed or conn.bytes_received == received:
                    conn.close()
                    return
            except Exception as exc:
                if conn.closed:
                    return
                self.beat_errors += 1
                self.worker.note(f"{self.name}: heartbeat failed: {type(exc).__name__}: {exc}")
                conn.close()
                return

    def close(self) -> None:
        self.stopping = True
        super().close()


class ClusterWorker(Worker):
    agent_class = ClusterAgent

    def __init__(self, number: int, directory: Path, permit_path: Path) -> None:
        super().__init__(number, directory, permit_path)
        self.hubs: list[Any] = []
        self.count = 1
        self.probes: list[asyncio.Task[None]] = []
        self.probe_records: list[list[Any]] = []
        self.dead_hub_id: str | None = None
        self.hub_ids: dict[int, str] = {}
        """Hub index -> hub id, as the hubs' certificates said when the agents dialled them."""
        self.events: str | None = "watched"
        """The agents' `ztm-events` header (`--events`): `watched` as an agent that keeps no endpoint list."""

    def on_hub(self, hub: int) -> ClusterAgent:
        for agent in self.agents:
            assert isinstance(agent, ClusterAgent)
            if agent.hub == hub and agent.conn is not None and not agent.conn.closed:
                return agent
        raise RuntimeError(f"worker {self.number} has no agent online at hub {hub}")

    def cstats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        per_hub = [0] * len(self.hubs)
        offline = 0
        for a in self.agents:
            assert isinstance(a, ClusterAgent)
            if a.hub >= 0 and a.conn is not None and not a.conn.closed:
                per_hub[a.hub] += 1
            else:
                offline += 1
        return {
            "agents": len(self.agents),
            "per_hub": per_hub,
            "offline": offline,
            "events": sum(a.events for a in self.agents),
            "beats": sum(a.beats for a in self.agents),
            "beat_errors": sum(a.beat_errors for a in self.agents),
            "cpu": usage.ru_utime + usage.ru_stime,
            "rss_kib": usage.ru_maxrss,
            "problems": self.problems,
            "hub_ids": self.hub_ids,
        }

    async def list_at(self, hub: int, count: int) -> dict[str, Any]:
        agent = self.on_hub(hub)
        latencies, entries, online = [], 0, 0
        from ztm.agent.link import request

        for _ in range(count):
            t = time.perf_counter()
            eps = await request(agent.conn, "GET", "/api/endpoints", timeout=120)
            latencies.append(time.perf_counter() - t)
            entries, online = len(eps), sum(1 for e in eps if e.get("online"))
        return {"latencies": latencies, "entries": entries, "online": online}

    async def _probe(self, hub: int, path: str, interval: float) -> None:
        """`path` on an agent of `hub` every `interval` s; records [hub, path, sent at, latency (-1: failed),
        endpoints online, online on the dead hub]."""
        from ztm.agent.link import request

        agent = self.on_hub(hub)
        while True:
            t = time.monotonic()
            try:
                answer = await request(agent.conn, "GET", path, timeout=30)
                online = on_dead = 0
                if path == "/api/endpoints":
                    online = sum(1 for e in answer if e.get("online"))
                    on_dead = sum(1 for e in answer if e.get("online") and e.get("hub") == self.dead_hub_id)
                self.probe_records.append([hub, path, t, time.monotonic() - t, online, on_dead])
            except Exception as exc:
                self.probe_records.append([hub, path, t, -1.0, 0, 0])
                self.note(f"probe {path} at hub {hub} failed: {type(exc).__name__}: {exc}")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t)))

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        from ztm.addr import Address

        kind = cmd["cmd"]
        if kind == "config":
            self.hubs = [Address.parse(a) for a in cmd["hubs"]]
            self.count = int(cmd["nworkers"])
            self.events = None if cmd.get("events") in (None, "none") else str(cmd["events"])
            return {"ok": True}
        if kind == "cstats":
            return self.cstats()
        if kind == "list_at":
            return await self.list_at(int(cmd["hub"]), int(cmd["count"]))
        if kind == "probe_start":
            self.dead_hub_id = cmd.get("dead_hub_id")
            self.probe_records = []
            loop = asyncio.get_running_loop()
            for hub, path, interval in cmd["probes"]:
                self.probes.append(loop.create_task(self._probe(hub, path, interval)))
            return {"ok": True}
        if kind == "probe_stop":
            for task in self.probes:
                task.cancel()
            self.probes = []
            return {"records": self.probe_records}
        if kind == "moves":
            since = float(cmd["since"])
            moves = [m for a in self.agents if isinstance(a, ClusterAgent) for m in a.moves if m[0] >= since]
            return {"moves": moves}
        return await super().command(cmd)


def worker_main(number: int, directory: str, permit: str) -> int:
    from ztm.aio import install_uvloop

    raise_nofile(1 << 16)
    install_uvloop()
    worker = ClusterWorker(number, Path(directory), Path(permit))
    asyncio.run(worker.serve())
    return 0


# -------------------------------------------------------------------------------------------------- coordinator


def ctotals(workers: list[WorkerHandle]) -> dict[str, Any]:
    answers = ask_all(workers, cmd="cstats")
    out: dict[str, Any] = {k: sum(a[k] for a in answers) for k in ("agents", "offline", "events", "beats", "cpu")}
    out["beat_errors"] = sum(a["beat_errors"] for a in answers)
    out["per_hub"] = [sum(col) for col in zip(*(a["per_hub"] for a in answers), strict=True)]
    problems: dict[str, int] = {}
    for a in answers:
        for key, n in a["problems"].items():
            problems[key] = problems.get(key, 0) + n
    out["problems"] = problems
    out["hub_ids"] = {int(k): v for a in answers for k, v in a["hub_ids"].items()}
    return out


class PgProbe(threading.Thread):
    """`SELECT count(*) FROM presence` on the store every `interval` s, on its own connection: (sent at, latency)."""

    def __init__(self, url: str, password: str, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.url, self.password, self.interval = url, password, interval
        self.records: list[tuple[float, float]] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, password=self.password, autocommit=True) as conn:
            while not self.stop_flag.is_set():
                t = time.monotonic()
                try:
                    conn.execute("SELECT count(*) FROM presence").fetchone()
                    self.records.append((t, time.monotonic() - t))
                except psycopg.Error:
                    self.records.append((t, -1.0))
                self.stop_flag.wait(max(0.0, self.interval - (time.monotonic() - t)))


class Run:
    def __init__(self, args: argparse.Namespace, ws: Workspace, src: Path = SRC) -> None:
        self.args = args
        self.ws = ws
        self.cluster = ClusterHubs.start(ws, args.hubs, nofile=args.hub_nofile, src=src)
        for hub in self.cluster.hubs:
            print(f"hub {hub.index}: pid {hub.pid} at {hub.address}, open-files limit {fd_limit(hub.pid)}")
        self.workers = [
            WorkerHandle(ws, i, self.cluster.hubs[0].permit, module="bench.cluster_scale", src=src)
            for i in range(args.workers)
        ]
        self.idle: dict[str, float] = {}
        """The last steady window in numbers: agents, hubs' and generator's CPU % of a core, load average."""
        ask_all(self.workers, cmd="config", hubs=self.cluster.addresses(), nworkers=args.workers, events=args.events)
        self.current = 0
        self.ramps: list[list[object]] = []
        self.steady: list[list[object]] = []
        self.lists: list[list[object]] = []
        self.failover: list[str] = []
        self.probe_rows: list[list[object]] = []
        self.steady_facts: list[str] = []
        self.notes: list[str] = []
        self.problems: dict[str, int] = {}

    def pids(self) -> list[int]:
        return [h.pid for h in self.cluster.hubs if h.proc.alive]

    def listed_online(self, hub: int) -> tuple[int, int]:
        self.workers[0].send(cmd="list_at", hub=hub, count=1)
        a = self.workers[0].receive()
        if "error" in a:
            raise RuntimeError(a["error"])
        return a["entries"], a["online"]

    def ramp_to(self, level: int) -> None:
        add = level - self.current
        n = len(self.workers)
        cpu0 = {p: cpu_seconds(p) for p in self.pids()}
        pg0 = self.cluster.pg_cpu_seconds()
        t0 = time.perf_counter()
        for i, w in enumerate(self.workers):
            count = add // n + (1 if i < add % n else 0)
            w.send(cmd="add", count=count, concurrency=self.args.concurrency, give_up=self.args.give_up)
        answers = [w.receive() for w in self.workers]
        connected = time.perf_counter() - t0
        before, self.current = self.current, ctotals(self.workers)["agents"]
        # fan-out over: every hub lists every agent online, and the agents' event counts have been still for 3 s
        last, still_since, deadline = -1, time.perf_counter(), time.perf_counter() + self.args.give_up
        listed: list[int] = []
        while True:
            for h in self.cluster.hubs:
                h.proc.check_alive()
            events = ctotals(self.workers)["events"]
            now = time.perf_counter()
            if events != last:
                last, still_since = events, now
            if now - still_since >= 3.0:
                listed = [self.listed_online(h)[1] for h in range(len(self.cluster.hubs))]
                if all(n >= self.current for n in listed):
                    break
                if now - still_since >= 30.0:  # no event for 30 s: the fan-out is over, whatever is missing
                    self.notes.append(
                        f"at {self.current} agents the fan-out ended (no endpoint event for 30 s) with the hubs "
                        f"listing {' / '.join(str(n) for n in listed)} endpoints online"
                    )
                    break
            if now > deadline:
                self.notes.append(
                    f"fan-out to {self.current} not over after {self.args.give_up:g}s: the hubs list "
                    f"{' / '.join(str(n) for n in listed)} endpoints online"
                )
                break
            time.sleep(0.5)
        settled = still_since - t0
        cpu = [cpu_seconds(p) - cpu0[p] for p in self.pids()]
        pg = cpu_delta(pg0, self.cluster.pg_cpu_seconds())
        s = summary([t for a in answers for t in a["connect_times"]])
        self.ramps.append(
            [
                f"{before} -> {self.current}",
                f"{connected:.1f}",
                f"{settled:.1f}",
                " / ".join(f"{c:.0f}" for c in cpu),
                f"{1000 * sum(cpu) / max(1, add):.1f}",
                f"{pg:.1f}",
                ms(s["p50"]),
                ms(s["max"]),
                sum(a["enroll_errors"] for a in answers),
                sum(a["connect_errors"] for a in answers),
                sum(a["failed"] for a in answers),
                last,
            ]
        )
        print(f"{self.current} agents: connected in {connected:.1f}s, settled at {settled:.1f}s", file=sys.stderr)

    def window(self) -> None:
        before = ctotals(self.workers)
        pids = self.pids()
        cpu0 = {p: cpu_seconds(p) for p in pids}
        pg0 = self.cluster.pg_cpu_seconds()
        t0 = time.perf_counter()
        peak = dict.fromkeys(pids, 0)
        while time.perf_counter() - t0 < self.args.window:  # a measurement window, not a wait for state
            for p in pids:
                peak[p] = max(peak[p], rss_kib(p))
            time.sleep(1.0)
        elapsed = time.perf_counter() - t0
        pg = cpu_delta(pg0, self.cluster.pg_cpu_seconds())
        after = ctotals(self.workers)
        beats = after["beats"] - before["beats"]
        for hub, p in zip(self.cluster.hubs, pids, strict=True):
            cpu = cpu_seconds(p) - cpu0[p]
            self.steady.append(
                [
                    f"{self.current}: hub {hub.index}",
                    after["per_hub"][hub.index],
                    f"{rss_kib(p) / 1024:.0f}",
                    f"{peak[p] / 1024:.0f}",
                    open_fds(p),
                    f"{100 * cpu / elapsed:.1f}",
                ]
            )
        self.steady.append([f"{self.current}: PostgreSQL (all)", "", "", "", "", f"{100 * pg / elapsed:.1f}"])
        self.steady.append(
            [f"{self.current}: {len(self.workers)} workers (load generator)", after["agents"], "", "", "",
             f"{100 * (after['cpu'] - before['cpu']) / elapsed:.0f}"]
        )  # fmt: skip
        hubs_cpu = sum(cpu_seconds(p) - cpu0[p] for p in pids)
        self.idle = {
            "agents": float(after["agents"] - after["offline"]),
            "hubs": 100 * hubs_cpu / elapsed,
            "generator": 100 * (after["cpu"] - before["cpu"]) / elapsed,
            "pg": 100 * pg / elapsed,
            "load": os.getloadavg()[0],
            "rss_mib": sum(rss_kib(p) for p in pids) / 1024 / max(1, len(pids)),
            "beats_per_s": beats / elapsed,
        }
        self.steady_facts.append(
            f"{self.current} agents, window {elapsed:.0f}s: {beats} heartbeats ({beats / elapsed:.0f}/s), "
            f"{after['beat_errors'] - before['beat_errors']} failed; offline agents at the end: {after['offline']}"
        )
        print(f"steady window done: {self.steady_facts[-1]}", file=sys.stderr)
        for r in self.steady[-(len(pids) + 2) :]:
            print("  steady " + " | ".join(str(c) for c in r), file=sys.stderr)

    def list_calls(self) -> None:
        for hub in range(len(self.cluster.hubs)):
            pid = self.cluster.hubs[hub].pid
            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            self.workers[0].send(cmd="list_at", hub=hub, count=self.args.seq)
            a = self.workers[0].receive()
            wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
            s = summary(a["latencies"])
            self.lists.append(
                [f"{self.current}: hub {hub}", len(a["latencies"]), ms(s["p50"]), ms(s["p90"]), ms(s["p99"]),
                 ms(s["max"]), ms(cpu / len(a["latencies"])), a["entries"], a["online"], f"{wall:.1f}"]
            )  # fmt: skip

    def kill_one(self) -> None:
        k = self.args.kill
        survivors = [i for i in range(len(self.cluster.hubs)) if i != k]
        before = ctotals(self.workers)
        moving = before["per_hub"][k]
        dead_id = before["hub_ids"].get(k)
        probes = [[i, "/api/hubs", 0.1] for i in survivors] + [[survivors[0], "/api/endpoints", 1.0]]
        self.workers[0].send(cmd="probe_start", probes=probes, dead_hub_id=dead_id)
        self.workers[0].receive()
        pg = PgProbe(self.cluster.url, self.cluster.pg.password)
        pg.start()
        time.sleep(5.0)  # the probes' "before" window
        cpu0 = {h.index: cpu_seconds(h.pid) for h in self.cluster.hubs if h.index != k}
        pg0 = self.cluster.pg_cpu_seconds()
        t_kill = self.cluster.kill9(k)
        back_all = None
        deadline = t_kill + self.args.give_up
        while time.monotonic() < deadline:
            t = ctotals(self.workers)
            if t["offline"] == 0 and t["per_hub"][k] == 0:
                back_all = time.monotonic() - t_kill
                break
            time.sleep(0.25)
        after_wait = time.monotonic()
        time.sleep(3.0)  # let the probes see the cluster settle
        cpu = {i: cpu_seconds(self.cluster.hubs[i].pid) - c for i, c in cpu0.items()}
        pgcpu = cpu_delta(pg0, self.cluster.pg_cpu_seconds())
        spent = time.monotonic() - t_kill
        self.workers[0].send(cmd="probe_stop")
        records = self.workers[0].receive()["records"]
        pg.stop_flag.set()
        pg.join(5)
        moves = [m for a in ask_all(self.workers, cmd="moves", since=t_kill - 1.0) for m in a["moves"]]
        back = [m[1] - t_kill for m in moves if m[2] == k]
        s = summary(back)
        self.failover.append(
            f"hub {k} (SIGKILL) held {moving} agents; {len(back)} of them had a hello at another hub again: after "
            f"p50 {s['p50']:.2f}s, p90 {s['p90']:.2f}s, max {s['max']:.2f}s (all {before['agents']} online, none on "
            f"hub {k}: " + ("never within --give-up" if back_all is None else f"{back_all:.2f}s") + ")"
        )
        where: dict[int, int] = {}
        for m in moves:
            if m[2] == k:
                where[m[3]] = where.get(m[3], 0) + 1
        self.failover.append(f"where they went: {where}; other moves (agents of surviving hubs): "
                             f"{sum(1 for m in moves if m[2] != k)}")  # fmt: skip
        lists = [r for r in records if r[1] == "/api/endpoints" and r[3] >= 0 and r[2] > t_kill]
        full = next(
            (r for r in lists if r[4] >= before["agents"] and r[5] == 0), None
        )  # the first list at a survivor with every agent online and none on the dead hub
        self.failover.append(
            "hub "
            f"{survivors[0]}'s `GET /api/endpoints` first listed all {before['agents']} online, none on hub {k}, "
            + (f"in a call sent {full[2] - t_kill:.2f}s after the kill" if full else "never during the run")
        )
        rows = []

        def lat_row(label: str, values: list[tuple[float, float]]) -> None:
            ok = [v for _t, v in values if v >= 0]
            s = summary(ok)
            rows.append([label, len(values), len(values) - len(ok), ms(s["p50"]), ms(s["p99"]), ms(s["max"])])

        for i in survivors:
            rec = [(r[2], r[3]) for r in records if r[0] == i and r[1] == "/api/hubs"]
            lat_row(f"GET /api/hubs at hub {i}, 5 s before the kill", [x for x in rec if x[0] < t_kill])
            lat_row(f"GET /api/hubs at hub {i}, during the move", [x for x in rec if t_kill <= x[0] <= after_wait])
        lat_row("store: SELECT count(*) FROM presence, before", [x for x in pg.records if x[0] < t_kill])
        lat_row("store: SELECT count(*) FROM presence, during", [x for x in pg.records if t_kill <= x[0] <= after_wait])
        lat_row(
            f"GET /api/endpoints at hub {survivors[0]}, during", [(r[2], r[3]) for r in lists if r[2] <= after_wait]
        )
        self.probe_rows += rows
        self.failover.append(
            "CPU from the kill until 3 s after all were back "
            f"({spent:.1f}s): " + ", ".join(f"hub {i} {c:.1f}s" for i, c in cpu.items()) + f", PostgreSQL {pgcpu:.1f}s"
        )

    def run(self) -> None:
        levels = sorted({int(x) for x in self.args.levels.split(",")})
        kill_at = {int(x) for x in self.args.kill_at.split(",")} if self.args.kill_at else {levels[-1]}
        for level in levels:
            self.ramp_to(level)
            self.window()
            self.list_calls()
            for r in self.lists[-len(self.cluster.hubs) :]:
                print("  list " + " | ".join(str(c) for c in r), file=sys.stderr)
            if self.args.kill >= 0 and level in kill_at:
                self.kill_one()
                for line in self.failover[-4:]:
                    print("  failover " + line, file=sys.stderr)
                for r in self.probe_rows[-7:]:
                    print("  probe " + " | ".join(str(c) for c in r), file=sys.stderr)
                if level != levels[-1]:  # bring the hub back for the next level (its agents stay where they went)
                    self.cluster.restart(self.args.kill)
        self.problems = ctotals(self.workers)["problems"]

    def report(self) -> None:
        a = self.args
        print()
        print(f"hubs: {a.hubs} on one PostgreSQL; workers: {a.workers}, enrolments in flight per worker: "
              f"{a.concurrency}")  # fmt: skip
        print()
        print("Connecting (enrol at the home hub + event stream) and the cluster's fan-out:")
        print(
            table(
                ["agents", "all online s", "fan-out over s", "hub CPU s (each)", "hub CPU ms/agent", "PG CPU s",
                 "connect p50 ms", "connect max ms", "enrol errors", "connect errors", "gave up", "endpoint events"],
                self.ramps,
            )
        )  # fmt: skip
        if self.steady:
            print()
            print("Steady state (" + "; ".join(self.steady_facts) + "):")
            print(table(["process", "agents", "RSS MiB", "peak RSS MiB", "fds", "CPU %"], self.steady))
        if self.lists:
            print()
            print(f"GET /api/endpoints, {a.seq} calls in a row from one agent at each hub:")
            print(
                table(["hub", "calls", "p50 ms", "p90 ms", "p99 ms", "max ms", "hub CPU ms/call", "entries", "online",
                       "wall s"], self.lists)
            )  # fmt: skip
        if self.failover:
            print()
            print("Failover:")
            for line in self.failover:
                print("* " + line)
            print()
            print(table(["probe", "calls", "failed", "p50 ms", "p99 ms", "max ms"], self.probe_rows))
        for hub in self.cluster.hubs:
            log_path = hub.data / "hub.log"
            text = log_path.read_text(errors="replace") if log_path.exists() else ""
            problems = [line for line in text.splitlines() if " ERROR " in line or " WARNING " in line]
            print(f"hub {hub.index} log: {len(problems)} warning/error lines")
            for line in problems[:4]:
                print("  " + line[:200])
        if self.problems:
            print()
            print("problems the simulated agents met (counted, agent names and ports taken out):")
            for text, n in sorted(self.problems.items(), key=lambda kv: -kv[1])[:12]:
                print(f"  {n:6d} x {text[:170]}")
        for note in self.notes:
            print("note: " + note)


def idle_ab(args: argparse.Namespace) -> int:
    """`--baseline-rev REV`: the steady-state cost of idle agents, this tree against REV, `--rounds` rounds of one
    cluster each (PostgreSQL, `--hubs` hubs, `--workers` generator processes all running that side's `ztm`), A then B
    in even rounds and B then A in odd ones; at the top of `--levels` each, no kill. Prints every round and the median
    (min-max) of hub and generator CPU per 1,000 agents."""
    try:
        commit = resolve_revision(REPO, args.baseline_rev)
    except BaselineError as exc:
        raise SystemExit(str(exc)) from None
    level = max(int(x) for x in args.levels.split(","))
    rows: list[list[object]] = []
    per: dict[str, dict[str, list[float]]] = {"this tree": {}, f"{commit[:9]}": {}}
    with Workspace("cscale-base", keep=args.keep) as base_ws:
        base_src = export_revision(REPO, commit, base_ws.dir / "base")
        check_imports_from(PYTHON, base_src, bench_env(base_ws.dir, src=base_src))
        sides = {"this tree": SRC, f"{commit[:9]}": base_src}
        for rnd in range(args.rounds):
            for side in list(sides) if rnd % 2 == 0 else list(reversed(sides)):  # A, B then B, A
                with Workspace("cscale", keep=args.keep) as ws:
                    run = Run(args, ws, src=sides[side])
                    try:
                        run.ramp_to(level)
                        run.window()
                    except RuntimeError as exc:  # a hub died (it happens under load): say so, go on with the rounds
                        first = str(exc).splitlines()[0]
                        print(f"  round {rnd} {side}: failed ({first}); logs in {ws.dir}", file=sys.stderr)
                        rows.append([rnd, side, "failed: " + first[:60], "", "", "", "", "", "", "", ""])
                        continue
                    finally:
                        with contextlib.suppress(Exception):
                            ask_all(run.workers, cmd="quit")
                        run.cluster.close()
                idle = run.idle
                k = max(1.0, idle["agents"]) / 1000
                values = {"hubs": idle["hubs"] / k, "generator": idle["generator"] / k, "pg": idle["pg"] / k}
                for name, v in values.items():
                    per[side].setdefault(name, []).append(v)
                rows.append(
                    [rnd, side, f"{idle['agents']:.0f}", f"{idle['hubs']:.1f}", f"{idle['generator']:.1f}",
                     f"{idle['pg']:.1f}", f"{values['hubs']:.2f}", f"{values['generator']:.2f}",
                     f"{idle['rss_mib']:.0f}", f"{idle['beats_per_s']:.0f}", f"{idle['load']:.2f}"]
                )  # fmt: skip
                print("  round " + " | ".join(str(c) for c in rows[-1]), file=sys.stderr)
    print()
    print(f"Idle agents at steady state, {level} agents over {args.hubs} hubs, window {args.window:g} s, "
          f"this tree against {commit[:12]}, {args.rounds} rounds (A/B interleaved):")  # fmt: skip
    print(
        table(["round", "code", "agents online", "hubs CPU % (sum)", "generator CPU %", "PG CPU %",
               "hubs % per 1k agents", "generator % per 1k", "hub RSS MiB (mean)", "heartbeats/s", "load avg 1m"],
              rows)
    )  # fmt: skip
    print()
    for name in ("hubs", "generator", "pg"):
        cells = []
        for side, got in per.items():
            v = got.get(name, [])
            if v:
                cells.append(f"{side} {statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})")
        print(f"{name} CPU % of a core per 1,000 idle agents, median (min-max): " + "; ".join(cells))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1000,10000", help="agent counts to ramp through (default %(default)s)")
    parser.add_argument("--hubs", type=int, default=3, help="hubs on the store (default %(default)s)")
    parser.add_argument("--workers", type=int, default=8, help="client processes (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=10, help="enrolments in flight per worker (default 10)")
    parser.add_argument("--window", type=float, default=30.0, help="steady-state seconds (default %(default)s)")
    parser.add_argument("--seq", type=int, default=50, help="list calls in a row per hub (default %(default)s)")
    parser.add_argument("--kill", type=int, default=2, help="hub to SIGKILL at the end, -1: none (default 2)")
    parser.add_argument(
        "--kill-at",
        default="",
        help="levels after which to kill it (comma-separated; default: the top level); "
        "below the top the hub is restarted afterwards and the ramp goes on",
    )
    parser.add_argument(
        "--events",
        choices=("watched", "all", "none"),
        default="watched",
        help="the agents' ztm-events header: watched (an agent without a policy or network mode, the default), all "
        "(one that keeps the whole list), none (an agent of an earlier release: every endpoint event)",
    )
    parser.add_argument("--give-up", type=float, default=900.0, help="seconds any phase may take (default 900)")
    parser.add_argument("--hub-nofile", type=int, default=1 << 16, help="the hubs' soft open-files limit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    parser.add_argument(
        "--baseline-rev",
        metavar="REV",
        help="instead of the ramp/kill run: the idle cost of this tree against REV at the top level, --rounds rounds",
    )
    parser.add_argument("--rounds", type=int, default=5, help="A/B rounds with --baseline-rev (default %(default)s)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(int(args.worker[0]), args.worker[1], args.worker[2])
    if args.baseline_rev:
        soft, hard = raise_nofile(1 << 16)
        print(machine_facts())
        print(tree_facts())
        started = time.perf_counter()
        idle_ab(args)
        print(f"\ntotal run time {time.perf_counter() - started:.0f}s")
        return 0
    soft, hard = raise_nofile(1 << 16)
    print(machine_facts())
    print(tree_facts())
    print(f"this script's open-files limit (soft/hard): {soft}/{hard}")
    started = time.perf_counter()
    with Workspace("cscale", keep=args.keep) as ws:
        run = Run(args, ws)
        try:
            run.run()
        finally:
            with contextlib.suppress(Exception):
                ask_all(run.workers, cmd="quit")
            run.report()
            run.cluster.close()
    print(f"\ntotal run time {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
