"""Network mode (issue 17): the TUN data plane over the punched direct path, against wireguard-go and stunnel4.

Needs root: it builds the NAT lab of the tests (tests/lab/netlab.py, the default `Lab()`: `home` and `workplace`,
each behind an `eim` router, a hub in `datacenter`) and runs every process inside the lab's namespaces:

* the hub in `datacenter`; agents at `home` and `workplace` with `--tun` (interfaces `ztm0`), whose `ip` streams go
  over a punched channel across both routers (checked before measuring: the net app's view says `punched`);
* wireguard-go (Debian's `wireguard-go` + `wireguard-tools`, installed with apt-get when missing) at both hosts,
  interfaces `wgh` and `wgw` (10.99.0.1 home, 10.99.0.2 workplace, its default MTU), home dialling work-rtr's UDP
  port 51820, which the bench forwards to workplace (an nft table of its own plus one accept rule in the router's
  forward chain): the same route as the punched path, both routers crossed;
* stunnel4 (one TLS 1.3 hop, ECDSA P-256, TCP_NODELAY: bench/tunnel.py's baseline) with its client at home and its
  server at workplace, reached through the same forward (TCP);
* an `iperf3 -s` at workplace.

Per run (`--runs`, default 5; the order of the paths rotates each run): `iperf3 -c ADDR -t SECONDS` one TCP stream
from home over each path (the receiver's rate), the CPU seconds of each path's processes during it (per GiB moved),
and `ping -c N -i 0.01` over ztm and wireguard-go (and the underlay from home to the data center, for scale): p50
and p99, and the ztm agents' CPU time per ping. Reported: the median
and the spread (min..max) over the runs, and the median of the runs' ratios to wireguard-go. Targets (issue 17):
TCP >= 1.0 x wireguard-go, ping p50 <= 1.5 x wireguard-go; stunnel4 for context (TCP >= 0.5 x stunnel4).

Same-run baseline, `--baseline-rev REV` (`bench.baseline`: REV's `src/` exported with `git archive`): a second hub
(`datacenter`, port 8889, mesh range 10.200.0.0/16) and two more agents (home and workplace, API port 7778, interfaces
`zb0`) run REV's code beside the current one, their own mesh punched across the same routers; the path `ztm@base`
is measured right after or before `ztm` (A, B then B, A: `round_order`), and the report adds the runs' ratios
ztm / ztm@base (ping p50, TCP, CPU per ping).

Run:  sudo .venv/bin/python -m bench.tun [--runs 5] [--seconds 5] [--pings 200] [--baseline-rev REV] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import support  # tests/support.py: hub and agent processes in a namespace
from bench.baseline import (
    BaselineError,
    RoundRatios,
    base_of,
    baseline_commit,
    check_imports_from,
    export_revision,
    round_order,
)
from bench.common import (
    PYTHON,
    REPO,
    Workspace,
    bench_env,
    cpu_seconds,
    machine_facts,
    percentile,
    src_digest,
    table,
    tree_facts,
)
from lab.netlab import Lab, unavailable_reason

MESH = "bench"
WG_PORT = 51820
ST_PORT = 9201
"""workplace's stunnel4 server (work-rtr forwards it)."""
ST_LOCAL = 9301
"""home's stunnel4 client (127.0.0.1)."""
IPERF = 5201
PATHS = ("ztm", "wireguard-go", "stunnel4")
BASE = base_of("ztm")
"""The baseline's path (`--baseline-rev`)."""
BASE_HUB_PORT = 8889
BASE_API_PORT = 7778
BASE_RANGE = "10.200.0.0/16"
"""The baseline mesh's IPv4 range: apart from the current mesh's (100.64.0.0/10) in the same namespaces."""
WG_DEV = {"home": "wgh", "workplace": "wgw"}
GiB = 1 << 30


def install_baselines() -> None:
    missing = [pkg for tool, pkg in (("wireguard-go", "wireguard-go"), ("wg", "wireguard-tools"),
                                     ("stunnel4", "stunnel4"), ("iperf3", "iperf3"), ("ping", "iputils-ping"))
               if shutil.which(tool) is None]  # fmt: skip
    if missing:
        print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, env=env, capture_output=True, timeout=600)


