"""NAT traversal (issue 15): time to the direct path, and the punched path against stunnel4 across the same routers.

Needs root: it builds the NAT lab of the tests (tests/lab/netlab.py, the default `Lab()`: `home` and `workplace`,
each behind an `eim` router, a hub in `datacenter`) and runs every process inside the lab's namespaces:

* the hub in `datacenter` (`--admin 127.0.0.1:9999` there: its metrics);
* agents `home` (the entrance) and `workplace` (the exit), with punching on (the default); and agents `home-relay`
  and `work-relay` on the same two hosts with `--no-p2p`, for the relay path;
* at `workplace`: an echo server and a counting sink (bench/tunnel.py's roles, on 0.0.0.0), and a stunnel4 server;
* at `home`: a stunnel4 client whose server side is reached through both routers: this script gives `work-rtr` a
  DNAT port forward (bench only, an nft table of its own plus one accept rule in its forward chain) to the echo,
  the sink and the stunnel4 server at `workplace`, so raw TCP and stunnel4 cross home-rtr's masquerade and
  work-rtr's forward, as the punched path crosses both routers' mappings.

Paths, each to the same echo server and sink, the client being this script with sockets made inside `home`:

* `raw`: home -> work-rtr's forward -> the server (no encryption: the floor);
* `stunnel4`: home's stunnel4 client (127.0.0.1) -> work-rtr's forward -> workplace's stunnel4 server -> the server
  (one TLS 1.3 hop, ECDSA P-256, TCP_NODELAY, as bench/tunnel.py's baseline);
* `ztm-punched`: home agent's inbound -> the punched channel -> workplace agent -> the server;
* `ztm-relay`: home-relay agent's inbound -> the hub -> work-relay agent -> the server (context).

Measured in ONE run, in `--rounds` interleaved rounds (the order of the paths rotates each round):

1. time to direct (`--direct-per-round` samples per round, default 2): the entrance agent (`home`) is restarted (same
   data: a fresh process, no channel, no punch history), and once it lists the exit online, t0 = the first tunnelled
   connection starts: it goes through the hub and starts the punch in the background (the port is not probed before:
   a probe would be a tunnelled connection; a connect refused while the restarted inbound does not listen yet is
   retried and not counted); then new connections (connect, 1-byte echo, close) follow back to back, and after each
   one the script reads the entrance's `direct` count of that inbound (`GET
   /api/meshes/M/apps/tunnel/inbound/tcp/echo-p`, what `ztm tunnel describe` shows) and its
   `ztm_agent_direct_punch_successes_total` (`/api/metrics`). Reported: t1 = the start of the first connection
   counted direct (the figure the target is about), the time the punch success was first seen, and the agent's own
   "punched a ... channel ... in N ms" log line (from the start of its punch). Target: p50 <= 1 s.
2. per path and round: one stream of `--bulk` MiB (default 256) to the counting sink (the clock stops when the
   sink's answer, sent after the last byte arrived, is back; bench/tunnel.py's `sink_transfer`), and `--rtts`
   1-byte round trips on one connection (default 2,000, 200 warm-up; `pingpong`): p50 and p99. Targets: punched
   throughput >= 1.0 x stunnel4, RTT p50 <= 1.3 x stunnel4 (median of the rounds' ratios in the same round).
3. the hub's `ztm_hub_relayed_bytes_total` before and after each punched transfer: 0 bytes of it relayed (and,
   for scale, what it relays of the relay path's transfer). Before the punched path is measured, `SETTLED` probe
   connections in a row must go direct without starting a punch; whether the transfer and the ping-pong then went
   direct is read from the inbound's `direct` count, and the punched row counts only the rounds where they did
   (the others are counted and shown: a target of their own).

Same-run baseline, `--baseline-rev REV` (bench/baseline.py, as bench/tunnel.py's): REV's `src/` is exported and a
second punched pair (`home-base` and `work-base`, the same hosts, agent API port 7779) runs it, with the same tunnels
(`echo-b`, `sink-b`): the path `ztm-punched@base`, measured right after `ztm-punched` in even rounds and right
before it in odd ones; the tables then add the median of the rounds' ratios current/baseline (throughput, RTT p50,
CPU per round trip, CPU per GiB). Either pair's rounds count only where its connections went direct.

CPU per GiB: the CPU seconds (utime + stime, /proc) of each path's own processes over its transfer, per GiB moved.

Run:  sudo .venv/bin/python -m bench.p2p [--rounds 6] [--direct-per-round 2] [--bulk 256] [--rtts 2000] [--keep]
                                         [--baseline-rev REV]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import support  # tests/support.py: hub and agent processes in a namespace
from bench.baseline import (
    BaselineError,
    RoundRatios,
    check_imports_from,
    export_revision,
    resolve_revision,
    round_order,
)
from bench.common import (
    PYTHON,
    STUNNEL_GLOBAL,
    STUNNEL_SOCKET_OPTS,
    Spy,
    Workspace,
    cpu_seconds,
    machine_facts,
    percentile,
    py_spy,
    raise_nofile,
    stunnel_cert,
    table,
    tree_facts,
)
from bench.tunnel import Child, connect_cycle, pingpong, sink_transfer
from lab.netlab import Lab, unavailable_reason

MiB = 1 << 20
MESH = "bench"
ADMIN_PORT = 9999
"""The hub's admin listener (metrics), on 127.0.0.1 inside `datacenter`."""
ECHO, SINK = 9101, 9102
"""The servers at `workplace` (0.0.0.0; work-rtr forwards these ports to them: the raw path)."""
ST_ECHO, ST_SINK = 9201, 9202
"""workplace's stunnel4 server (forwarded by work-rtr too)."""
HOME_PORTS = {
    "stunnel4": (9301, 9302),
    "ztm-punched": (9401, 9402),
    "ztm-relay": (9501, 9502),
    "ztm-punched@base": (9601, 9602),
}
"""(echo, sink) on 127.0.0.1 at `home`: stunnel4's client, the punched pair's inbounds, the relay pair's inbounds."""
PATHS = ("raw", "stunnel4", "ztm-punched", "ztm-relay")
BASE = "ztm-punched@base"
"""The punched path of the `--baseline-rev` pair."""
ALL_PATHS = (*PATHS, BASE)
PUNCHED = ("ztm-punched", BASE)
REPO = Path(__file__).resolve().parents[1]
CONTROL_BYTES = 4096
"""What the hub may relay during a punched transfer: the end-to-end calls of the entrance's pool refills (a punch
offer and its answer, a few hundred bytes each; counted in `punches_during`), not the transfer's bytes (the
threshold of tests/lab/test_lab_p2p.py)."""
SETTLED = 3
"""Probe connections in a row that must go direct, starting no punch, before the punched path is measured."""
PUNCHED_LOG = re.compile(r"punched a (\S+) channel to \S+ \(\S+\) in (\d+) ms")
FORWARDED = (ECHO, SINK, ST_ECHO, ST_SINK)


