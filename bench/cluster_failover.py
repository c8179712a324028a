"""Failover: after kill -9 of the agents' hub, and after a silent cut of the link to it, how long until a tunnel
works again through another hub?

Set-up (real processes): two hubs on one PostgreSQL (`bench/cluster_common.py`), a TCP echo server, an exit agent with
`ztm tunnel open outbound tcp/echo --targets ECHO` and an entrance agent with `ztm tunnel open inbound tcp/echo
--listen PORT`, both joined with a permit listing hub 0 then hub 1, so both are on the same hub (the relay between
them needs no hub-to-hub link). The exit has no `--direct`: every tunnelled connection goes through the hub.

A trial finds the hub both agents are on (their `GET /api/meshes/M/hubs`), then:

* `kill`: SIGKILL of that hub;
* `cut`: an nftables rule in this network namespace drops every packet to and from that hub's port (the hub process
  keeps running, nothing is refused or reset: the agents must notice by themselves);

and from that instant opens a new TCP connection to the entrance every 50 ms (each given 2 s to echo 16 bytes back)
until one echoes: that time is the trial's figure. It also notes when each agent reported itself online at the other
hub. Then the rule is removed / the hub is restarted, and the next trial starts once the tunnel works and both hubs
answer; trials alternate between the hubs as the agents move.

The cut needs nftables and root: the script runs itself in a new network namespace (`ip netns add`, deleted at the
end), so the rule and every process (PostgreSQL included) stay on that namespace's loopback and nothing else on the
machine is touched. `--kills 0` or `--cuts 0` skip a kind.

Run:  .venv/bin/python -m bench.cluster_failover [--kills 10] [--cuts 10] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench.cluster_common import ClusterHubs
from bench.common import HOST, PYTHON, REPO, Agent, Workspace, free_port, machine_facts, summary, table, tree_facts
from reliability.traffic import EchoServer  # tests/reliability/traffic.py: the tests' threaded echo server

MESH = "bench"
TABLE = "ztm_cbench_cut"
PAYLOAD = b"ztm-failover-16b"


def tunnel_works(port: int, timeout: float = 2.0) -> bool:
    """A new connection through the entrance echoes PAYLOAD back within `timeout`."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(PAYLOAD)
            got = b""
            deadline = time.monotonic() + timeout
            while len(got) < len(PAYLOAD) and time.monotonic() < deadline:
                chunk = s.recv(64)
                if not chunk:
                    return False
                got += chunk
            return got == PAYLOAD
    except OSError:
        return False


def hub_of(agent: Agent) -> str | None:
    """The address of the hub `agent` is connected to (None: not connected)."""
    try:
        status, hubs = agent.api("GET", f"/api/meshes/{MESH}/hubs", timeout=3.0)
    except OSError:
        return None
    if status != 200 or not isinstance(hubs, list):
        return None
    for h in hubs:
        if isinstance(h, dict) and h.get("connected"):
            return str(h.get("address"))
    return None


def nft(script: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True, capture_output=True)


def cut(port: int) -> None:
    nft(
        f"table inet {TABLE} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n"
        f"  tcp dport {port} drop\n  tcp sport {port} drop\n }}\n}}\n"
    )


def uncut() -> None:
    with contextlib.suppress(subprocess.CalledProcessError):
        nft(f"delete table inet {TABLE}\n")


