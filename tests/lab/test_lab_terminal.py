"""A terminal across the seed's picture: from home, a command and an interactive shell run at the workplace, both
behind NAT, through the hub in the data center (neither can reach the other directly; see test_netlab.py)."""

from __future__ import annotations

from pathlib import Path

import pexpect
import pytest

from lab.netlab import Lab
from support import ZTM, in_netns, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MESH = "my-mesh"


def test_shell_and_command_at_the_workplace_from_home(lab: Lab, tmp_path: Path) -> None:
    _hub, agents = lab.start_mesh(tmp_path, MESH, {"home": "home", "workplace": "workplace"})
    home, work = agents["home"], agents["workplace"]
    work.cli("terminal", "enable")
    wait_until(lambda: "workplace" in home.online_names(), 30, "home to see the workplace online")

    # The command runs in the workplace's namespace: it sees the workplace's address, not home's.
    cp = home.cli("terminal", "exec", "workplace", "--", "ip -4 -o addr show; exit 4", check=False)
    assert cp.returncode == 4, cp
    assert f" {lab.addr('workplace')}/" in cp.stdout and f" {lab.addr('home')}/" not in cp.stdout, cp.stdout

    argv = in_netns([*ZTM, "--agent", home.api_address, "terminal", "open", "workplace"], lab.ns("home"))
    child = pexpect.spawn(
        argv[0], argv[1:], env={**home.env, "TERM": "xterm"}, encoding="utf-8", timeout=30, dimensions=(30, 100)
    )
    try:
        child.sendline("stty size; echo at-$((6*7))")
        child.expect("at-42")
        assert "30 100" in str(child.before)
        child.sendline("exit 3")
        child.expect(pexpect.EOF)
        child.wait()
        assert child.exitstatus == 3
    finally:
        child.close(force=True)
    lines = work.cli_json("log", "agent")["lines"]
    assert any("terminal session" in line and "opened by user root from endpoint home" in line for line in lines)