def sys_seconds(pid: int) -> float:
    """stime of `pid` in seconds (/proc/PID/stat): the kernel's share of `cpu_seconds`."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[12]) / os.sysconf("SC_CLK_TCK")


def metric(text: str, name: str) -> float:
    """The value of the sample `name` (with its labels) in Prometheus text, 0 if absent."""
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def hub_metric(lab: Lab, name: str) -> float:
    """A sample of the hub's admin `/metrics` (read from inside `datacenter`)."""
    with lab.connect("datacenter", "127.0.0.1", ADMIN_PORT) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return metric(b"".join(chunks).decode().split("\r\n\r\n", 1)[-1], name)


def agent_metric(agent: support.Agent, name: str) -> float:
    """`ztm_agent_direct_NAME_total` of the mesh in the agent's `/api/metrics`."""
    status, text = agent.api("GET", "/api/metrics")
    if status != 200:
        raise RuntimeError(f"GET /api/metrics of {agent.name}: {status} {text}")
    return metric(str(text), f'ztm_agent_direct_{name}_total{{mesh="{MESH}"}}')


@dataclass
class Results:
    mbps: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in ALL_PATHS})
    rtt50: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in ALL_PATHS})
    rtt99: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in ALL_PATHS})
    direct_first: list[float] = field(default_factory=list)
    punch_seen: list[float] = field(default_factory=list)
    punch_logged: list[float] = field(default_factory=list)
    relayed_by_hub: dict[str, list[float]] = field(default_factory=lambda: {"ztm-punched": [], "ztm-relay": []})
    cpu_per_rtt: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in ALL_PATHS})
    """CPU µs per round trip of the path's own processes (stunnel4's two; the agents, and the hub on the relay)."""
    sys_share: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in ALL_PATHS})
    """The kernel's share (stime) of that CPU."""
    punches_during: list[int] = field(default_factory=list)
    settle: list[tuple[float, int]] = field(default_factory=list)
    direct_round: dict[str, list[tuple[bool, bool]]] = field(default_factory=lambda: {p: [] for p in PUNCHED})
    """Per punched path and round: did its transfer, and its ping-pong connection, go direct (or through the hub)?"""
    cpu_per_gib: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in ALL_PATHS})
    """CPU seconds of the path's own processes per GiB of the transfer."""
    """Before each punched transfer: seconds and relayed probe connections until a new connection went direct."""
    """Punches the entrance started during each punched transfer (refills of its channel pool: one end-to-end call
    each, relayed by the hub: its bytes are control traffic, not the transfer's)."""
    notes: list[str] = field(default_factory=list)


