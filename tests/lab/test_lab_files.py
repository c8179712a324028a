"""Mesh files in the seed's picture: hub in the data center, agents at home and at work behind NAT.

The agents cannot reach each other (only the hub), so every chunk travels over relayed app streams through the hub.
A file published at the workplace is downloaded at home byte-exact; a second user (bob, at home) is refused a file
he may not read, and downloads the one he may. Written against the CLI contract; see tests/support.py.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import pytest

from lab.netlab import Lab
from support import Agent, one_line_error, start_agent, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MESH = "my-mesh"
MiB = 1 << 20


def sees_online(agent: Agent, *names: str) -> bool:
    return set(names) <= agent.online_names()


def sources(agent: Agent, path: str) -> set[str]:
    return {s["name"] for s in agent.cli_json("describe", "file", path)["sources"] if s.get("online")}


def test_publish_at_work_download_at_home_and_acls_across_nat(lab: Lab, tmp_path: Path) -> None:
    _hub, agents = lab.start_mesh(tmp_path, MESH, {"home": "home", "workplace": "workplace"})
    home, work = agents["home"], agents["workplace"]
    for agent in (home, work):
        wait_until(functools.partial(sees_online, agent, "home", "workplace"), 20,
                   f"{agent.name} to list home and workplace online")  # fmt: skip
    lab.serve("workplace", 9000)  # something home would reach at the workplace, were it not behind NAT
    lab.assert_unreachable("home", "workplace", 9000)

    # Published at the workplace (root's private space and a shared file bob may not read), downloaded at home.
    data = os.urandom(3 * MiB + 4321)
    private, shared, blocked = "/users/root/lab/report.bin", "/shared/root/lab/notes.bin", "/shared/root/lab/no-bob.bin"
    uploads = {private: data, shared: os.urandom(MiB + 1), blocked: os.urandom(2000)}
    for path, content in uploads.items():
        local = tmp_path / f"up-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
        local.write_bytes(content)
        extra = ("--block", "bob") if path == blocked else ()
        view = work.cli_json("publish", "file", path, "-i", local, *extra)
        assert view["hash"] == hashlib.sha256(content).hexdigest(), view

    out = tmp_path / "home.bin"
    cp = home.cli("download", "file", private, "-o", out, timeout=120)
    assert out.read_bytes() == data, "byte-exact through the hub's relay"
    assert "4 fetched (workplace: 4)" in cp.stdout, cp.stdout
    wait_until(lambda: sources(work, private) == {"home", "workplace"}, 10, "home to become a source")

    # bob, a second user on another agent at home: the ACLs hold across the NAT.
    bob = start_agent(tmp_path, "bob", netns=lab.ns("home"), port=7778)
    identity = tmp_path / "bob.identity.pem"
    identity.write_text(bob.cli("identity").stdout)
    permit = tmp_path / "bob.json"
    work.cli("invite", "bob", "--identity", str(identity), "--permit", str(permit))
    bob.join(MESH, "bob-laptop", permit)
    wait_until(lambda: sees_online(bob, "home", "workplace", "bob-laptop"), 20, "bob to see the mesh")

    assert [f["path"] for f in bob.cli_json("get", "file")] == [shared]
    for path in (private, blocked):
        line = one_line_error(bob.cli("download", "file", path, "-o", tmp_path / "bob-x", check=False))
        assert f"no file {path}" in line, line
    bob_out = tmp_path / "bob.bin"
    bob.cli("download", "file", shared, "-o", bob_out, timeout=120)
    assert bob_out.read_bytes() == uploads[shared]

    # Root takes it back: bob is refused (and his copy is no source any more).
    work.cli("acl", "file", shared, "--block", "bob")
    line = one_line_error(bob.cli("download", "file", shared, "-o", tmp_path / "bob-again", check=False))
    assert f"no file {shared}" in line, line
    wait_until(lambda: sources(home, shared) == {"workplace"}, 10, "bob's copy to stop being a source")
