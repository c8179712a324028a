"""NAT traversal's birthday method (issue 15): symmetric NAT <-> eim NAT, per K, with real agents in the NAT lab.

Needs root: it builds a lab (tests/lab/netlab.py) with `home` behind an `eim` router and `sym` behind a `symmetric`
one (`masquerade random,fully-random`), a hub in `datacenter`, an agent at each site and an echo server at `sym`
offered to home as a tunnel (home the entrance, sym the exit). For each K of `--k`, both agents run with
`--p2p-birthday K --p2p-birthday-every 1` (so that a failed attempt may be retried at once within a trial), and each
of `--trials` trials:

1. restarts the entrance agent (same data: a fresh process, no channel, no punch history, counters at 0) and waits
   until it lists the exit online;
2. t0 = the first tunnelled connection (connect, 1-byte echo, close): it goes through the hub and starts the
   ordinary punch, which times out (3 s: no simultaneous open meets a symmetric NAT's next mapping);
3. new connections follow every 50 ms; the ordinary punch's timeout starts the next punch at once, a birthday
   attempt (before 2026-12-07's h-punch branch: after the 2 s backoff, started by one of the new connections);
   t1 = the start of the first connection counted direct by the entrance's inbound (`ztm tunnel describe`), and
   the successful birthday attempt's own time from the agent's log ("punched ... in N ms (birthday)");
4. reads the entrance's `punch_birthday_attempts` / `_successes` and both agents' peak open descriptors (sampled
   every 10 ms from /proc/PID/fd while the trial runs), and the exit's refusals so far.

The exit is not restarted, and it answers two to three punches of the same caller per trial (the ordinary one, the
birthday attempt, the pool's refill once the channel is up); its per-caller limit (`ztm.agent.direct.PUNCH_LIMIT`: 6
per 10 s) then refused a punch in every other trial, and the entrance backed off 2 s (5.2 s trials alternating with
3.2 s ones, each slow one with exactly one `punch_refused_rate` at the exit; bench/RESULTS.md). A pair meeting for the
first time meets no such history, so each trial now starts `--gap` seconds (default: the limit's window) after the
previous one ended: the exit's limit has forgotten the previous trial's punches.

Reported per K: birthday attempts and successes (the success rate per attempt, against 1 - exp(-K*K/64,512)), the
time to direct t1 - t0 (p50, p90, min, max: it includes the ordinary punch's 3 s), and the peak
descriptors of each agent.

`--reverse` swaps the roles: `sym` is the entrance (the symmetric side starts the punch) and `home` the exit.

Run:  sudo .venv/bin/python -m bench.p2p_birthday [--k 256 512] [--trials 20] [--keep] [--reverse] [--gap S]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import support  # tests/support.py: hub and agent processes in a namespace
from bench.common import machine_facts, percentile, table, tree_facts
from bench.p2p import PUNCHED_LOG, agent_metric
from bench.tunnel import connect_cycle
from lab import netlab
from lab.netlab import Lab
from ztm.agent.direct import PUNCH_LIMIT

MESH = "bench"
SITES = {"home": "eim", "sym": "symmetric"}
ECHO = 9101
ENTRANCE = 19101
ECHO_SERVER = """
import socket, sys, threading
def serve(c):
    with c:
        while data := c.recv(65536):
            c.sendall(data)
s = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=128)
print("ready", flush=True)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""


