"""Where the time of a 1-byte round trip goes, per process (issue 18, item 3).

The set-up of `bench.tunnel` (hub, entrance `ep1`, relay exit `ep2`, direct exit `ep3`, the echo server, stunnel4
client and server), then for each path (stunnel4, ztm relayed, ztm direct), one connection doing 1-byte ping-pong:

1. CPU µs per round trip of each process of the path (utime + stime from /proc, `--rtts` round trips);
2. system calls per round trip of each process, by name (`strace -c -f`, in a separate pass: ptrace slows the
   processes down, so these round trips are not timed);
3. with `--py-spy` (needs `pip install py-spy` in the venv), the Python functions each ztm process spends its
   samples in (`py-spy record`, 1000 Hz), in a third pass.

Run:  .venv/bin/python -m bench.rtt_profile [--rtts 5000] [--py-spy]
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CLK_TCK, Spy, Workspace, machine_facts, percentile, py_spy, table, tree_facts
from bench.tunnel import _PATH_PROCS, Run, pingpong

_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def _pids(run: Run) -> dict[str, int]:
    return {**run.pids, "stunnel-client": run.st_client.pid, "stunnel-server": run.st_server.pid}


def _times(pid: int) -> tuple[float, float]:
    """(utime, stime) of `pid` in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_pass(run: Run, rtts: int) -> dict[str, tuple[float, dict[str, tuple[float, float]]]]:
    """Per path: p50 µs, and (user, system) CPU µs per round trip of each of its processes (3 interleaved rounds)."""
    pids = _pids(run)
    out: dict[str, tuple[float, dict[str, tuple[float, float]]]] = {}
    samples: dict[str, list[float]] = defaultdict(list)
    paths = ("stunnel4", "ztm", "ztm-direct")
    used: dict[str, dict[str, list[float]]] = {p: defaultdict(lambda: [0.0, 0.0]) for p in paths}
    for _ in range(3):
        for path in paths:
            port = run.paths[path][1]
            before = {n: _times(pids[n]) for n in _PATH_PROCS[path]}
            samples[path] += pingpong(port, rtts // 3, 0)
            for n in _PATH_PROCS[path]:
                after = _times(pids[n])
                used[path][n][0] += after[0] - before[n][0]
                used[path][n][1] += after[1] - before[n][1]
    for path, per in used.items():
        count = len(samples[path])
        p50 = percentile(samples[path], 50) * 1e6
        out[path] = (p50, {n: (u / count * 1e6, s / count * 1e6) for n, (u, s) in per.items()})
    return out


def strace_pass(run: Run, rtts: int, work: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Per path and process: system calls per round trip by name (strace -c -f while `rtts` round trips run)."""
    pids = _pids(run)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for path in ("stunnel4", "ztm", "ztm-direct"):
        port = run.paths[path][1]
        pingpong(port, 200, 0)  # the connection set-up is not what we count
        tracers = {}
        for n in _PATH_PROCS[path]:
            log = work / f"strace-{path}-{n}.txt"
            argv = ["strace", "-c", "-f", "-p", str(pids[n]), "-o", str(log)]
            tracers[n] = (subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), log)
        time.sleep(1.0)  # attached (strace has no "ready" signal; a benchmark's pause, not a test's)
        pingpong(port, rtts, 0)
        out[path] = {}
        for n, (proc, log) in tracers.items():
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
            calls: dict[str, float] = {}
            for line in log.read_text().splitlines():
                m = _STRACE_ROW.match(line)
                if m and m.group(2) != "total":
                    calls[m.group(2)] = int(m.group(1)) / rtts
            out[path][n] = calls
    return out


def spy_pass(run: Run, rtts: int, work: Path) -> dict[str, str]:
    out = {}
    for path in ("ztm", "ztm-direct"):
        port = run.paths[path][1]
        pingpong(port, 200, 0)
        spies = {n: Spy(run.pids[n], work / f"spy-{path}-{n}.txt", rate=1000) for n in _PATH_PROCS[path]}
        time.sleep(1.0)
        pingpong(port, rtts, 0)
        for spy in spies.values():
            spy.stop()
        for n, spy in spies.items():
            out[f"{path}, {n}"] = spy.summary(top=25)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtts", type=int, default=5000, help="round trips per path and pass (default 5000)")
    parser.add_argument("--py-spy", action="store_true", help="also profile the ztm processes with py-spy")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, raw profiles)")
    args = parser.parse_args(argv)
    if args.py_spy and py_spy() is None:
        parser.error("--py-spy needs py-spy (pip install py-spy into the venv)")
    print(machine_facts())
    print(tree_facts())
    with Workspace("rtt-profile", keep=args.keep) as ws:
        run = Run(argparse.Namespace(), ws)
        run.setup()
        time.sleep(1.0)
        cpu = cpu_pass(run, args.rtts)
        rows = []
        for path, (p50, per) in cpu.items():
            cells = [f"{n} {u + s:.0f} ({u:.0f} + {s:.0f})" for n, (u, s) in per.items()]
            total = sum(u + s for u, s in per.values())
            rows.append([path, f"{p50:.0f}", *cells, f"{total:.0f}"])
        width = max(len(r) for r in rows)
        rows = [r[:-1] + [""] * (width - len(r)) + r[-1:] for r in rows]
        heads = ["path", "p50 µs", *(f"process {i + 1}: CPU µs/RT (user + system)" for i in range(width - 3))]
        heads.append("sum µs/RT")
        print(f"\n### CPU per 1-byte round trip ({args.rtts} per path, 3 interleaved rounds)\n")
        print(table(heads, rows))
        calls = strace_pass(run, args.rtts, ws.dir)
        print(f"\n### System calls per round trip (strace -c -f, {args.rtts} round trips, not timed)\n")
        names = sorted({c for procs in calls.values() for by in procs.values() for c, k in by.items() if k >= 0.005})
        srows = []
        for path, procs in calls.items():
            for n, by in procs.items():
                cells = [f"{by[c]:.2f}" if by.get(c, 0) >= 0.005 else "-" for c in names]
                srows.append([path, n, *cells, f"{sum(by.values()):.1f}"])
        print(table(["path", "process", *names, "all"], srows))
        if args.py_spy:
            for what, summary in spy_pass(run, args.rtts, ws.dir).items():
                print(f"\n#### py-spy (1000 Hz), {what}, {args.rtts} round trips\n\n{summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
