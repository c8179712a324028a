"""Cross-hub relay against the one-hub relay and stunnel4, in the same run (issue 14, "Measure").

Setup, all real processes on 127.0.0.1 with temporary data directories: a throwaway PostgreSQL 15
(tests/pgserver.py) and two hubs on it (`hub-a`, `hub-b`: `ztm run hub --store postgresql://...`, the second with
a copy of the first's CA key file); agents `ep1` (the entrance) and `ep2` joined with hub A's root permit, `ep3`
with hub B's (a hub's own permit names it first, so that is where each lands; checked). `ep2` and `ep3` offer
`tcp/bench` (to `iperf3 -s`) and `tcp/echo` (to an echo server, `bench.tunnel --role echo`); `ep1` opens an inbound
for each. Paths:

* `raw`: the client talks to the server directly;
* `stunnel4`: one TLS hop (the stunnel4 client and server of bench/tunnel.py, TCP_NODELAY, TLS 1.3);
* `ztm-1hub`: client -> ep1 -> hub A -> ep2 -> server (the relay of one hub);
* `ztm-2hub`: client -> ep1 -> hub A -> hub B -> ep3 -> server (the cross-hub relay: the hub-to-hub link).

Every app stream is end-to-end encrypted between the agents on both ztm paths. Measured in `--rounds` interleaved
rounds (default 5; the order of the paths rotates each round), per path and round:

1. one TCP stream, `iperf3 -n` `--bulk` MiB (default 512), the receiver's rate;
2. 1-byte ping-pong on one connection, `--rtts` round trips (default 2,000, 200 warm-up): p50;
3. new connection + first 1-byte round trip, `--cycles` sequential cycles (default 200, 20 warm-up): p50.

Reported: the median over the rounds and the spread (min-max) of each figure, and the median of the rounds' ratios
to stunnel4 in the same round. Targets (issue 14): cross-hub throughput >= 0.5 x stunnel4, cross-hub 1-byte RTT p50
<= 3.5 x stunnel4, cross-hub connect + first round trip p50 <= 3 ms.

Run:  .venv/bin/python -m bench.cluster_relay [--rounds 5] [--bulk 512] [--rtts 2000] [--cycles 200] [--keep]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    HOST,
    Hub,
    Proc,
    Workspace,
    bench_env,
    free_port,
    machine_facts,
    raise_nofile,
    table,
    tcp_accepts,
    tree_facts,
    wait_until,
)
from bench.tunnel import Child, Run, connect_cycle, iperf, pingpong, probe, summary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import pgserver  # tests/pgserver.py: the throwaway PostgreSQL of the tests

MESH = "bench"
MiB = 1 << 20
PATHS = ("raw", "stunnel4", "ztm-1hub", "ztm-2hub")


def start_cluster_hub(ws: Workspace, name: str, store: str, password_file: Path, key: Path | None) -> Hub:
    extra = ["--store", store, "--store-password-file", str(password_file)]
    if key is not None:
        extra += ["--ca-key-file", str(key)]
    return ws.start_hub(name=name, extra=extra)


def hub_of(agent: object, name: str) -> str:
    status, eps = agent.api("GET", f"/api/meshes/{MESH}/endpoints")  # type: ignore[attr-defined]
    assert status == 200, eps
    return next(str(e.get("hub")) for e in eps if e["name"] == name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--bulk", type=int, default=512, help="MiB per iperf3 run (default 512)")
    parser.add_argument("--rtts", type=int, default=2000, help="ping-pong round trips per path and round")
    parser.add_argument("--cycles", type=int, default=200, help="connect cycles per path and round")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    args = parser.parse_args(argv)
    reason = pgserver.unavailable_reason()
    if reason:
        parser.error(reason)
    for tool in ("iperf3", "stunnel4", "openssl"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode != 0:
            parser.error(f"{tool} is not installed")
    raise_nofile(65536)
    print(machine_facts())
    print(tree_facts())
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    with pgserver.PgServer() as pg, Workspace("cluster-relay", keep=args.keep) as ws:
        # servers
        iperf_port, echo_port = free_port(), free_port()
        (ws.dir / "iperf3").mkdir()
        ws.procs.append(
            Proc(["iperf3", "-s", "-B", HOST, "-p", str(iperf_port)], log_path=ws.dir / "iperf3" / "server.out",
                 env=bench_env(ws.dir / "iperf3"), cwd=ws.dir / "iperf3")
        )  # fmt: skip
        Child(ws, "echo", ["--role", "echo", "--port", str(echo_port)])
        wait_until(lambda: tcp_accepts(iperf_port), 10, "iperf3 -s to listen")
        # stunnel4, exactly as bench/tunnel.py sets it up (its sink section goes to the echo server, unused here)
        st = types.SimpleNamespace(ws=ws, iperf_port=iperf_port, echo_port=echo_port, sink_port=echo_port)
        Run.stunnel_setup(st)  # type: ignore[arg-type]
        # two hubs on one PostgreSQL database
        password_file = ws.dir / "pgpass"
        password_file.write_text(pg.password + "\n")
        password_file.chmod(0o600)
        store = pg.url(pg.create_db())
        hub_a = start_cluster_hub(ws, "hub-a", store, password_file, None)
        hub_b = start_cluster_hub(ws, "hub-b", store, password_file, hub_a.data / "ca.key")
        ep1, ep2, ep3 = (ws.start_agent(n) for n in ("ep1", "ep2", "ep3"))
        for agent, hub in ((ep1, hub_a), (ep2, hub_a), (ep3, hub_b)):
            agent.cli("join", MESH, "--as", agent.name, "--permit", str(hub.permit))
        wait_until(lambda: hub_of(ep1, "ep3") not in ("", "None"), 10, "ep1 to see ep3 online")
        assert hub_of(ep1, "ep1") == hub_of(ep1, "ep2") != hub_of(ep1, "ep3"), "the agents are not where intended"
        ports: dict[str, tuple[int, int]] = {
            "raw": (iperf_port, echo_port),
            "stunnel4": (st.st_iperf, st.st_echo),
        }
        for path, exit_agent in (("ztm-1hub", ep2), ("ztm-2hub", ep3)):
            tag = path.removeprefix("ztm-")
            bench, echo = free_port(), free_port()
            exit_agent.cli("tunnel", "open", "outbound", f"tcp/bench-{tag}", "--targets", f"{HOST}:{iperf_port}")
            exit_agent.cli("tunnel", "open", "outbound", f"tcp/echo-{tag}", "--targets", f"{HOST}:{echo_port}")
            ep1.cli("tunnel", "open", "inbound", f"tcp/bench-{tag}", "--listen", f"{HOST}:{bench}")
            ep1.cli("tunnel", "open", "inbound", f"tcp/echo-{tag}", "--listen", f"{HOST}:{echo}")
            wait_until(lambda p=echo: probe(p), 30, f"a round trip on {path}")  # type: ignore[misc]
            ports[path] = (bench, echo)

        results: dict[str, dict[str, list[float]]] = {p: {"MBps": [], "rtt": [], "connect": []} for p in PATHS}
        for r in range(args.rounds):
            order = list(PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)])
            for path in order:
                bench, echo = ports[path]
                results[path]["MBps"].append(iperf(bench, args.bulk * MiB)["MBps"])
                results[path]["rtt"].append(summary(pingpong(echo, args.rtts, 200))["p50"])
                for _ in range(20):
                    connect_cycle(echo)
                cycles = [connect_cycle(echo) for _ in range(args.cycles)]
                results[path]["connect"].append(summary(cycles)["p50"])
            print(f"[{time.strftime('%H:%M:%S')}] round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

        def ratio(path: str, what: str) -> float:
            return statistics.median(
                a / b for a, b in zip(results[path][what], results["stunnel4"][what], strict=True) if b
            )

        rows = []
        for path in PATHS:
            res = results[path]
            mb, rtt, conn = res["MBps"], res["rtt"], res["connect"]
            rows.append([
                path,
                f"{statistics.median(mb):.0f} ({min(mb):.0f}-{max(mb):.0f})", f"{ratio(path, 'MBps'):.2f}",
                f"{statistics.median(rtt) * 1e6:.0f} ({min(rtt) * 1e6:.0f}-{max(rtt) * 1e6:.0f})",
                f"{ratio(path, 'rtt'):.2f}",
                f"{statistics.median(conn) * 1e3:.2f} ({min(conn) * 1e3:.2f}-{max(conn) * 1e3:.2f})",
                f"{ratio(path, 'connect'):.2f}",
            ])  # fmt: skip
        headers = ["path", "1 stream MB/s (spread)", "x stunnel4", "1-byte RTT p50 µs (spread)", "x stunnel4",
                   "connect+RTT p50 ms (spread)", "x stunnel4"]  # fmt: skip
        print(f"\n{args.rounds} rounds, {args.bulk} MiB per iperf3 run, {args.rtts} round trips, {args.cycles} cycles")
        print(table(headers, rows))
        two = results["ztm-2hub"]
        checks = [
            ("cross-hub throughput >= 0.5 x stunnel4", ratio("ztm-2hub", "MBps"), ratio("ztm-2hub", "MBps") >= 0.5),
            ("cross-hub RTT p50 <= 3.5 x stunnel4", ratio("ztm-2hub", "rtt"), ratio("ztm-2hub", "rtt") <= 3.5),
            ("cross-hub connect+RTT p50 <= 3 ms", statistics.median(two["connect"]) * 1e3,
             statistics.median(two["connect"]) <= 0.003),
        ]  # fmt: skip
        print()
        print(table(["target", "value", ""], [[n, f"{v:.2f}", "PASS" if ok else "FAIL"] for n, v, ok in checks]))
        load_end = Path("/proc/loadavg").read_text().split()[:3]
        print(f"\nload average at start {' '.join(load_start)}, at end {' '.join(load_end)}")
        print(json.dumps({"results": results}, separators=(",", ":")), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