def nft_forward(lab: Lab) -> None:
    """work-rtr forwards FORWARDED ports on its WAN address to `workplace` (bench only)."""
    ns, target = lab.ns("work-rtr"), lab.addr("workplace")
    rules = "".join(f'        iifname "wan0" tcp dport {p} dnat to {target}:{p}\n' for p in FORWARDED)
    script = (
        "table ip ztmbench {\n    chain pre {\n        type nat hook prerouting priority dstnat; policy accept;\n"
        f"{rules}    }}\n}}\ninsert rule inet ztmlab forward ct status dnat accept\n"
    )
    support.run(["nft", "-f", "-"], netns=ns, input=script)


def stunnel(lab: Lab, dir: Path) -> tuple[support.Proc, support.Proc]:
    """A stunnel4 server at workplace (TLS in on ST_*, plain out to the servers) and a client at home (plain in on
    127.0.0.1, TLS out to work-rtr's forward), the options of bench/tunnel.py's baseline."""
    dir.mkdir()
    cert, key = stunnel_cert(dir)
    opts = STUNNEL_SOCKET_OPTS
    server, client = STUNNEL_GLOBAL, STUNNEL_GLOBAL + "client = yes\n"
    router = lab.addr("work-rtr")
    for name, st_port, target, local in (
        ("echo", ST_ECHO, ECHO, HOME_PORTS["stunnel4"][0]),
        ("sink", ST_SINK, SINK, HOME_PORTS["stunnel4"][1]),
    ):
        server += f"[{name}]\naccept = 0.0.0.0:{st_port}\nconnect = 127.0.0.1:{target}\ncert = {cert}\nkey = {key}\n"
        server += opts
        client += f"[{name}]\naccept = 127.0.0.1:{local}\nconnect = {router}:{st_port}\n"
        client += f"verifyPeer = yes\nCAfile = {cert}\n{opts}"
    (dir / "server.conf").write_text(server)
    (dir / "client.conf").write_text(client)
    server_proc = lab.popen("workplace", ["stunnel4", str(dir / "server.conf")], name="stunnel-server", cwd=dir)
    client_proc = lab.popen("home", ["stunnel4", str(dir / "client.conf")], name="stunnel-client", cwd=dir)
    for host, port in (("workplace", ST_ECHO), ("workplace", ST_SINK), *(("home", p) for p in HOME_PORTS["stunnel4"])):
        support.wait_until(lambda h=host, p=port: lab.can_connect(h, "127.0.0.1", p), 10, f"stunnel4 on {host}:{port}")  # type: ignore[misc]
    return client_proc, server_proc