def forward(lab: Lab) -> None:
    """work-rtr forwards UDP WG_PORT and TCP ST_PORT on its WAN address to `workplace` (bench only)."""
    ns, target = lab.ns("work-rtr"), lab.addr("workplace")
    script = (
        "table ip ztmbench {\n    chain pre {\n        type nat hook prerouting priority dstnat; policy accept;\n"
        f'        iifname "wan0" udp dport {WG_PORT} dnat to {target}:{WG_PORT}\n'
        f'        iifname "wan0" tcp dport {ST_PORT} dnat to {target}:{ST_PORT}\n'
        "    }\n}\ninsert rule inet ztmlab forward ct status dnat accept\n"
    )
    support.run(["nft", "-f", "-"], netns=ns, input=script)


def wireguard(lab: Lab, ws: Workspace) -> dict[str, int]:
    """wg0 at home (10.99.0.1) and workplace (10.99.0.2), home dialling work-rtr's forwarded port; host -> the pid
    of its wireguard-go (which daemonises itself; the lab's teardown ends it with the namespace's processes)."""
    keys = {}
    for host in ("home", "workplace"):
        private = subprocess.run(["wg", "genkey"], check=True, capture_output=True, text=True).stdout.strip()
        public = subprocess.run(["wg", "pubkey"], input=private, check=True, capture_output=True, text=True)
        path = ws.dir / f"wg-{host}.key"
        path.write_text(private + "\n")
        path.chmod(0o600)
        keys[host] = (path, public.stdout.strip())
    pids = {}
    for host, addr, other, endpoint in (
        ("workplace", "10.99.0.2", "home", None),
        ("home", "10.99.0.1", "workplace", f"{lab.addr('work-rtr')}:{WG_PORT}"),
    ):
        dev = WG_DEV[host]  # one name per host: wireguard-go's control socket (/var/run/wireguard/DEV.sock) is shared
        lab.exec(host, ["wireguard-go", dev])
        peer = ["peer", keys[other][1], "allowed-ips", f"10.99.0.{1 if other == 'home' else 2}/32"]
        if endpoint:
            peer += ["endpoint", endpoint, "persistent-keepalive", "5"]
        lab.exec(host, ["wg", "set", dev, "listen-port", str(WG_PORT), "private-key", str(keys[host][0]), *peer])
        lab.exec(host, ["ip", "addr", "add", f"{addr}/24", "dev", dev])
        lab.exec(host, ["ip", "link", "set", dev, "up"])
        for pid in subprocess.run(["ip", "netns", "pids", lab.ns(host)], capture_output=True, text=True).stdout.split():
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("wireguard"):
                pids[host] = int(pid)
    support.wait_until(lambda: ping(lab, "10.99.0.2", 1, 0.2) is not None, 20, "a ping over wireguard-go")
    return pids


def stunnel(lab: Lab, ws: Workspace) -> list[support.Proc]:
    dir = ws.dir / "stunnel"
    dir.mkdir()
    cert, key = dir / "cert.pem", dir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=bench"],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    common = "foreground = yes\npid =\nsyslog = no\ndebug = warning\n"
    opts = "socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\nsslVersionMin = TLSv1.3\n"
    server = common + f"[iperf]\naccept = 0.0.0.0:{ST_PORT}\nconnect = 127.0.0.1:{IPERF}\ncert = {cert}\nkey = {key}\n"
    client = common + f"client = yes\n[iperf]\naccept = 127.0.0.1:{ST_LOCAL}\n"
    client += f"connect = {lab.addr('work-rtr')}:{ST_PORT}\nverifyPeer = yes\nCAfile = {cert}\n{opts}"
    (dir / "server.conf").write_text(server + opts)
    (dir / "client.conf").write_text(client)
    procs = [
        lab.popen("workplace", ["stunnel4", str(dir / "server.conf")], name="stunnel-server", cwd=dir),
        lab.popen("home", ["stunnel4", str(dir / "client.conf")], name="stunnel-client", cwd=dir),
    ]
    support.wait_until(lambda: lab.can_connect("home", "127.0.0.1", ST_LOCAL), 10, "stunnel4's client")
    return procs


