"""Fixtures of the GUI tests: Debian's headless chromium driven by Playwright, and where screenshots go.

The browser is `/usr/bin/chromium` (`scripts/setup.sh` installs it as root), never a downloaded one; it starts with a
new empty profile and no background networking, so it only ever talks to the agents of the test on 127.0.0.1.
Screenshots go to `$ZTM_ARTIFACTS/gui/` (default `test-artifacts/gui/` in the repository, git-ignored).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import REPO

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def artifacts_dir() -> Path:
    root = Path(os.environ.get("ZTM_ARTIFACTS") or REPO / "test-artifacts")
    path = root / "gui"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def artifacts() -> Path:
    return artifacts_dir()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A persistent chromium context on a new empty user-data-dir (one per test module)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/setup.sh as root (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[test]'")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1360, "height": 860},
            accept_downloads=True,
        )
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)
