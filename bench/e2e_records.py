"""The end-to-end record layer on a bulk stream: CPU seconds per GiB to seal and to open, this tree against a
baseline revision's `src/ztm/e2e/record.py`, interleaved in one process (issue 15, the punched path's speed).

Seal: 256 KiB reads (uvloop's read size on a TCP socket, rounded) as DATA records of 65,515 bytes (what a direct
channel's `E2EStream` uses), as `E2EStream.write_nowait` does in each revision (this tree: `Channel.seal_batch`; a
revision without it: `seal` per record and a join). Open: that stream fed back in chunks of `--chunk` bytes (what
the TLS transport hands to `DirectOuter` at a time; 256 KiB at most). CPU time of this process (`process_time`),
`--rounds` rounds, the two revisions alternating; the median and the spread of each.

Run:  .venv/bin/python -m bench.e2e_records [--baseline-rev e2a1c9a] [--rounds 7] [--chunk 262144 16384]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_facts, table, tree_facts
from ztm.e2e import record as current

REPO = Path(__file__).resolve().parents[1]
STEP = 65_515
READ = 256 * 1024
GIB = 1 << 30


def baseline_module(rev: str, tmp: Path) -> ModuleType:
    """`src/ztm/e2e/record.py` of `rev`, loaded as a module of its own (it imports the current `ztm.e2e.frames`)."""
    text = subprocess.run(["git", "show", f"{rev}:src/ztm/e2e/record.py"], cwd=REPO, capture_output=True, text=True,
                          check=True, timeout=30).stdout  # fmt: skip
    path = tmp / "record_base.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("record_base", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seal_stream(module: Any, data: bytes) -> tuple[float, bytes]:
    """CPU seconds to seal `data` read by read, and the sealed stream."""
    channel = module.Channel(b"a" * 32, b"b" * 32)
    view = memoryview(data)
    out = []
    started = time.process_time()
    for offset in range(0, len(data), READ):
        chunk = view[offset : offset + READ]
        if hasattr(channel, "seal_batch"):
            out.append(channel.seal_batch(chunk, STEP))
        else:
            out.append(b"".join(channel.seal(module.DATA, chunk[i : i + STEP]) for i in range(0, len(chunk), STEP)))
    took = time.process_time() - started
    return took, b"".join(bytes(x) for x in out)


def open_stream(module: Any, stream: bytes, chunk: int) -> float:
    channel = module.Channel(b"b" * 32, b"a" * 32)
    started = time.process_time()
    for offset in range(0, len(stream), chunk):
        channel.feed(stream[offset : offset + chunk])
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-rev", default="e2a1c9a", metavar="REV")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mib", type=int, default=16, help="MiB sealed and opened per round")
    parser.add_argument("--chunk", type=int, nargs="+", default=[READ, 16384], help="bytes fed to `feed` at a time")
    args = parser.parse_args(argv)
    print(machine_facts())
    print(tree_facts())
    with tempfile.TemporaryDirectory() as tmp:
        try:
            base = baseline_module(args.baseline_rev, Path(tmp))
        except subprocess.CalledProcessError as exc:
            parser.error(f"--baseline-rev {args.baseline_rev}: {exc.stderr.strip() or 'not a revision'}")
    data = os.urandom(args.mib << 20)
    scale = GIB / len(data)
    figures: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, module in (("current", current), ("baseline", base)):
            took, stream = seal_stream(module, data)
            figures.setdefault(("seal", name), []).append(took * scale)
            for chunk in args.chunk:
                figures.setdefault((f"open, {chunk} B reads", name), []).append(
                    open_stream(module, stream, chunk) * scale
                )
    rows = []
    for what in dict.fromkeys(w for w, _ in figures):
        cur, bas = figures[(what, "current")], figures[(what, "baseline")]
        ratios = [c / b for c, b in zip(cur, bas, strict=True) if b]
        rows.append([what, f"{statistics.median(cur):.3f} ({min(cur):.3f}-{max(cur):.3f})",
                     f"{statistics.median(bas):.3f} ({min(bas):.3f}-{max(bas):.3f})",
                     f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"])  # fmt: skip
    print(f"\nCPU-s per GiB, median of {args.rounds} rounds (min-max); baseline {args.baseline_rev}")
    print(table(["", "this tree", "baseline", "x baseline (per round)"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
