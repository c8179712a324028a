"""Time for a policy change to reach 1,000 endpoints (issue 16, "Measure"): p50, p90 and max over the endpoints.

The hub is a real `ztm run hub` process; the endpoints are bench/hub_load.py's simulated agents (`--workers`
processes, the product's own enrolment and event-stream code), each noting the wall-clock time (one machine, one
clock) at which its event stream delivered each `policy` version. This script sets the policy with root's user
certificate (`POST /api/policy` on a fresh HTTP/2 connection; the clock starts just before the request is sent) and
waits until every endpoint has the new version. Rounds alternate a small policy and one of 1,000 rules (about 90 KB).

Run:  .venv/bin/python -m bench.policy_fanout [--agents 1000] [--workers 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Workspace, machine_facts, ms, raise_nofile, summary, table, tree_facts, wait_until
from bench.hub_load import SimAgent, Worker, WorkerHandle, ask_all

SMALL = """{
  "tagOwners": {"tag:db": ["root"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["tag:db:tunnel/tcp/pg"]}],  // round ROUND
}
"""


HEADERS = ["round", "policy", "bytes", "set answered ms", "reached", "missing", "p50 ms", "p90 ms", "max ms"]
"""`set answered`: the POST's answer (parse, tests, store, push to every session queue); p50/p90/max: from just
before the POST to the event at the endpoints."""


def big_policy(round_: int) -> str:
    rules = ",\n".join(
        f'    {{"action": "accept", "src": ["user{i}"], "dst": ["tag:db:tunnel/tcp/s{i}"]}}' for i in range(1000)
    )
    return f'{{\n  "tagOwners": {{"tag:db": ["root"]}},\n  "acls": [\n{rules},\n  ],\n}}\n// round {round_}\n'


class PolicyAgent(SimAgent):
    """A simulated agent that notes when each policy version arrived on its event stream."""

    def __init__(self, worker: Worker, index: int) -> None:
        super().__init__(worker, index)
        self.arrived: dict[int, float] = {}

    async def _read(self, reader: Any) -> None:
        try:
            while (event := await reader.next()) is not None:
                if event.get("type") == "policy":
                    self.arrived[int(event["version"])] = time.time()
        except Exception as exc:
            self.worker.note(f"{self.name}: event stream failed: {type(exc).__name__}: {exc}")
        self.lost = True


class PolicyWorker(Worker):
    agent_class = PolicyAgent

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["cmd"] == "arrivals":
            version = int(cmd["version"])
            return {"times": [a.arrived.get(version) for a in self.agents if isinstance(a, PolicyAgent)]}
        return await super().command(cmd)


def worker_main(number: int, directory: str, permit: str) -> int:
    from ztm.aio import install_uvloop

    raise_nofile(1 << 16)
    install_uvloop()
    asyncio.run(PolicyWorker(number, Path(directory), Path(permit)).serve())
    return 0


async def set_policy(permit_path: Path, folder: Path, text: str) -> tuple[float, float, int]:
    """POST /api/policy as root (the permit's user certificate); (wall time just before sending, seconds until the
    answer, version)."""
    from ztm import h2
    from ztm.agent.tls import MeshFiles
    from ztm.permit import Permit

    permit = Permit.parse(permit_path.read_text())
    assert permit.private_key is not None
    files = MeshFiles(folder)
    if not folder.exists():
        from ztm import pki

        files.write(
            ca=pki.cert_to_pem(permit.ca), user_cert=pki.cert_to_pem(permit.certificate),
            user_key=pki.key_to_pem(permit.private_key), ep_cert=None, agent_key=pki.key_to_pem(pki.new_key()),
        )  # fmt: skip
    hub = permit.bootstraps[0]
    conn = await h2.connect(hub.host, hub.port, files.user_context(), timeout=10.0)
    try:
        body = json.dumps({"text": text, "note": "bench"}).encode()
        sent = time.time()
        status, _headers, raw = await conn.request(
            "POST", "/api/policy", body=body, headers=[("content-type", "application/json")], timeout=30
        )
        if status != 200:
            raise RuntimeError(f"POST /api/policy answered {status}: {raw[:300]!r}")
        return sent, time.time() - sent, int(json.loads(raw)["version"])
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000, help="simulated endpoints (default %(default)s)")
    parser.add_argument("--workers", type=int, default=4, help="client processes (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="sets of each policy (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=25, help="enrolments in flight per worker (default 25)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(int(args.worker[0]), args.worker[1], args.worker[2])
    raise_nofile(1 << 16)
    print(machine_facts())
    print(tree_facts())
    rows: list[list[object]] = []
    with Workspace("policy-fanout", keep=args.keep) as ws:
        hub = ws.start_hub()
        workers = [WorkerHandle(ws, i, hub.permit, module="bench.policy_fanout") for i in range(args.workers)]
        try:
            started = time.perf_counter()
            n = len(workers)
            for i, w in enumerate(workers):
                w.send(cmd="add", count=args.agents // n + (1 if i < args.agents % n else 0),
                       concurrency=args.concurrency, give_up=180.0)  # fmt: skip
            failed = sum(w.receive()["failed"] for w in workers)
            print(f"{args.agents - failed} endpoints online in {time.perf_counter() - started:.1f} s ({failed} failed)")
            for round_ in range(args.rounds):
                for label, text in (
                    ("small", SMALL.replace("ROUND", str(round_))),
                    ("1,000 rules", big_policy(round_)),
                ):
                    sent, answered, version = asyncio.run(set_policy(hub.permit, ws.dir / "root-files", text))
                    times: list[float | None] = []

                    def everyone(v: int = version, times: list[float | None] = times) -> bool:
                        times[:] = [t for a in ask_all(workers, cmd="arrivals", version=v) for t in a["times"]]
                        return all(t is not None for t in times)

                    with contextlib.suppress(Exception):
                        wait_until(everyone, 60, f"every endpoint to get policy version {version}", interval=0.2)
                    delays = [t - sent for t in times if t is not None]
                    s = summary(delays)
                    rows.append([round_ + 1, label, len(text), ms(answered), len(delays), len(times) - len(delays),
                                 ms(s["p50"]), ms(s["p90"]), ms(s["max"])])  # fmt: skip
                    print(table(HEADERS, rows[-1:]))
        finally:
            with contextlib.suppress(Exception):
                ask_all(workers, cmd="quit")
    print()
    print(table(HEADERS, rows))
    for label in ("small", "1,000 rules"):
        p50s = [float(str(r[6])) for r in rows if r[1] == label]
        maxes = [float(str(r[8])) for r in rows if r[1] == label]
        if p50s:
            median = sorted(p50s)[len(p50s) // 2]
            print(f"{label}: median of the rounds' p50 {median:.1f} ms, worst max {max(maxes):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
