"""Where the CPU of a new relayed connection goes, per process (issues 13 and 18).

The set-up of `bench.tunnel` (hub, entrance `ep1`, relay exit `ep2`, direct exit `ep3`, the echo server, stunnel4),
then on the relayed path (ep1 -> hub -> ep2 -> echo server) `connect_cycle`s (connect, 1 byte there and back, close):

1. CPU µs per connect cycle of each process (utime + stime from /proc, `--cycles` cycles);
2. system calls per cycle of each process, by name (`strace -c -f`, a separate pass, not timed);
3. with `--py-spy` (needs `pip install py-spy` in the venv), the Python functions each process spends its samples
   in (`py-spy record`, `--rate` Hz, `--native` for C frames), a third pass; with `--perf`, `perf record` CPU
   samples by shared object.

`--ab REV` instead: the same relayed path of revision REV (`ep1@base`, `hub@base`, `ep2@base`, as `bench.tunnel
--baseline-rev` starts them) against this tree's, `--rounds` rounds of `--cycles` cycles per side, the sides taking
turns every `--batch` cycles (so both see the same load): CPU µs per cycle of each process and the median over the
rounds of each round's ratio current/baseline with its min-max (CPU, which the load of other processes disturbs far
less than latency).

Run:  .venv/bin/python -m bench.connect_profile [--cycles 3000] [--py-spy] [--native] [--perf]
      .venv/bin/python -m bench.connect_profile --ab 9439335 [--rounds 9] [--cycles 1000]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baseline import BASE, BaselineError, export_revision, resolve_revision
from bench.common import REPO, Spy, Workspace, machine_facts, percentile, py_spy, table, tree_facts
from bench.rtt_profile import _STRACE_ROW, _times
from bench.tunnel import Run, connect_cycle

PROCS = ("ep1", "hub", "ep2")


def cycles(port: int, count: int) -> list[float]:
    return [connect_cycle(port) for _ in range(count)]


def ab_pass(run: Run, path: str, count: int, rounds: int, batch: int) -> str:
    """This tree's `path` (ztm or ztm-direct) against the baseline's: per round `count` cycles on each, in
    alternating batches of `batch` (A, B, A, B... in even rounds, B, A... in odd ones), so both sides see the same
    load of the machine; the sides run in different processes, so each process's CPU is its side's alone."""
    procs = PROCS if path == "ztm" else ("ep1", "ep3")
    sides = {"": run.paths[path][1], BASE: run.paths[path + BASE][1]}
    pids = {**run.pids, **run.base_pids}
    cpu: dict[str, list[float]] = {f"{n}{side}": [] for n in procs for side in sides}
    p50: dict[str, list[float]] = {side: [] for side in sides}
    for r in range(rounds):
        before = {n: sum(_times(pids[n])) for n in cpu}
        samples: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(count // batch):
            for side in sides if r % 2 == 0 else reversed(sides):
                samples[side] += cycles(sides[side], batch)
        time.sleep(0.3)  # the last close everywhere
        for n, start in before.items():
            cpu[n].append((sum(_times(pids[n])) - start) / len(samples[BASE if n.endswith(BASE) else ""]) * 1e6)
        for side in sides:
            p50[side].append(percentile(samples[side], 50) * 1e3)
        print(f"[{time.strftime('%H:%M:%S')}] round {r + 1}/{rounds} done", file=sys.stderr, flush=True)

    def ratio(cur: list[float], base: list[float]) -> str:
        values = [c / b for c, b in zip(cur, base, strict=True) if b > 0]
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}, {len(values)} rounds)"

    rows = []
    for n in procs:
        cur, base = cpu[n], cpu[n + BASE]
        rows.append([path, n, f"{statistics.median(cur):.0f}", f"{statistics.median(base):.0f}", ratio(cur, base)])
    total = [sum(cpu[n][i] for n in procs) for i in range(rounds)]
    total_base = [sum(cpu[n + BASE][i] for n in procs) for i in range(rounds)]
    rows.append([
        path, "sum", f"{statistics.median(total):.0f}", f"{statistics.median(total_base):.0f}", ratio(total, total_base)
    ])  # fmt: skip
    rows.append([
        path, "connect + first RTT p50 (ms)", f"{statistics.median(p50['']):.2f}",
        f"{statistics.median(p50[BASE]):.2f}", ratio(p50[""], p50[BASE]),
    ])  # fmt: skip
    return table(["path", "process", "CPU µs/cycle (median of rounds)", "@base", AB_RATIO], rows)


AB_RATIO = "x baseline (median of rounds' ratios, spread)"


def cpu_pass(run: Run, count: int) -> dict[str, tuple[float, float]]:
    """(user, system) CPU µs per connect cycle of each process of the relayed path (3 rounds)."""
    port = run.paths["ztm"][1]
    used = {n: [0.0, 0.0] for n in PROCS}
    for _ in range(3):
        before = {n: _times(run.pids[n]) for n in PROCS}
        cycles(port, count // 3)
        time.sleep(0.2)  # the last close everywhere
        for n in PROCS:
            after = _times(run.pids[n])
            used[n][0] += after[0] - before[n][0]
            used[n][1] += after[1] - before[n][1]
    done = count // 3 * 3
    return {n: (u / done * 1e6, s / done * 1e6) for n, (u, s) in used.items()}


def strace_pass(run: Run, count: int, work: Path) -> dict[str, dict[str, float]]:
    port = run.paths["ztm"][1]
    tracers = {}
    for n in PROCS:
        log = work / f"strace-{n}.txt"
        argv = ["strace", "-c", "-f", "-p", str(run.pids[n]), "-o", str(log)]
        tracers[n] = (subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), log)
    time.sleep(1.0)  # attached (strace has no "ready" signal; a benchmark's pause, not a test's)
    cycles(port, count)
    time.sleep(0.2)
    out: dict[str, dict[str, float]] = {}
    for n, (proc, log) in tracers.items():
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        calls: dict[str, float] = {}
        for line in log.read_text().splitlines():
            m = _STRACE_ROW.match(line)
            if m and m.group(2) != "total":
                calls[m.group(2)] = int(m.group(1)) / count
        out[n] = calls
    return out


def spy_pass(run: Run, count: int, work: Path, rate: int, native: bool) -> dict[str, str]:
    port = run.paths["ztm"][1]
    spies = {n: Spy(run.pids[n], work / f"spy-{n}.txt", rate=rate, native=native) for n in PROCS}
    time.sleep(1.0)
    cycles(port, count)
    for spy in spies.values():
        spy.stop()
    return {n: spy.summary(top=40) for n, spy in spies.items()}


def perf_pass(run: Run, count: int, work: Path) -> dict[str, str]:
    """`perf record` (cpu-clock, 2 kHz) of each process: CPU samples by shared object (kernel, libpython, libssl,
    uvloop...), the one accounting that counts CPU rather than wall time."""
    port = run.paths["ztm"][1]
    perfs = {}
    for n in PROCS:
        data = work / f"perf-{n}.data"
        argv = ["perf", "record", "-e", "cpu-clock", "-F", "2000", "-p", str(run.pids[n]), "-o", str(data)]
        perfs[n] = (subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), data)
    time.sleep(1.0)
    cycles(port, count)
    out = {}
    for n, (proc, data) in perfs.items():
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        report = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--sort", "dso", "--percent-limit", "1"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        out[n] = "\n".join(line for line in report.stdout.splitlines() if line and not line.startswith("#"))
        report = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--sort", "dso,sym", "--percent-limit", "0.7"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        out[n] += "\n" + "\n".join(line for line in report.stdout.splitlines() if line and not line.startswith("#"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=3000, help="connect cycles per pass (default 3000)")
    parser.add_argument("--py-spy", action="store_true", help="also profile the ztm processes with py-spy")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second (default 500)")
    parser.add_argument("--perf", action="store_true", help="also a `perf record` pass (CPU by shared object)")
    parser.add_argument("--no-strace", action="store_true", help="leave the strace pass out")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, raw profiles)")
    parser.add_argument("--ab", metavar="REV", help="compare CPU per cycle with revision REV instead of profiling")
    parser.add_argument("--rounds", type=int, default=9, help="--ab: rounds (default 9)")
    parser.add_argument("--batch", type=int, default=20, help="--ab: cycles per side before switching (default 20)")
    args = parser.parse_args(argv)
    base_commit = None
    if args.ab:
        try:
            base_commit = resolve_revision(REPO, args.ab)
        except BaselineError as exc:
            parser.error(str(exc))
    if args.py_spy and py_spy() is None:
        parser.error("--py-spy needs py-spy (pip install py-spy into the venv)")
    print(machine_facts())
    print(tree_facts())
    with Workspace("connect-profile", keep=args.keep) as ws:
        run = Run(argparse.Namespace(policy_rules=0), ws)  # bench.tunnel options it reads: their defaults
        if base_commit:
            run.base_src = export_revision(REPO, base_commit, ws.dir / "baseline")
        run.setup()
        cycles(run.paths["ztm"][1], 200)  # warm-up
        if base_commit:
            for path in ("ztm" + BASE, "ztm-direct", "ztm-direct" + BASE):
                cycles(run.paths[path][1], 200)
            print(
                f"\n### Connect cycles, relayed and direct, this tree against {args.ab} ({base_commit[:12]}): "
                f"{args.rounds} rounds of {args.cycles} cycles per side in alternating batches of {args.batch}\n"
            )
            for path in ("ztm", "ztm-direct"):
                print(ab_pass(run, path, args.cycles, args.rounds, args.batch) + "\n")
            return 0
        cpu = cpu_pass(run, args.cycles)
        rows = [[n, f"{u + s:.0f}", f"{u:.0f}", f"{s:.0f}"] for n, (u, s) in cpu.items()]
        print(f"\n### CPU per relayed connect cycle ({args.cycles} cycles)\n")
        print(table(["process", "CPU µs/cycle", "user", "system"], rows))
        if not args.no_strace:
            calls = strace_pass(run, args.cycles, ws.dir)
            print(f"\n### System calls per connect cycle (strace -c -f, {args.cycles} cycles, not timed)\n")
            names = sorted({c for by in calls.values() for c, k in by.items() if k >= 0.05})
            srows = []
            for n, by in calls.items():
                cells = [f"{by[c]:.1f}" if by.get(c, 0) >= 0.05 else "-" for c in names]
                srows.append([n, *cells, f"{sum(by.values()):.1f}"])
            print(table(["process", *names, "all"], srows))
        if args.perf:
            for what, text in perf_pass(run, args.cycles, ws.dir).items():
                print(f"\n#### perf (cpu-clock, 2 kHz), {what}, {args.cycles} connect cycles\n\n{text}")
        if args.py_spy:
            for what, summary in spy_pass(run, args.cycles, ws.dir, args.rate, args.native).items():
                print(f"\n#### py-spy ({args.rate} Hz), {what}, {args.cycles} connect cycles\n\n{summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
