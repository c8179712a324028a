"""The hub's disk fills up: its data directory is a small tmpfs (mounted here as root) that a filler file fills to the
last block. The hub must keep serving what needs no disk (listing, pings, tunnels), refuse writes (labels, joins)
with a clear one-line error instead of an internal error, change nothing it did not save, and take writes again as
soon as space returns, with nothing acknowledged lost across a restart.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reliability.traffic import Record, time_until
from support import Agent, by_name, join_all, one_line_error, restart_hub, start_hub_and_agents

pytestmark = pytest.mark.slow

MESH = "m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted on tmp_path/hubdata, unmounted at the end."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    mount_point = tmp_path / "hubdata"
    mount_point.mkdir()
    cp = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount_point)],
                        capture_output=True, text=True, check=False)  # fmt: skip
    if cp.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {cp.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the file system is full to the last byte it will take; returns its path."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12, 512, 1):
            block = b"\0" * size
            while True:
                try:
                    f.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return filler


def labels(agent: Agent, name: str) -> list[str]:
    return list(by_name(agent.endpoints())[name]["labels"])


def test_a_full_disk_refuses_writes_clearly_keeps_serving_and_recovers(
    tmp_path: Path, small_disk: Path, figures: Record
) -> None:
    hub, agents = start_hub_and_agents(tmp_path, ["a", "b", "c"], hub_extra=["--data", str(small_disk)])  # last wins
    a, b, c = agents["a"], agents["b"], agents["c"]
    join_all(MESH, [(a, "a"), (b, "b")], hub.permit)
    a.cli("label", "--add", "saved-before")

    filler = fill(small_disk)
    try:
        # Writes are refused with a clear one-line error, and nothing changes.
        cp = a.cli("label", "--add", "while-full", check=False)
        line = one_line_error(cp)
        assert "disk" in line.lower() or "space" in line.lower(), f"unclear error for a full disk: {line}"
        assert "internal" not in line.lower(), line
        assert labels(b, "a") == ["saved-before"], "a refused label change is visible anyway"
        cp = c.cli("join", MESH, "--as", "c", "--permit", hub.permit, check=False)
        line = one_line_error(cp)
        assert "disk" in line.lower() or "space" in line.lower(), f"unclear error for a join on a full disk: {line}"
        assert c.cli_json("get", "mesh") == []
        # What needs no disk keeps working: listing, pings through the hub.
        assert {e["name"] for e in a.endpoints() if e["online"]} == {"a", "b"}
        a.cli("ping", "ep", "b", "--count", "2")
        b.cli("ping", "ep", "a", "--count", "1")
        hub.proc.assert_alive()
    finally:
        filler.unlink()
    freed = time.monotonic()

    attempts: list[str] = []

    def writes_again() -> bool:
        cp = a.cli("label", "--add", "saved-after", check=False)
        attempts.append(cp.stderr.strip())
        return cp.returncode == 0

    recovered = time_until(writes_again, 30, "the hub to take writes again once space returned", since=freed)
    # RELIABILITY.md: the first write after space returned is accepted (0.17 s: one CLI call); the time is mostly the
    # CLI's start-up, so the attempt count is what holds that figure on a loaded machine.
    assert len(attempts) == 1, f"writes were refused after space returned: {attempts[:-1]}"
    c.join(MESH, "c", hub.permit)
    figures("hub disk full: first write accepted after space returned", recovered, "s")

    restart_hub(hub)
    time_until(lambda: {"a", "b", "c"} <= {e["name"] for e in a.endpoints() if e["online"]}, 45, "all back online")
    assert labels(b, "a") == ["saved-before", "saved-after"]
    log = (small_disk / "hub.log").read_text(errors="replace")
    assert "Traceback" not in log, "the hub logged a traceback for a full disk"
    assert "handler failed" not in hub.proc.output(), "a request met an internal error on the full disk"
