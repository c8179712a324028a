"""bench.baseline: the same-run baseline's order of paths, ratios over rounds and revision export."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
from bench.baseline import (
    BaselineError,
    RoundRatios,
    base_of,
    check_imports_from,
    export_revision,
    is_base,
    resolve_revision,
    round_order,
)
from bench.common import PYTHON, REPO, SRC, bench_env, src_digest

PATHS = ["raw", "stunnel4", "ztm", "ztm@base", "ztm-direct", "ztm-direct@base"]


def test_names() -> None:
    assert base_of("ztm") == "ztm@base"
    assert is_base("hub@base")
    assert not is_base("hub")


def test_round_order_alternates_each_pair() -> None:
    assert round_order(PATHS, 0) == PATHS
    assert round_order(PATHS, 2) == PATHS
    assert round_order(PATHS, 1) == ["raw", "stunnel4", "ztm@base", "ztm", "ztm-direct@base", "ztm-direct"]
    assert round_order(PATHS, 3) == round_order(PATHS, 1)
    # without a baseline nothing moves
    plain = ["raw", "stunnel4", "ztm", "ztm-direct"]
    assert round_order(plain, 1) == plain


def test_round_ratios_median_and_spread() -> None:
    rr = RoundRatios()
    assert rr.text() == "-"
    assert math.isnan(rr.median)
    for cur, base in ((110.0, 100.0), (90.0, 100.0), (100.0, 100.0), (5.0, 0.0)):
        rr.add(cur, base)
    assert rr.values == pytest.approx([1.1, 0.9, 1.0])  # a zero baseline is left out
    assert rr.median == pytest.approx(1.0)
    assert rr.spread == pytest.approx((0.9, 1.1))
    assert rr.text() == "1.00 (0.90-1.10, 3 rounds)"
    one = RoundRatios()
    one.add(2.0, 1.0)
    assert one.text() == "2.00 (2.00-2.00, 1 round)"


@pytest.mark.parametrize(
    ("ratios", "rose"),
    [
        ([0.95, 1.02, 1.01, 0.99, 1.03], False),  # noise around 1
        ([1.01, 1.04, 1.03, 1.03, 1.02], False),  # within the 5% allowance
        ([1.3, 1.2, 0.99], True),  # the median is over 1.05
        ([], False),
    ],
)
def test_rose(ratios: list[float], rose: bool) -> None:
    rr = RoundRatios()
    for r in ratios:
        rr.add(r, 1.0)
    assert rr.rose() is rose


def test_resolve_revision() -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    assert resolve_revision(REPO, "HEAD") == head.stdout.strip()
    for bad in ("no-such-rev-x", "-x", ""):
        with pytest.raises(BaselineError, match="--baseline-rev"):
            resolve_revision(REPO, bad)


def test_export_revision_writes_that_revisions_src(tmp_path: Path) -> None:
    commit = resolve_revision(REPO, "HEAD")
    src = export_revision(REPO, commit, tmp_path / "base")
    assert src == tmp_path / "base" / "src"
    assert (src / "ztm" / "__main__.py").is_file()
    # the same files as HEAD's src/ztm (the worktree's own src may hold uncommitted edits: compare with git)
    listed = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", commit, "src/ztm"], cwd=REPO, capture_output=True, text=True, check=True
    )
    want = sorted(line.removeprefix("src/") for line in listed.stdout.splitlines() if line.endswith(".py"))
    assert sorted(str(p.relative_to(src)) for p in (src / "ztm").rglob("*.py")) == want
    assert len(src_digest(src)) == 12
    # processes started with the export on PYTHONPATH run it, not the venv's editable install of this worktree
    check_imports_from(PYTHON, src, bench_env(tmp_path, src=src))
    with pytest.raises(BaselineError, match=r"would import ztm from .*, not from the export"):
        check_imports_from(PYTHON, src, bench_env(tmp_path, src=SRC))
