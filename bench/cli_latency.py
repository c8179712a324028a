"""Wall-clock latency of `ztm get ep` on a mesh of 2 endpoints, next to what it is made of.

Setup: one hub and two agents (A and B), real processes on 127.0.0.1 with temporary data directories, both joined
to the mesh. Then, `--runs` times each (after `--warmup` unmeasured runs), one after the other, in rounds so that
slow drift of the machine touches every row alike:

* `python -c pass`: the interpreter's own start and exit (the floor of any CLI written in Python);
* `python -m ztm help`: the CLI's imports and argument parsing, no network;
* `python -m ztm version`: the CLI plus one call to the local agent that does not reach the hub;
* `python -m ztm get ep` (table) and `... -o json`: the CLI plus agent plus the hub round trip;
* `.venv/bin/ztm get ep`: the same through the installed console script;
* `http.client` in this process, a new connection per call as the CLI makes: `GET /api/version` (agent only) and
  `GET /api/meshes/M/endpoints` (agent + hub): the API's share without any process start.

If `hyperfine` is on PATH, `--hyperfine` also runs it on the process rows for a second opinion. `-X importtime` of
one `ztm get ep` lists the slowest imports.

Run:  .venv/bin/python -m bench.cli_latency [--runs 30] [--hyperfine]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PYTHON, ZTM, Agent, Workspace, machine_facts, ms, summary, table, tree_facts

MESH = "bench"


def timed_process(argv: list[str], agent: Agent) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        cp = subprocess.run(argv, env=agent.env, cwd=agent.home, capture_output=True, stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        if cp.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({cp.returncode}): {cp.stdout!r} {cp.stderr!r}")
        return elapsed

    return run


def timed_http(agent: Agent, path: str) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {agent.token}"})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        elapsed = time.perf_counter() - start
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
        json.loads(body)
        return elapsed

    return run


def import_profile(agent: Agent, top: int = 10) -> str:
    """The slowest imports (cumulative) of one `ztm get ep`, from `python -X importtime`."""
    cp = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "ztm", "--agent", agent.address, "get", "ep"],
        env=agent.env,
        cwd=agent.home,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    rows = []
    total = 0
    for line in cp.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            cumulative, depth, name = int(m.group(2)), len(m.group(3)) - 1, m.group(4)
            if depth == 0:
                total += cumulative
                rows.append((cumulative, name))
    rows.sort(reverse=True)
    lines = [f"imports at top level: {total / 1000:.1f} ms in all; the slowest:"]
    lines += [f"  {us / 1000:7.1f} ms  {name}" for us, name in rows[:top]]
    return "\n".join(lines)


def hyperfine_rows(commands: dict[str, list[str]], agent: Agent, runs: int, warmup: int) -> list[list[object]]:
    exe = shutil.which("hyperfine")
    if exe is None:
        return []
    out = Path(tempfile.mkdtemp(prefix="ztm-bench-hf-")) / "hf.json"
    try:
        argv = [exe, "-N", "--warmup", str(warmup), "--runs", str(runs), "--export-json", str(out), "--style", "none"]
        argv += [" ".join(cmd) for cmd in commands.values()]
        subprocess.run(argv, env=agent.env, cwd=agent.home, check=True, capture_output=True)
        data = json.loads(out.read_text())
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    rows: list[list[object]] = []
    for label, result in zip(commands, data["results"], strict=True):
        rows.append(
            [
                label,
                len(result["times"]),
                ms(result["mean"]),
                ms(result["median"]),
                ms(result["min"]),
                ms(result["max"]),
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="measured runs per row (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured runs per row first (default 3)")
    parser.add_argument("--hyperfine", action="store_true", help="also run hyperfine, if installed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    args = parser.parse_args(argv)

    print(machine_facts())
    print(tree_facts())
    with Workspace("cli", keep=args.keep) as ws:
        hub = ws.start_hub()
        a = ws.start_agent("a")
        b = ws.start_agent("b")
        a.cli("join", MESH, "--as", "alpha", "--permit", str(hub.permit))
        b.cli("join", MESH, "--as", "beta", "--permit", str(hub.permit))
        eps = json.loads(a.cli("get", "ep", "-o", "json").stdout)
        assert len(eps) == 2 and all(e["online"] for e in eps), eps

        venv_ztm = str(Path(PYTHON).parent / "ztm")
        processes: dict[str, list[str]] = {
            "python -c pass": [PYTHON, "-c", "pass"],
            "python -m ztm help (no network)": [*ZTM, "help"],
            "python -m ztm version (agent only)": [*ZTM, "--agent", a.address, "version"],
            "python -m ztm get ep": [*ZTM, "--agent", a.address, "get", "ep"],
            "python -m ztm get ep -o json": [*ZTM, "--agent", a.address, "get", "ep", "-o", "json"],
        }
        if Path(venv_ztm).exists():
            processes[".venv/bin/ztm get ep"] = [venv_ztm, "--agent", a.address, "get", "ep"]
        rows_def: dict[str, Callable[[], float]] = {k: timed_process(v, a) for k, v in processes.items()}
        rows_def["http.client GET /api/version (agent only)"] = timed_http(a, "/api/version")
        rows_def[f"http.client GET /api/meshes/{MESH}/endpoints"] = timed_http(a, f"/api/meshes/{MESH}/endpoints")

        for fn in rows_def.values():
            for _ in range(args.warmup):
                fn()
        results: dict[str, list[float]] = {k: [] for k in rows_def}
        started = time.perf_counter()
        for _ in range(args.runs):  # rounds: every row once per round
            for label, fn in rows_def.items():
                results[label].append(fn())
        elapsed = time.perf_counter() - started
        imports = import_profile(a)
        hf: list[list[object]] = []
        if args.hyperfine:
            hf = hyperfine_rows(processes, a, args.runs, args.warmup)

    base = summary(results["python -c pass"])["p50"]
    rows = []
    for label, values in results.items():
        s = summary(values)
        extra = "" if label.startswith("http.client") else ms(s["p50"] - base)
        rows.append([label, s["n"], ms(s["min"]), ms(s["p50"]), ms(s["p90"]), ms(s["max"]), extra])
    print()
    print(f"{args.runs} runs per row in rounds ({args.warmup} warm-up runs first), {elapsed:.1f}s; times in ms")
    print()
    print(table(["command", "n", "min", "p50", "p90", "max", "p50 minus python -c pass"], rows))
    print()
    print(imports)
    if args.hyperfine:
        print()
        if hf:
            print("hyperfine (-N, no shell):")
            print(table(["command", "runs", "mean", "median", "min", "max"], hf))
        else:
            print("hyperfine is not installed; skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