class FdPeak:
    """The most descriptors the processes `pids` held at once, sampled every 10 ms in a thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError):  # between two processes (the entrance restarts)
                    self.peak[name] = max(self.peak[name], len(os.listdir(f"/proc/{pid}/fd")))

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peak


def inbound_direct(agent: support.Agent) -> int:
    status, view = agent.api("GET", f"/api/meshes/{MESH}/apps/tunnel/inbound/tcp/echo")
    return int(view.get("direct", 0)) if status == 200 and isinstance(view, dict) else 0


def start_agents(lab: Lab, tmp: Path, hub: support.Hub, k: int, roles: tuple[str, str]) -> dict[str, support.Agent]:
    """An agent at each site; the echo service offered at `roles[1]` (the exit), its inbound at `roles[0]`."""
    extra = ["--p2p-birthday", str(k), "--p2p-birthday-every", "1"]
    agents = {}
    for host in SITES:
        agent = support.start_agent(tmp, f"{host}-k{k}", netns=lab.ns(host), port=7777, extra=extra)
        agent.join(MESH, f"{host}-k{k}", hub.permit)
        agents[host] = agent
    agents[roles[1]].cli("tunnel", "open", "outbound", "tcp/echo", "--targets", f"127.0.0.1:{ECHO}")
    agents[roles[0]].cli("tunnel", "open", "inbound", "tcp/echo", "--listen", str(ENTRANCE))
    return agents


def trial(lab: Lab, home: support.Agent, exit_agent: support.Agent, give_up: float, site: str) -> dict[str, float]:
    """One trial with the entrance agent `home` at `site` (restarted) and `exit_agent`."""
    home = support.restart_agent(home)
    support.wait_until(lambda: exit_agent.name in home.online_names(), 30, "the entrance to list the exit online")
    peaks = FdPeak({"entrance": home.proc.pid, "exit": exit_agent.proc.pid})

    def cycle() -> float:
        return connect_cycle(0, connect=lambda: support.tcp_connect("127.0.0.1", ENTRANCE, netns=lab.ns(site)))

    deadline = time.perf_counter() + 10.0
    while True:  # the restarted inbound may not listen yet: a refused connect reaches no agent
        t0 = time.perf_counter()
        try:
            cycle()
            break
        except ConnectionRefusedError:
            if t0 > deadline:
                raise
            time.sleep(0.005)
    while True:
        start = time.perf_counter()
        cycle()
        if inbound_direct(home) > 0:
            break
        if start - t0 > give_up:
            start = math.nan
            break
        time.sleep(0.05)
    peak = peaks.stop()
    logged = [float(ms) / 1000 for kind, ms in PUNCHED_LOG.findall(home.proc.output()) if kind]
    refusals = {  # the exit's refusals so far (it is not restarted: cumulative over the trials)
        f"exit_{name}": agent_metric(exit_agent, name)
        for name in ("punch_refused_rate", "punch_birthday_refused_rate", "punch_answered", "punch_birthday_attempts")
    }
    return {
        **refusals,
        "direct": start - t0,
        "attempt": logged[-1] if logged else math.nan,
        "attempts": agent_metric(home, "punch_birthday_attempts"),
        "successes": agent_metric(home, "punch_birthday_successes"),
        "fd_entrance": peak["entrance"],
        "fd_exit": peak["exit"],
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, nargs="+", default=[256, 512], help="sockets a side (--p2p-birthday)")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--give-up", type=float, default=40.0, help="seconds a trial waits for the direct path")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--reverse", action="store_true", help="sym the entrance, home the exit (symmetric -> eim)")
    ap.add_argument("--gap", type=float, default=PUNCH_LIMIT.window,
                    help="seconds between a trial's end and the next one's start (default: the exit's punch limit's "
                         "window, %(default)s s, so it has forgotten the previous trial's punches)")  # fmt: skip
    args = ap.parse_args(argv)
    roles = ("sym", "home") if args.reverse else ("home", "sym")
    print(f"direction: {roles[0]} ({SITES[roles[0]]}, the entrance) -> {roles[1]} ({SITES[roles[1]]}, the exit)")
    reason = netlab.unavailable_reason()
    if reason:
        print(f"p2p_birthday: {reason}", file=sys.stderr)
        return 2
    print(machine_facts())
    print(tree_facts())
    tmp = Path(tempfile.mkdtemp(prefix="ztm-bench-birthday-"))
    rows = []
    try:
        with Lab(sites=SITES, log_dir=tmp / "lab-logs") as lab:
            dc = lab.addr("datacenter")
            hub = support.start_hub(tmp, netns=lab.ns("datacenter"), listen="0.0.0.0:8888", names=f"{dc}:8888")
            echo = lab.popen(roles[1], [sys.executable, "-c", ECHO_SERVER, str(ECHO)], env=support.base_env())
            echo.wait_for_output("ready", timeout=10)
            for k in args.k:
                agents = start_agents(lab, tmp, hub, k, roles)
                results = []
                exit_before: dict[str, float] = {}
                for n in range(args.trials):
                    if n:
                        time.sleep(args.gap)
                    r = trial(lab, agents[roles[0]], agents[roles[1]], args.give_up, roles[0])
                    results.append(r)
                    exit_now = {key[5:]: value for key, value in r.items() if key.startswith("exit_")}
                    exit_delta = " ".join(
                        f"{key} +{value - exit_before.get(key, 0):g}" for key, value in exit_now.items()
                    )
                    exit_before = exit_now
                    print(f"K={k} trial {n + 1}: direct after {r['direct']:.2f} s (the attempt {r['attempt']:.3f} s), "
                          f"birthday attempts "
                          f"{r['attempts']:g}, successes {r['successes']:g}, peak fds entrance {r['fd_entrance']} "
                          f"exit {r['fd_exit']}; the exit: {exit_delta}", file=sys.stderr, flush=True)  # fmt: skip
                for agent in agents.values():
                    agent.proc.stop()
                times = [r["direct"] for r in results if not math.isnan(r["direct"])]
                took = [r["attempt"] for r in results if not math.isnan(r["attempt"])]
                attempts = sum(r["attempts"] for r in results)
                successes = sum(r["successes"] for r in results)
                rows.append(
                    [
                        str(k),
                        f"{len(times)}/{len(results)}",
                        f"{successes:g}/{attempts:g} = {successes / attempts:.0%}" if attempts else "-",
                        f"{1 - math.exp(-k * k / 64512):.1%}",
                        f"{percentile(times, 50):.2f}",
                        f"{percentile(times, 90):.2f}",
                        f"{min(times, default=math.nan):.2f}-{max(times, default=math.nan):.2f}",
                        f"{percentile(took, 50):.3f} ({min(took, default=math.nan):.3f}-"
                        f"{max(took, default=math.nan):.3f})",
                        str(max(r["fd_entrance"] for r in results)),
                        str(max(r["fd_exit"] for r in results)),
                    ]
                )
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        table(
            ["K", "trials direct", "birthday successes / attempts", "model", "time to direct p50 s", "p90 s",
             "min-max s", "the attempt p50 s (min-max)", "peak fds entrance", "peak fds exit"],
            rows,
        )
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
