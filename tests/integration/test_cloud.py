"""The cloud app end to end through `ztm cloud ...`: two endpoints of the same user (a laptop and a desktop) share a
private drive under /users/root/; one-off upload and download, and mirrors in both directions (new and changed
files on either side arrive on the other), plus a one-way mirror that never uploads. Real hub and agent processes;
every wait polls with a deadline.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import Agent, join_all, one_line_error, wait_until

MESH = "m"
Make = Callable[..., Any]


def drive(agent: Agent, local: Path, interval: str = "1") -> None:
    view = agent.cli_json("cloud", "config", "--local-dir", local, "--interval", interval)
    assert view["local_dir"] == str(local.resolve()) and view["root"] == "/users/root/", view


def mesh_files(agent: Agent) -> dict[str, str]:
    return {f["path"]: f["hash"] for f in agent.cli_json("get", "file", "/users/root/")}


def same(path: Path, data: bytes) -> bool:
    return path.is_file() and path.read_bytes() == data


def test_upload_ls_download(make_mesh: Make, tmp_path: Path) -> None:
    hub, agents = make_mesh(("laptop", "desktop"))
    laptop, desktop = agents["laptop"], agents["desktop"]
    join_all(MESH, [(laptop, "laptop"), (desktop, "desktop")], hub.permit)
    line = one_line_error(laptop.cli("cloud", "upload", "docs", check=False))
    assert "ztm cloud config --local-dir" in line, line

    a_dir, b_dir = tmp_path / "laptop-drive", tmp_path / "desktop-drive"
    drive(laptop, a_dir)
    drive(desktop, b_dir)
    report, notes = os.urandom(2 * (1 << 20) + 7), b"remember the milk\n"
    (a_dir / "docs" / "sub").mkdir(parents=True)
    (a_dir / "docs" / "report.bin").write_bytes(report)
    (a_dir / "docs" / "sub" / "notes.txt").write_bytes(notes)

    cp = laptop.cli("cloud", "upload", "docs")
    assert "uploaded /users/root/docs/report.bin" in cp.stdout and "docs/sub/notes.txt" in cp.stdout, cp.stdout
    listed = {f["name"]: f for f in desktop.cli_json("cloud", "ls")}
    assert set(listed) == {"docs/report.bin", "docs/sub/notes.txt"}
    assert listed["docs/report.bin"]["size"] == len(report) and listed["docs/report.bin"]["local_file"] is False
    assert "docs/sub/notes.txt" in desktop.cli("cloud", "ls", "docs/sub").stdout

    cp = desktop.cli("cloud", "download", "docs")
    assert "downloaded /users/root/docs/report.bin" in cp.stdout, cp.stdout
    assert same(b_dir / "docs" / "report.bin", report) and same(b_dir / "docs" / "sub" / "notes.txt", notes)
    listed = {f["name"]: f for f in desktop.cli_json("cloud", "ls")}
    assert all(f["local_file"] for f in listed.values()), listed
    line = one_line_error(desktop.cli("cloud", "download", "nothing/here", check=False))
    assert "no file /users/root/nothing/here" in line, line


def test_mirror_both_directions(make_mesh: Make, tmp_path: Path) -> None:
    hub, agents = make_mesh(("laptop", "desktop"))
    laptop, desktop = agents["laptop"], agents["desktop"]
    join_all(MESH, [(laptop, "laptop"), (desktop, "desktop")], hub.permit)
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    drive(laptop, a_dir)
    drive(desktop, b_dir)
    (a_dir / "sync").mkdir()
    (a_dir / "sync" / "old.txt").write_bytes(b"there before the mirror")

    assert "mirroring sync (download and upload)" in laptop.cli("cloud", "mirror", "sync", "--download", "on",
                                                                 "--upload", "on").stdout  # fmt: skip
    desktop.cli("cloud", "mirror", "sync", "--download", "on", "--upload", "on")
    wait_until(lambda: same(b_dir / "sync" / "old.txt", b"there before the mirror"), 30, "old.txt on the desktop")

    # A new file on the desktop reaches the laptop.
    fresh = os.urandom(1 << 20 | 99)
    (b_dir / "sync" / "deep").mkdir()
    (b_dir / "sync" / "deep" / "new.bin").write_bytes(fresh)
    wait_until(lambda: same(a_dir / "sync" / "deep" / "new.bin", fresh), 30, "new.bin on the laptop")

    # A change on the laptop reaches the desktop.
    (a_dir / "sync" / "old.txt").write_bytes(b"changed on the laptop")
    wait_until(lambda: same(b_dir / "sync" / "old.txt", b"changed on the laptop"), 30, "the change on the desktop")
    files = mesh_files(laptop)
    assert set(files) == {"/users/root/sync/old.txt", "/users/root/sync/deep/new.bin"}, files

    status = laptop.cli_json("cloud", "status")
    [mirror] = status["mirrors"]
    assert mirror["path"] == "sync" and mirror["last_scan"] and mirror["last_error"] is None, mirror
    assert mirror["uploaded"] >= 2 and mirror["downloaded"] >= 1, mirror

    # A download-only mirror brings mesh files in and never publishes local ones.
    desktop.cli("cloud", "mirror", "sync", "--download", "on", "--upload", "off")
    (b_dir / "sync" / "private-draft.txt").write_bytes(b"not for the mesh")
    (a_dir / "sync" / "from-laptop.txt").write_bytes(b"hello desktop")
    wait_until(lambda: same(b_dir / "sync" / "from-laptop.txt", b"hello desktop"), 30, "from-laptop.txt on desktop")

    def last_scan() -> str:
        return str(desktop.cli_json("cloud", "status")["mirrors"][0]["last_scan"])

    seen = last_scan()  # a whole scan after the draft was written: it had its chance to be published
    wait_until(lambda: last_scan() != seen, 15, "another scan of the desktop's mirror")
    assert "/users/root/sync/private-draft.txt" not in mesh_files(desktop)
    assert "stopped mirroring sync" in desktop.cli("cloud", "mirror", "sync", "--download", "off").stdout
    assert desktop.cli_json("cloud", "status")["mirrors"] == []