class Bench:
    def __init__(self, args: argparse.Namespace, lab: Lab, ws: Workspace) -> None:
        self.args, self.lab, self.ws = args, lab, ws
        self.home_ns = lab.ns("home")
        self.res = Results()
        tmp = ws.dir
        dc = lab.addr("datacenter")
        self.hub = support.start_hub(tmp, netns=lab.ns("datacenter"), listen="0.0.0.0:8888", names=f"{dc}:8888",
                                     extra=["--admin", f"127.0.0.1:{ADMIN_PORT}"])  # fmt: skip
        prefix = ["ip", "netns", "exec", lab.ns("workplace")]
        for role, port in (("echo", ECHO), ("sink", SINK)):
            Child(ws, role, ["--role", role, "--port", str(port), "--bind", "0.0.0.0"], prefix=prefix)
        nft_forward(lab)
        self.stunnel = stunnel(lab, tmp / "stunnel")
        self.entrance = self.agent("home", 7777)
        self.exit = exit_agent = self.agent("workplace", 7777)
        relay_in = self.agent("home", 7778, "home-relay", "--no-p2p")
        relay_out = self.agent("workplace", 7778, "work-relay", "--no-p2p")
        self.relay_agents = (relay_in, relay_out)
        self.pairs: dict[str, tuple[support.Agent, support.Agent, str]] = {
            "ztm-punched": (self.entrance, exit_agent, "p")
        }
        self.paths = PATHS
        if args.base_src is not None:
            env = {"PYTHONPATH": str(args.base_src)}
            base_in = self.agent("home", 7779, "home-base", env=env)
            base_out = self.agent("workplace", 7779, "work-base", env=env)
            self.pairs[BASE] = (base_in, base_out, "b")
            self.paths = ("raw", "stunnel4", "ztm-punched", BASE, "ztm-relay")
        outs = [(exit_agent, "p"), (relay_out, "r")] + ([(self.pairs[BASE][1], "b")] if BASE in self.pairs else [])
        for agent, tag in outs:
            agent.cli("tunnel", "open", "outbound", f"tcp/echo-{tag}", "--targets", f"127.0.0.1:{ECHO}")
            agent.cli("tunnel", "open", "outbound", f"tcp/sink-{tag}", "--targets", f"127.0.0.1:{SINK}")
        ins = [(self.entrance, "p", "ztm-punched"), (relay_in, "r", "ztm-relay")]
        if BASE in self.pairs:
            ins.append((self.pairs[BASE][0], "b", BASE))
        for agent, tag, path in ins:
            echo, sink = HOME_PORTS[path]
            agent.cli("tunnel", "open", "inbound", f"tcp/echo-{tag}", "--listen", f"127.0.0.1:{echo}")
            agent.cli("tunnel", "open", "inbound", f"tcp/sink-{tag}", "--listen", f"127.0.0.1:{sink}")
        router = lab.addr("work-rtr")
        self.targets: dict[str, tuple[str, int, int]] = {"raw": (router, ECHO, SINK)}
        for path, (echo, sink) in HOME_PORTS.items():
            self.targets[path] = ("127.0.0.1", echo, sink)
        for path in self.paths:
            support.wait_until(lambda p=path: self.probe(p), 30, f"an echo on {path}")  # type: ignore[misc]

    def agent(
        self, host: str, port: int, name: str | None = None, *extra: str, env: dict[str, str] | None = None
    ) -> support.Agent:
        agent = support.start_agent(self.ws.dir, name or host, netns=self.lab.ns(host), port=port, extra=extra, env=env)
        agent.join(MESH, name or host, self.hub.permit)
        return agent

    def connector(self, path: str, which: int) -> Callable[[], socket.socket]:
        addr, echo, sink = self.targets[path]
        port = echo if which == 0 else sink
        return lambda: support.tcp_connect(addr, port, netns=self.home_ns, timeout=30.0)

    def probe(self, path: str) -> bool:
        try:
            self.cycle(path)
        except OSError:
            return False
        return True

    def cycle(self, path: str) -> float:
        """connect + 1-byte echo through `path` (bench/tunnel.py's `connect_cycle`), seconds."""
        return connect_cycle(0, connect=self.connector(path, 0))

    def direct(self, path: str = "ztm-punched", role: str = "echo") -> int:
        """The `direct` count of the punched pair's `role` inbound (`ztm tunnel describe`)."""
        entrance, _exit, tag = self.pairs[path]
        status, view = entrance.api("GET", f"/api/meshes/{MESH}/apps/tunnel/inbound/tcp/{role}-{tag}")
        return int(view.get("direct", 0)) if status == 200 and isinstance(view, dict) else 0

    # 1. time to direct

    def time_to_direct(self) -> None:
        entrance = support.restart_agent(self.entrance)
        support.wait_until(lambda: "workplace" in entrance.online_names(), 30, "home to list workplace online")
        direct0, punched0 = self.direct(), agent_metric(entrance, "punch_successes")
        # The first connection, relayed, starts the punch. No probe of the inbound's port before it: a connection
        # accepted there is a tunnelled one and would start the punch early. A refused connect reaches no agent:
        # t0 is the start of the first attempt that connects.
        deadline = time.perf_counter() + 10.0
        while True:
            t0 = time.perf_counter()
            try:
                self.cycle("ztm-punched")
                break
            except ConnectionRefusedError:
                if t0 > deadline:
                    raise
                time.sleep(0.005)  # the restarted agent's inbound is not listening yet
        seen = None
        deadline = t0 + self.args.give_up
        while True:
            start = time.perf_counter()
            self.cycle("ztm-punched")
            if seen is None and agent_metric(entrance, "punch_successes") > punched0:
                seen = time.perf_counter() - t0
            if self.direct() > direct0:
                break
            if start > deadline:
                raise TimeoutError(f"no connection went direct within {self.args.give_up:g}s")
        self.res.direct_first.append(start - t0)
        self.res.punch_seen.append(seen if seen is not None else start - t0)
        logged = PUNCHED_LOG.findall(entrance.proc.output())
        if logged:
            self.res.punch_logged.append(float(logged[0][1]) / 1000)
        print(f"  time to direct: {start - t0:.3f}s (punch logged {logged[0][1] if logged else '?'} ms)",
              file=sys.stderr)  # fmt: skip

    # 2 and 3. the paths

    def settle(self, path: str) -> None:
        """Wait until the direct path is up: SETTLED probe connections in a row go direct and start no refill punch.
        After the restarts, a refill punch refused by the exit's rate limit (4 per peer in 10 s) puts the peer in
        the entrance's backoff, and new connections then go through the hub for 2 s or more even with punched
        channels in the pool (bench/RESULTS.md, issue 15)."""
        entrance = self.pairs[path][0]
        start, probes, streak = time.perf_counter(), 0, 0
        while streak < SETTLED:
            before, punches = self.direct(path), agent_metric(entrance, "punch_attempts")
            self.cycle(path)
            went_direct = self.direct(path) > before
            quiet = agent_metric(entrance, "punch_attempts") == punches  # no refill started by this probe
            streak = streak + 1 if went_direct and quiet else 0
            probes += not went_direct
            if time.perf_counter() - start > self.args.give_up:
                raise TimeoutError(f"no new connection went direct within {self.args.give_up:g}s")
            time.sleep(0.05)  # a probe every 50 ms: this waits for the entrance's backoff to end
        if path == "ztm-punched":
            self.res.settle.append((time.perf_counter() - start, int(probes)))

    def measure(self, path: str) -> None:
        punched = path in self.pairs
        if punched:
            self.settle(path)
        relayed = hub_metric(self.lab, "ztm_hub_relayed_bytes_total")
        direct = self.direct(path, "sink") if punched else 0
        punches = agent_metric(self.entrance, "punch_attempts")
        nbytes = self.args.bulk * MiB
        pids = self.path_pids(path)
        cpu = sum(cpu_seconds(pid) for pid in pids)
        seconds, error = sink_transfer(0, nbytes, timeout=60.0, connect=self.connector(path, 1))
        if error:
            raise RuntimeError(f"{path}: the transfer to the sink failed: {error}")
        self.res.cpu_per_gib[path].append((sum(cpu_seconds(pid) for pid in pids) - cpu) * (1 << 30) / nbytes)
        self.res.mbps[path].append(nbytes / seconds / 1e6)
        if path in self.res.relayed_by_hub:
            self.res.relayed_by_hub[path].append(hub_metric(self.lab, "ztm_hub_relayed_bytes_total") - relayed)
        if path == "ztm-punched":
            self.res.punches_during.append(int(agent_metric(self.entrance, "punch_attempts") - punches))
        if punched:
            sink_direct = self.direct(path, "sink") > direct
            echo_before = self.direct(path)
        cpu, kernel = sum(cpu_seconds(pid) for pid in pids), sum(sys_seconds(pid) for pid in pids)
        rtts = pingpong(0, self.args.rtts, 200, connect=self.connector(path, 0))
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
        self.res.cpu_per_rtt[path].append(cpu / (self.args.rtts + 200))
        if pids:
            self.res.sys_share[path].append((sum(sys_seconds(pid) for pid in pids) - kernel) / cpu if cpu else 0.0)
        self.res.rtt50[path].append(percentile(rtts, 50))
        self.res.rtt99[path].append(percentile(rtts, 99))
        if punched:
            self.res.direct_round[path].append((sink_direct, self.direct(path) > echo_before))

    def path_pids(self, path: str) -> list[int]:
        """The processes a path goes through besides client and server."""
        if path == "stunnel4":
            return [p.pid for p in self.stunnel]
        if path in self.pairs:
            return [agent.proc.pid for agent in self.pairs[path][:2]]
        if path == "ztm-relay":
            return [self.relay_agents[0].proc.pid, self.hub.proc.pid, self.relay_agents[1].proc.pid]
        return []

    def profile(self) -> None:
        """py-spy on the punched pair's two agents during a ping-pong, then during transfers, on the punched path."""
        for what, run in (
            (f"{5 * self.args.rtts} round trips", lambda: pingpong(0, 5 * self.args.rtts, 200,
                                                                   connect=self.connector("ztm-punched", 0))),
            (f"4 x {self.args.bulk} MiB to the sink", lambda: [
                sink_transfer(0, self.args.bulk * MiB, timeout=60.0, connect=self.connector("ztm-punched", 1))
                for _ in range(4)]),
        ):  # fmt: skip
            spies = {name: Spy(agent.proc.pid, self.ws.dir / f"spy-{name}-{what.split()[-1]}.txt") for name, agent in
                     (("entrance", self.entrance), ("exit", self.exit))}  # fmt: skip
            run()
            for spy in spies.values():
                spy.stop()
            for name, spy in spies.items():
                print(f"\npy-spy of the {name} agent during {what} on the punched path")
                print(spy.summary())

    # report

    def report(self) -> bool:
        res, a = self.res, self.args

        # A punched path's figures count only the rounds where its connections really went direct.
        oks = {path: [sink for sink, _echo in res.direct_round[path]] for path in PUNCHED}
        echo_oks = {path: [echo for _sink, echo in res.direct_round[path]] for path in PUNCHED}
        sink_ok, echo_ok = oks["ztm-punched"], echo_oks["ztm-punched"]

        def rounds(path: str, mask: list[bool]) -> list[int]:
            """The rounds counted for `path` (`mask`: which of the punched path's went direct)."""
            own = (oks if mask is sink_ok else echo_oks).get(path)
            return [i for i in range(len(res.mbps[path])) if own is None or own[i]]

        def pick(values: dict[str, list[float]], path: str, mask: list[bool]) -> list[float]:
            return [values[path][i] for i in rounds(path, mask)]

        def versus_base(values: dict[str, list[float]], mask: list[bool]) -> RoundRatios:
            """Per round where both punched paths went direct: current / baseline."""
            ratios = RoundRatios()
            both = set(rounds("ztm-punched", mask)) & set(rounds(BASE, mask))
            for i in sorted(both):
                ratios.add(values["ztm-punched"][i], values[BASE][i])
            return ratios

        def spread(values: list[float], scale: float, fmt: str) -> str:
            if not values:
                return "-"
            return (
                f"{statistics.median(values) * scale:{fmt}} ({min(values) * scale:{fmt}}-{max(values) * scale:{fmt}})"
            )

        def ratio(values: dict[str, list[float]], path: str, mask: list[bool]) -> float:
            pairs = [(values[path][i], values["stunnel4"][i]) for i in rounds(path, mask)]
            return statistics.median(x / y for x, y in pairs if y) if pairs else float("nan")

        print(f"\n1. time to direct, {len(res.direct_first)} samples (seconds from the first connection)")
        rows = []
        for what, values in (
            ("first new connection counted direct (t1)", res.direct_first),
            ("punch success seen in /api/metrics", res.punch_seen),
            ("the agent's own punch (log: 'punched ... in N ms')", res.punch_logged),
        ):
            if values:
                rows.append([what, len(values), f"{min(values):.3f}", f"{percentile(values, 50):.3f}",
                             f"{percentile(values, 90):.3f}", f"{max(values):.3f}"])  # fmt: skip
        print(table(["until", "n", "min", "p50", "p90", "max"], rows))
        print(f"\n2. {a.rounds} rounds: {a.bulk} MiB to the counting sink, {a.rtts} 1-byte round trips per path")
        print(f"ztm-punched: the transfer went direct in {sum(sink_ok)} of {len(sink_ok)} rounds, the ping-pong in "
              f"{sum(echo_ok)}; only those rounds count on its row")  # fmt: skip
        rows = []
        for path in self.paths:
            rows.append([
                path, spread(pick(res.mbps, path, sink_ok), 1, ".0f"), f"{ratio(res.mbps, path, sink_ok):.2f}",
                spread(pick(res.rtt50, path, echo_ok), 1e6, ".0f"), f"{ratio(res.rtt50, path, echo_ok):.2f}",
                spread(pick(res.rtt99, path, echo_ok), 1e6, ".0f"), f"{ratio(res.rtt99, path, echo_ok):.2f}",
            ])  # fmt: skip
        print(table(["path", "1 stream MB/s (spread)", "x stunnel4", "RTT p50 µs (spread)", "x stunnel4",
                     "RTT p99 µs (spread)", "x stunnel4"], rows))  # fmt: skip
        print(
            "\nCPU µs per round trip of the path's processes (stunnel4: client + server; ztm-punched: the two agents;"
            " ztm-relay: the two agents + hub), median of the rounds (spread)"
        )
        rows = [
            [p, spread(pick(res.cpu_per_rtt, p, echo_ok), 1e6, ".0f"), f"{ratio(res.cpu_per_rtt, p, echo_ok):.2f}",
             spread([res.sys_share[p][i] for i in rounds(p, echo_ok)], 100, ".0f")]
            for p in self.paths[1:]
        ]  # fmt: skip
        print(table(["path", "CPU µs per round trip", "x stunnel4", "of it in the kernel, % (spread)"], rows))
        print("\nCPU seconds per GiB of the transfer, the path's processes as above, median of the rounds (spread)")
        rows = [
            [p, spread(pick(res.cpu_per_gib, p, sink_ok), 1, ".2f"), f"{ratio(res.cpu_per_gib, p, sink_ok):.2f}"]
            for p in self.paths[1:]
        ]
        print(table(["path", "CPU-s per GiB", "x stunnel4"], rows))
        if BASE in self.pairs:
            print(f"\nztm-punched against {BASE} ({self.args.baseline_rev}), median of the rounds' ratios (spread)")
            print(table(["measure", "x baseline"], [
                ["1 stream MB/s", versus_base(res.mbps, sink_ok).text()],
                ["CPU-s per GiB", versus_base(res.cpu_per_gib, sink_ok).text()],
                ["RTT p50", versus_base(res.rtt50, echo_ok).text()],
                ["RTT p99", versus_base(res.rtt99, echo_ok).text()],
                ["CPU per round trip", versus_base(res.cpu_per_rtt, echo_ok).text()],
            ]))  # fmt: skip
        print("\n3. the hub's ztm_hub_relayed_bytes_total, delta over each transfer")
        punched = res.relayed_by_hub["ztm-punched"]
        direct_deltas = [punched[i] for i in range(len(punched)) if sink_ok[i]]
        deltas: list[tuple[str, list[float]]] = [
            ("ztm-punched, went direct", direct_deltas),
            ("ztm-punched, went through the hub", [punched[i] for i in range(len(punched)) if not sink_ok[i]]),
            ("ztm-relay", res.relayed_by_hub["ztm-relay"]),
        ]
        print(table(["path", "transfers", "bytes each", "hub relayed min", "max"], [
            [name, len(d), f"{a.bulk * MiB:,}", f"{min(d):,.0f}" if d else "-", f"{max(d):,.0f}" if d else "-"]
            for name, d in deltas
        ]))  # fmt: skip
        print(f"punches (pool refills) the entrance started during the punched transfers: {res.punches_during}")
        waits = ", ".join(f"{t:.2f}s/{n}" for t, n in res.settle)
        print(f"before each punched transfer, until a new connection went direct (seconds/relayed probes): {waits}")
        t1 = percentile(res.direct_first, 50)
        checks = [
            ("time to direct p50 <= 1 s", f"{t1:.3f} s", t1 <= 1.0),
            ("punched throughput >= 1.0 x stunnel4", f"{ratio(res.mbps, 'ztm-punched', sink_ok):.2f}",
             ratio(res.mbps, "ztm-punched", sink_ok) >= 1.0),
            ("punched RTT p50 <= 1.3 x stunnel4", f"{ratio(res.rtt50, 'ztm-punched', echo_ok):.2f}",
             ratio(res.rtt50, "ztm-punched", echo_ok) <= 1.3),
            ("hub relays none of a direct transfer", f"{max(direct_deltas, default=0):,.0f} B",
             bool(direct_deltas) and max(direct_deltas) < CONTROL_BYTES),
            ("every punched-path transfer went direct", f"{sum(sink_ok)} of {len(sink_ok)}", all(sink_ok)),
        ]  # fmt: skip
        print()
        print(table(["target", "value", ""], [[n, v, "PASS" if ok else "FAIL"] for n, v, ok in checks]))
        for note in res.notes:
            print(f"note: {note}")
        return all(ok for _n, _v, ok in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--direct-per-round", type=int, default=2, help="time-to-direct samples per round")
    parser.add_argument("--bulk", type=int, default=256, help="MiB per transfer to the sink (default 256)")
    parser.add_argument("--rtts", type=int, default=2000, help="ping-pong round trips per path and round")
    parser.add_argument("--give-up", type=float, default=30.0, help="seconds a time-to-direct sample may take")
    parser.add_argument("--py-spy", action="store_true", help="profile the punched pair's agents after the rounds")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    parser.add_argument("--baseline-rev", metavar="REV", help="also run REV's punched pair, interleaved (A/B)")
    args = parser.parse_args(argv)
    args.base_src = None
    reason = unavailable_reason()
    if reason:
        parser.error(reason)
    for tool in ("stunnel4", "openssl"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    if args.py_spy and py_spy() is None:
        parser.error("--py-spy needs py-spy (pip install py-spy into the venv)")
    raise_nofile(65536)
    print(f"command: {' '.join([os.path.relpath(PYTHON), '-m', 'bench.p2p', *(argv or sys.argv[1:])])}")
    print(machine_facts())
    print(tree_facts())
    started = time.perf_counter()
    with Lab() as lab, Workspace("p2p", keep=args.keep) as ws:
        if args.baseline_rev:
            try:
                commit = resolve_revision(REPO, args.baseline_rev)
                args.base_src = export_revision(REPO, commit, ws.dir / "baseline")
                check_imports_from(PYTHON, args.base_src, support.base_env({"PYTHONPATH": str(args.base_src)}))
            except BaselineError as exc:
                parser.error(str(exc))
            print(f"baseline: {args.baseline_rev} = {commit[:12]}, exported to {args.base_src}")
        bench = Bench(args, lab, ws)
        for r in range(args.rounds):
            for _ in range(args.direct_per_round):
                bench.time_to_direct()
            paths = [p for p in bench.paths if p != BASE]
            order = paths[r % len(paths) :] + paths[: r % len(paths)]
            if BASE in bench.pairs:  # right after its current path, which round_order swaps in odd rounds
                order.insert(order.index("ztm-punched") + 1, BASE)
            for path in round_order(order, r):
                bench.measure(path)
            print(f"[{time.strftime('%H:%M:%S')}] round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        if args.py_spy:
            bench.profile()
        ok = bench.report()
    print(f"\nload average at end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"total run time {time.perf_counter() - started:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
