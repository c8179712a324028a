"""Fixtures of the reliability suite: `figures` records measured numbers (recovery times, CPU, RSS) so that a run
prints them in its terminal summary (and writes them as JSON to `$ZTM_RELIABILITY_FIGURES` when that is set);
RELIABILITY.md quotes them with the command that produced them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reliability.traffic import Record

_FIGURES: list[dict[str, object]] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Record:
    """`figures(name, value, unit)`: remember one measurement of this test."""

    def record(name: str, value: float, unit: str) -> None:
        _FIGURES.append({"test": request.node.nodeid, "name": name, "value": round(value, 3), "unit": unit})

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for f in _FIGURES:
        test = str(f["test"]).rpartition("::")[2]
        terminalreporter.write_line(f"{test}: {f['name']} = {f['value']} {f['unit']}")
    out = os.environ.get("ZTM_RELIABILITY_FIGURES")
    if out:
        Path(out).write_text(json.dumps(_FIGURES, indent=1) + "\n")