class Run:
    def __init__(self, args: argparse.Namespace, ws: Workspace) -> None:
        self.args = args
        self.ws = ws
        self.cluster = ClusterHubs.start(ws, 2)
        self.echo = EchoServer(HOST)
        permit = self.cluster.permit_for([0, 1], ws.dir / "permit.json")
        self.exit = ws.start_agent("exit")
        self.entrance = ws.start_agent("entrance")
        self.exit.cli("join", MESH, "--as", "exit", "--permit", str(permit))
        self.entrance.cli("join", MESH, "--as", "entrance", "--permit", str(permit))
        self.port = free_port()
        self.exit.cli("--mesh", MESH, "tunnel", "open", "outbound", "tcp/echo", "--targets", f"{HOST}:{self.echo.port}")
        self.entrance.cli("--mesh", MESH, "tunnel", "open", "inbound", "tcp/echo", "--listen", str(self.port))
        self.wait_working(30.0)
        self.results: dict[str, list[dict[str, float]]] = {"kill": [], "cut": []}

    def wait_working(self, timeout: float) -> float:
        """Poll a new tunnelled connection every 50 ms until one echoes; returns when (monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            if tunnel_works(self.port):
                return time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the tunnel did not work within {timeout:g}s")
            time.sleep(0.05)

    def current_hub(self) -> int:
        """The hub both agents are on (waits until they agree)."""
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            a, b = hub_of(self.exit), hub_of(self.entrance)
            if a is not None and a == b:
                for hub in self.cluster.hubs:
                    if hub.address == a:
                        return hub.index
            time.sleep(0.05)
        raise TimeoutError("the exit and the entrance are not on the same hub")

    def watch_agents(self, old: str, t0: float, stop: threading.Event, out: dict[str, float]) -> None:
        """Note when each agent says it is connected to a hub other than `old` (seconds after t0)."""
        while not stop.is_set() and len(out) < 2:
            for agent in (self.exit, self.entrance):
                if agent.name not in out:
                    h = hub_of(agent)
                    if h is not None and h != old:
                        out[agent.name] = time.monotonic() - t0
            time.sleep(0.05)

    def trial(self, kind: str) -> None:
        k = self.current_hub()
        hub = self.cluster.hubs[k]
        moved: dict[str, float] = {}
        stop = threading.Event()
        t0 = time.monotonic()
        if kind == "kill":
            t0 = self.cluster.kill9(k)
        else:
            cut(hub.port)
        watcher = threading.Thread(target=self.watch_agents, args=(hub.address, t0, stop, moved), daemon=True)
        watcher.start()
        try:
            works = self.wait_working(self.args.give_up) - t0
            watcher.join(15.0)  # both agents' moves noted (or 15 s more)
        finally:
            stop.set()
            watcher.join(5)
            if kind == "cut":
                uncut()
        result = {"works": works, **{f"online:{n}": v for n, v in moved.items()}}
        self.results[kind].append(result)
        print(f"{kind} of hub {k}: tunnel works again after {works:.2f}s; agents moved: {moved}", file=sys.stderr)
        if kind == "kill":
            self.cluster.restart(k)
        # the next trial starts from a quiet state: the tunnel works, both hubs listen, the agents agree
        self.wait_working(30.0)
        self.current_hub()
        time.sleep(1.0)  # the restarted hub's first heartbeats: it is online in the cluster for the next trial

    def report(self) -> None:
        print()
        rows = []
        for kind, label in (("kill", "kill -9 of the hub"), ("cut", "silent link cut (packets dropped)")):
            res = self.results[kind]
            if not res:
                continue
            for key, what in (
                ("works", "a new tunnelled connection echoes"),
                ("online:exit", "the exit agent online at the other hub"),
                ("online:entrance", "the entrance agent online at the other hub"),
            ):
                values = [r[key] for r in res if key in r]
                s = summary(values)
                rows.append(
                    [label, what, s["n"], f"{s['min']:.2f}", f"{s['p50']:.2f}", f"{s['p90']:.2f}", f"{s['max']:.2f}"]
                )
        print("seconds from the fault to:")
        print(table(["fault", "until", "n", "min", "p50", "p90", "max"], rows))
        for kind in ("kill", "cut"):
            if self.results[kind]:
                print(f"{kind} trials, in order: " + ", ".join(f"{r['works']:.2f}" for r in self.results[kind]))


def inside(args: argparse.Namespace) -> int:
    print(machine_facts())
    print(tree_facts())
    started = time.perf_counter()
    with Workspace("cfail", keep=args.keep) as ws:
        run = Run(args, ws)
        try:
            for i in range(max(args.kills, args.cuts)):
                if i < args.kills:
                    run.trial("kill")
                if i < args.cuts:
                    run.trial("cut")
        finally:
            uncut()
            run.report()
            run.cluster.close()
    print(f"\ntotal run time {time.perf_counter() - started:.0f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="kill -9 trials (default %(default)s)")
    parser.add_argument("--cuts", type=int, default=10, help="link-cut trials (default %(default)s)")
    parser.add_argument("--give-up", type=float, default=120.0, help="seconds a trial may take (default 120)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        return inside(args)
    if os.geteuid() != 0:
        parser.error("needs root: it makes a network namespace and an nftables rule in it")
    ns = f"ztm-cbench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        rest = list(argv if argv is not None else sys.argv[1:])
        here = [PYTHON, "-m", "bench.cluster_failover", "--inside", *rest]
        cp = subprocess.run(["ip", "netns", "exec", ns, *here], cwd=REPO, check=False)
        return cp.returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    raise SystemExit(main())