def ping(lab: Lab, addr: str, count: int, interval: float) -> list[float] | None:
    """RTTs in ms of `count` pings from home to `addr` (None if none came back)."""
    out = lab.exec("home", ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", addr], check=False,
                   timeout=60 + count * interval * 2)  # fmt: skip
    rtts = [float(part.split("=")[1]) for line in out.stdout.splitlines() for part in line.split()
            if part.startswith("time=")]  # fmt: skip
    return rtts or None


def cpu_ns(pid: int) -> int:
    """Nanoseconds on a CPU of all threads of process `pid` (`/proc/PID/task/*/schedstat`: finer than the clock
    ticks of `cpu_seconds`, enough for a few hundred pings)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def net_view(agent: support.Agent) -> dict[str, Any]:
    status, apps = agent.api("GET", f"/api/meshes/{MESH}/apps")
    assert status == 200, apps
    return next(a for a in apps if a["name"] == "net")


@dataclass
class Results:
    rate: dict[str, list[float]] = field(default_factory=dict)
    """path -> MB/s (1e6 bytes) per run."""
    cpu: dict[str, list[float]] = field(default_factory=dict)
    """process label -> CPU seconds per GiB, per run."""
    rtt: dict[str, list[float]] = field(default_factory=dict)
    """path -> every RTT (ms) of every run."""
    rtt_p50: dict[str, list[float]] = field(default_factory=dict)
    """path -> p50 (ms) per run."""
    ping_cpu: dict[str, list[float]] = field(default_factory=dict)
    """ztm agent label -> CPU microseconds per ping, per run."""


class Bench:
    def __init__(self, args: argparse.Namespace, lab: Lab, ws: Workspace, base_src: Path | None = None) -> None:
        self.args, self.lab, self.ws = args, lab, ws
        self.res = Results()
        self.procs: list[support.Proc] = []
        """Hubs and agents, stopped by `close` (the lab's own `popen`s stop with the lab)."""
        self.paths: tuple[str, ...] = PATHS if base_src is None else ("ztm", BASE, *PATHS[1:])
        self.agents, self.mesh_ip = self.mesh("", 8888, 7777)
        self.base_agents: dict[str, support.Agent] = {}
        self.targets: dict[str, str | None] = {"ztm": self.mesh_ip, "wireguard-go": "10.99.0.2", "stunnel4": None}
        if base_src is not None:
            env = {"PYTHONPATH": str(base_src)}
            extra = ("--mesh-range", BASE_RANGE)
            self.base_agents, self.targets[BASE] = self.mesh("@base", BASE_HUB_PORT, BASE_API_PORT, env, extra)
        lab.popen("workplace", ["iperf3", "-s", "-p", str(IPERF)], name="iperf3-server")
        forward(lab)
        self.wg = wireguard(lab, ws)
        self.stunnel = stunnel(lab, ws)
        for agents, target in ((self.agents, self.mesh_ip), (self.base_agents, self.targets.get(BASE))):

            def punched(agents: dict[str, support.Agent] = agents, target: str | None = target) -> bool:
                assert target is not None
                if ping(lab, target, 1, 0.2) is None:
                    return False
                return all(p["path"] in ("punched", "lan") for a in agents.values() for p in net_view(a)["peers"])

            if agents:
                support.wait_until(punched, 60, "both agents' ip streams on the punched path")

    def mesh(
        self,
        suffix: str,
        hub_port: int,
        api_port: int,
        env: dict[str, str] | None = None,
        hub_extra: tuple[str, ...] = (),
    ) -> tuple[dict[str, support.Agent], str]:
        """A hub in `datacenter` and agents at home and workplace with `--tun` (the baseline's: `env` runs its code,
        `zb0` interfaces); the agents and workplace's mesh IPv4 address."""
        dc, ns = self.lab.addr("datacenter"), self.lab.ns("datacenter")
        hub = support.start_hub(self.ws.dir, netns=ns, listen=f"0.0.0.0:{hub_port}", names=f"{dc}:{hub_port}",
                                env=env, extra=hub_extra, name=f"hub{suffix}")  # fmt: skip
        self.procs.append(hub.proc)
        agents = {}
        tun = ["--tun"] if not suffix else ["--tun", "--tun-name", "zb"]
        for host in ("home", "workplace"):
            agent = support.start_agent(self.ws.dir, host + suffix, netns=self.lab.ns(host), port=api_port, env=env,
                                        extra=tun)  # fmt: skip
            self.procs.append(agent.proc)
            agent.join(MESH, host, hub.permit)
            agents[host] = agent
        views = {h: support.wait_until(lambda a=a: (v := net_view(a))["tun_up"] and v, 30, f"{h}{suffix}'s TUN")
                 for h, a in agents.items()}  # fmt: skip
        return agents, views["workplace"]["mesh_ip"]

    def close(self) -> None:
        support.stop_all(self.procs)

    def pids(self, path: str) -> dict[str, int]:
        if path == "ztm":
            return {f"ztm agent {h}": a.proc.pid for h, a in self.agents.items()}
        if path == BASE:
            return {f"{BASE} agent {h}": a.proc.pid for h, a in self.base_agents.items()}
        if path == "wireguard-go":
            return {f"wireguard-go {h}": pid for h, pid in self.wg.items()}
        return {f"stunnel4 {p.name}": p.pid for p in self.stunnel}

    def iperf(self, path: str) -> None:
        target = self.targets[path]
        argv = ["iperf3", "-J", "-t", str(self.args.seconds), "-p", str(IPERF)]
        argv += ["-c", "127.0.0.1", "-p", str(ST_LOCAL)] if target is None else ["-c", target]
        pids = self.pids(path)
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        out = self.lab.exec("home", argv, timeout=self.args.seconds * 4 + 30)
        after = {k: cpu_seconds(p) for k, p in pids.items()}
        end = json.loads(out.stdout)["end"]
        moved = float(end["sum_received"]["bytes"])
        self.res.rate.setdefault(path, []).append(float(end["sum_received"]["bits_per_second"]) / 8 / 1e6)
        for k in pids:
            self.res.cpu.setdefault(k, []).append((after[k] - before[k]) / (moved / GiB))

    def pings(self, run: int) -> None:
        names = [p for p in round_order(self.paths, run) if p != "stunnel4"] + ["underlay"]
        addrs = {**self.targets, "underlay": self.lab.addr("datacenter")}
        for name in names:
            addr = addrs[name]
            assert addr is not None
            pids = self.pids(name) if name in ("ztm", BASE) else {}
            before = {k: cpu_ns(p) for k, p in pids.items()}
            rtts = ping(self.lab, addr, self.args.pings, 0.01)
            assert rtts, f"no ping came back over {name}"
            for k, p in pids.items():
                self.res.ping_cpu.setdefault(k, []).append((cpu_ns(p) - before[k]) / 1e3 / len(rtts))
            self.res.rtt.setdefault(name, []).extend(rtts)
            self.res.rtt_p50.setdefault(name, []).append(statistics.median(rtts))

    def report(self) -> bool:
        r = self.res
        rows = []
        for path in self.paths:
            v = r.rate[path]
            rows.append([path, f"{statistics.median(v):.1f}", f"{min(v):.1f}..{max(v):.1f}"])
        print("\nTCP, one stream (iperf3), MB/s: median of the runs and spread")
        print(table(["path", "MB/s", "spread"], rows))
        tcp_ratio = statistics.median(z / w for z, w in zip(r.rate["ztm"], r.rate["wireguard-go"], strict=True))
        st_ratio = statistics.median(z / s for z, s in zip(r.rate["ztm"], r.rate["stunnel4"], strict=True))
        print("\nCPU seconds per GiB moved (median of the runs)")
        print(table(["process", "CPU s/GiB"], [[k, f"{statistics.median(v):.2f}"] for k, v in r.cpu.items()]))
        print("\nping RTT, ms (all samples; p50 per run in brackets)")
        rows = []
        for name, rtts in r.rtt.items():
            runs = ", ".join(f"{x:.3f}" for x in r.rtt_p50[name])
            rows.append([name, f"{statistics.median(rtts):.3f}", f"{percentile(rtts, 99):.3f}", f"[{runs}]"])
        print(table(["path", "p50", "p99", "p50 per run"], rows))
        print("\nztm agents' CPU microseconds per ping (during the pings; median of the runs, spread)")
        cpu_rows = [[k, f"{statistics.median(v):.0f}", f"{min(v):.0f}..{max(v):.0f}"] for k, v in r.ping_cpu.items()]
        print(table(["process", "CPU us/ping", "spread"], cpu_rows))
        if BASE in r.rate:
            self.report_base()
        rtt_ratio = statistics.median(z / w for z, w in zip(r.rtt_p50["ztm"], r.rtt_p50["wireguard-go"], strict=True))
        ok_tcp, ok_rtt = tcp_ratio >= 1.0, rtt_ratio <= 1.5
        print(f"\nTCP ztm / wireguard-go: {tcp_ratio:.2f} x (target >= 1.0: {'met' if ok_tcp else 'NOT met'})")
        print(f"TCP ztm / stunnel4: {st_ratio:.2f} x (target >= 0.5: {'met' if st_ratio >= 0.5 else 'NOT met'})")
        print(f"ping p50 ztm / wireguard-go: {rtt_ratio:.2f} x (target <= 1.5: {'met' if ok_rtt else 'NOT met'})")
        return ok_tcp and ok_rtt

    def report_base(self) -> None:
        """ztm against ztm@base, run by run (each run measured both back to back)."""
        r = self.res
        rows = []
        for measure, cur, base in (("ping p50", r.rtt_p50["ztm"], r.rtt_p50[BASE]),
                                   ("TCP MB/s", r.rate["ztm"], r.rate[BASE]),
                                   *((f"CPU/ping {h}", r.ping_cpu[f"ztm agent {h}"], r.ping_cpu[f"{BASE} agent {h}"])
                                     for h in self.agents)):  # fmt: skip
            ratios = RoundRatios()
            for c, b in zip(cur, base, strict=True):
                ratios.add(c, b)
            rows.append([measure, f"{statistics.median(cur):.3f}", f"{statistics.median(base):.3f}", ratios.text()])
        print("\nztm against ztm@base (--baseline-rev): medians of the runs, and the runs' ratios")
        print(table(["measure", "ztm", "ztm@base", "x baseline (median of runs' ratios, spread)"], rows))
        base_ratio = statistics.median(b / w for b, w in zip(r.rtt_p50[BASE], r.rtt_p50["wireguard-go"], strict=True))
        print(f"ping p50 ztm@base / wireguard-go: {base_ratio:.2f} x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs (default %(default)s)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per iperf3 run (default %(default)s)")
    parser.add_argument("--pings", type=int, default=200, help="pings per path and run (default %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    parser.add_argument("--baseline-rev", metavar="REV", help="also run REV's agents (path ztm@base) beside these")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        parser.error(reason)
    base_commit = baseline_commit(parser, REPO, args.baseline_rev)
    install_baselines()
    print(f"command: {' '.join([os.path.relpath(PYTHON), '-m', 'bench.tun', *(argv or sys.argv[1:])])}")
    print(machine_facts())
    print(tree_facts())
    started = time.perf_counter()
    with Lab() as lab, Workspace("tun", keep=args.keep) as ws:
        base_src = None
        if base_commit:
            try:
                base_src = export_revision(REPO, base_commit, ws.dir / "baseline")
                check_imports_from(PYTHON, base_src, bench_env(ws.dir, src=base_src))
            except BaselineError as exc:
                parser.error(str(exc))
            print(f"baseline: --baseline-rev {args.baseline_rev} = {base_commit[:12]}, src/ztm sha256: "
                  f"{src_digest(base_src)}; the path ztm@base runs it")  # fmt: skip
        bench = Bench(args, lab, ws, base_src)
        try:
            for run in range(args.runs):
                paths = bench.paths[1:] if base_src is not None else bench.paths  # ztm and ztm@base stay together
                k = run % len(paths)
                order = round_order(["ztm", BASE] if base_src is not None else [], run)
                order += [p for p in paths[k:] + paths[:k] if p not in order]
                for path in order:
                    bench.iperf(path)
                bench.pings(run)
                print(f"[{time.strftime('%H:%M:%S')}] run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
            ok = bench.report()
        finally:
            bench.close()
    print(f"\nload average at end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"total run time {time.perf_counter() - started:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
