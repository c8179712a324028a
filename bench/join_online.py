"""How long after `ztm join` returns on a new agent does another endpoint's agent list it online?

Setup: one hub, agent A (the observer, joined once as `observer`) and agent B (the newcomer), all real processes on
127.0.0.1 with temporary data directories. B then runs leave/join cycles with the root permit, always as endpoint
`newcomer` (so every join after the first replaces B's own offline record, as a reinstalled machine would):

* `api` cycles: `ztm join` on B (a real CLI process, timed), then A's local API `GET /api/meshes/M/endpoints` polled
  back to back on one kept-alive connection until it lists B's new endpoint id online. The figure is the time from
  the `ztm join` process exiting to the arrival of the first answer that shows B online.
* `cli` cycles: the same, but A is polled with `ztm get ep -o json` processes, one after the other.
* `direct` cycles: B joins by `POST /api/meshes/M` on its API (no CLI process): the agent-side cost of a join.

Between cycles B runs `ztm leave` (timed) and the script polls A until B is offline (leave -> offline, also
reported), so every join starts from the same state. The first cycle is a warm-up and is not counted.

Run:  .venv/bin/python -m bench.join_online [--joins 20] [--keep]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Agent, Hub, Workspace, machine_facts, ms, summary, table, tree_facts, wait_until

MESH = "bench"
NAME = "newcomer"
DEADLINE = 10.0


def listed_online(eps: Any, ep_id: str) -> bool:
    return isinstance(eps, list) and any(isinstance(e, dict) and e.get("id") == ep_id and e.get("online") for e in eps)


def poll_api(observer: Agent, ep_id: str) -> tuple[float, int]:
    """Poll A's API as fast as possible; returns (monotonic time the first 'online' answer arrived, polls made)."""
    deadline = time.perf_counter() + DEADLINE
    polls = 0
    while True:
        status, eps = observer.api("GET", f"/api/meshes/{MESH}/endpoints")
        polls += 1
        now = time.perf_counter()
        if status == 200 and listed_online(eps, ep_id):
            return now, polls
        if now > deadline:
            raise TimeoutError(f"observer did not list {ep_id} online within {DEADLINE}s (last: {status} {eps})")


def poll_cli(observer: Agent, ep_id: str) -> tuple[float, int]:
    """Poll A with `ztm get ep -o json` processes, one after the other; same result as `poll_api`."""
    deadline = time.perf_counter() + DEADLINE
    polls = 0
    while True:
        cp = observer.cli("--mesh", MESH, "get", "ep", "-o", "json")
        polls += 1
        now = time.perf_counter()
        if listed_online(json.loads(cp.stdout), ep_id):
            return now, polls
        if now > deadline:
            raise TimeoutError(f"observer did not list {ep_id} online within {DEADLINE}s")


def join_cli(newcomer: Agent, hub: Hub) -> tuple[float, float, str]:
    """`ztm join` on B; returns (start, end, new endpoint id) in perf_counter seconds."""
    argv = newcomer.cli_argv("join", MESH, "--as", NAME, "--permit", str(hub.permit), "-o", "json")
    start = time.perf_counter()
    cp = subprocess.run(argv, capture_output=True, text=True, env=newcomer.env, cwd=newcomer.home, timeout=30)
    end = time.perf_counter()
    if cp.returncode != 0:
        raise RuntimeError(f"ztm join failed ({cp.returncode}): {cp.stdout}{cp.stderr}")
    return start, end, str(json.loads(cp.stdout)["ep_id"])


def join_direct(newcomer: Agent, hub: Hub) -> tuple[float, float, str]:
    """`POST /api/meshes/M` on B's API; same result as `join_cli`."""
    body = {"as": NAME, "permit": hub.permit_json()}
    start = time.perf_counter()
    status, view = newcomer.api("POST", f"/api/meshes/{MESH}", body, timeout=30)
    end = time.perf_counter()
    if status != 201:
        raise RuntimeError(f"join via the API failed: {status} {view}")
    return start, end, str(view["ep_id"])


def leave(newcomer: Agent, observer: Agent, ep_id: str) -> tuple[float, float]:
    """`ztm leave` on B, then wait until A lists B offline; returns (leave duration, leave return -> offline)."""
    start = time.perf_counter()
    newcomer.cli("leave", MESH)
    end = time.perf_counter()

    def offline() -> bool:
        status, eps = observer.api("GET", f"/api/meshes/{MESH}/endpoints")
        return status == 200 and not listed_online(eps, ep_id)

    wait_until(offline, DEADLINE, "the observer to list the newcomer offline", interval=0.0)
    return end - start, time.perf_counter() - end


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--joins", type=int, default=20, help="counted joins per mode (default 20)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    args = parser.parse_args(argv)

    print(machine_facts())
    print(tree_facts())
    results: dict[str, list[float]] = {}
    polls: dict[str, list[int]] = {}

    def add(key: str, value: float) -> None:
        results.setdefault(key, []).append(value)

    with Workspace("join", keep=args.keep) as ws:
        hub = ws.start_hub()
        observer = ws.start_agent("observer")
        newcomer = ws.start_agent("newcomer")
        observer.cli("join", MESH, "--as", "observer", "--permit", str(hub.permit))
        modes: list[tuple[str, Callable[[Agent, Hub], tuple[float, float, str]], Callable[..., tuple[float, int]]]]
        modes = [("api", join_cli, poll_api), ("cli", join_cli, poll_cli), ("direct", join_direct, poll_api)]
        started = time.perf_counter()
        for mode, do_join, poll in modes:
            for i in range(args.joins + 1):  # cycle 0 is a warm-up
                start, end, ep_id = do_join(newcomer, hub)
                seen, n = poll(observer, ep_id)
                leave_time, offline_after = leave(newcomer, observer, ep_id)
                if i == 0:
                    continue
                add(f"{mode}:join", end - start)
                add(f"{mode}:online", seen - end)
                add(f"{mode}:start-online", seen - start)
                polls.setdefault(mode, []).append(n)
                add("leave", leave_time)
                add("offline", offline_after)
            print(f"mode {mode}: {args.joins} joins done", file=sys.stderr)
        elapsed = time.perf_counter() - started

    def row(label: str, key: str) -> list[object]:
        s = summary(results[key])
        return [label, s["n"], ms(s["min"]), ms(s["p50"]), ms(s["p90"]), ms(s["max"])]

    print()
    print(f"joins per mode: {args.joins} (plus 1 warm-up each), total run {elapsed:.1f}s; times in ms")
    print()
    rows = [
        row("join returned -> observer API lists it online", "api:online"),
        row("join returned -> observer `ztm get ep -o json` lists it online", "cli:online"),
        row("API join (POST /api/meshes/M) returned -> API lists it online", "direct:online"),
        row("`ztm join` started -> observer API lists it online", "api:start-online"),
        row("API join started -> observer API lists it online", "direct:start-online"),
        row("`ztm join` command (whole process)", "api:join"),
        row("`ztm join` command (cli mode cycles)", "cli:join"),
        row("join via POST /api/meshes/M (no CLI process)", "direct:join"),
        row("`ztm leave` command (whole process)", "leave"),
        row("leave returned -> observer API lists it offline", "offline"),
    ]
    print(table(["measure", "n", "min", "p50", "p90", "max"], rows))
    print()
    for mode, counts in polls.items():
        first = sum(1 for c in counts if c == 1)
        print(f"{mode}: the first poll already showed the new endpoint online in {first}/{len(counts)} joins")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
