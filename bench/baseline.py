"""A same-run baseline: another git revision's `ztm` run beside the current one, and current/baseline ratios.

`export_revision` writes a revision's `src/` into a directory with `git archive` (read-only for the repository: no
worktree is added, nothing is checked out); the bench starts that revision's hub and agents with
`PYTHONPATH=<export>/src` and the same venv, next to the current ones. A measured path `P` of the current code has
the baseline path `P@base` (`base_of`). `round_order` interleaves them A, B in even rounds and B, A in odd ones, so a
drift of the machine during a round does not favour either side. `RoundRatios` keeps, per round, the ratio
current/baseline of one measure taken in that round, and reports the median and the spread (min-max).

Stdlib only, like `bench.common`.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BASE = "@base"
"""The suffix of the baseline's paths and processes (`ztm@base`, `hub@base`)."""


class BaselineError(Exception):
    """A revision that cannot be used as the baseline; the message says what is wrong and what to do."""


def base_of(path: str) -> str:
    """The baseline's name of a current path or process: `ztm` -> `ztm@base`."""
    return path + BASE


def is_base(path: str) -> bool:
    return path.endswith(BASE)


def round_order(paths: Sequence[str], round_index: int) -> list[str]:
    """The order in which to measure `paths` in round `round_index` (0-based): as given in even rounds; in odd rounds
    each baseline path that directly follows its current path goes first (A, B then B, A)."""
    out = list(paths)
    if round_index % 2:
        i = 0
        while i < len(out) - 1:
            if out[i + 1] == base_of(out[i]):
                out[i], out[i + 1] = out[i + 1], out[i]
                i += 2
            else:
                i += 1
    return out


@dataclass
class RoundRatios:
    """The ratio current/baseline of one measure, one value per round (rounds where the baseline is 0 are left out)."""

    values: list[float] = field(default_factory=list)

    def add(self, current: float, baseline: float) -> None:
        if baseline > 0:
            self.values.append(current / baseline)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def rose(self, allowance: float = 1.05) -> bool:
        """Did the measure rise beyond noise? The median of the rounds' ratios is over `allowance` (two same-code
        runs on the shared 2-core machine gave medians of 0.85 to 1.13 with 5 runs of 256 MiB: repeat a FAIL)."""
        return bool(self.values) and self.median > allowance

    @property
    def spread(self) -> tuple[float, float]:
        return (min(self.values), max(self.values)) if self.values else (float("nan"), float("nan"))

    def text(self) -> str:
        """`1.02 (0.97-1.08, 5 rounds)`, or `-` without values."""
        if not self.values:
            return "-"
        low, high = self.spread
        n = len(self.values)
        return f"{self.median:.2f} ({low:.2f}-{high:.2f}, {n} round{'s' if n != 1 else ''})"


def baseline_commit(parser: argparse.ArgumentParser, repo: Path, rev: str | None) -> str:
    """A bench's `--baseline-rev REV` as a full commit id ("" without the option); a bad REV is the parser's error."""
    if rev is None:
        return ""
    try:
        return resolve_revision(repo, rev)
    except BaselineError as exc:
        parser.error(str(exc))


def resolve_revision(repo: Path, rev: str) -> str:
    """The full commit id of `rev` in the repository at `repo`, or BaselineError."""
    if not rev or rev.startswith("-"):
        raise BaselineError(f"--baseline-rev {rev!r}: give a commit id, a tag or a branch name")
    cp = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if cp.returncode != 0 or not cp.stdout.strip():
        raise BaselineError(
            f"--baseline-rev {rev}: not a commit of the repository at {repo} (`git log --oneline` lists them)"
        )
    return cp.stdout.strip()


def export_revision(repo: Path, commit: str, dest: Path) -> Path:
    """Write `src/` of `commit` under `dest` (`git archive`, extracted with the tarfile "data" filter); returns
    `dest/src`, the directory to put on the baseline processes' PYTHONPATH."""
    cp = subprocess.run(["git", "archive", "--format=tar", commit, "src"], cwd=repo, capture_output=True, timeout=120)
    if cp.returncode != 0:
        detail = cp.stderr.decode(errors="replace").strip().splitlines()
        raise BaselineError(f"--baseline-rev {commit[:12]}: git archive failed: {detail[-1] if detail else '?'}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(cp.stdout), mode="r:") as tar:
        tar.extractall(dest, filter="data")
    src = dest / "src"
    if not (src / "ztm" / "__main__.py").is_file():
        raise BaselineError(f"--baseline-rev {commit[:12]}: that revision has no src/ztm/__main__.py to run")
    return src


def check_imports_from(python: str, src: Path, env: Mapping[str, str]) -> None:
    """Fail unless `python` with `env` imports `ztm` from `src`: the baseline's processes must not silently run the
    current code (an editable install or a PYTHONPATH that does not win)."""
    cp = subprocess.run(
        [python, "-c", "import ztm; print(ztm.__file__)"],
        env=dict(env),
        cwd=src.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    got = Path(cp.stdout.strip()).resolve() if cp.returncode == 0 and cp.stdout.strip() else None
    if got is None or not got.is_relative_to(src.resolve()):
        where = str(got) if got else f"nothing ({cp.stderr.strip().splitlines()[-1:] or '?'})"
        raise BaselineError(f"the baseline's processes would import ztm from {where}, not from the export {src}")
