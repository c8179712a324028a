"""The terminal app end to end: real hub and agent processes on 127.0.0.1, sessions opened with the `ztm terminal`
command line (interactive ones driven through a pseudo-terminal with pexpect) and with a WebSocket client on the
agent's local API (as a browser terminal would).

Covered: exec with stdout and stderr kept apart and exit statuses (0, 3, killed by a signal), stdin piped to exec
(1 MiB, byte-exact), the command's quoting rules, sessions on once the target's owner enabled them (and the
switch kept across a restart), the owner admitted and another user refused until added (and
refused again once removed), configuration that survives a restart, interactive shells (commands, resize seen by
`stty size`, Ctrl-C interrupting a remote `sleep` without ending the session, Ctrl-D and `exit 7` ending it with
that status, the local terminal restored), processes killed when the session's client dies or the agent stops, each
session logged on the target, and the WebSocket contract (open, channel bytes, exit, errors). Every wait polls with a
deadline (tests/support.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pytest

from support import (
    ZTM,
    Agent,
    Hub,
    Proc,
    invite,
    join_all,
    one_line_error,
    restart_agent,
    run,
    start_agent,
    start_hub_and_agents,
    wait_until,
)

MESH = "m"
TIMEOUT = 30.0


@dataclass
class World:
    hub: Hub
    home: Agent
    """root's endpoint `home`: opens sessions."""
    office: Agent
    """root's endpoint `office`: the target."""
    bob: Agent
    """bob's endpoint `bob-laptop`."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("terminal")
    procs: list[Proc] = []
    try:
        hub, agents = start_hub_and_agents(tmp, ("home", "office", "bob"))
        procs += [hub.proc, *(agent.proc for agent in agents.values())]
        home, office, bob = agents["home"], agents["office"], agents["bob"]
        join_all(MESH, [(home, "home"), (office, "office")], hub.permit)
        bob.join(MESH, "bob-laptop", invite(home, bob, "bob", tmp / "bob.json"))
        for agent in (home, bob):
            wait_until(lambda a=agent: "office" in a.online_names(), TIMEOUT, f"{agent.name} to see office online")
        office.cli("terminal", "config", "--set-shell", "/bin/sh")
        office.cli("terminal", "enable")  # off by default (tests/security/test_endpoint_guards.py)
        yield World(hub, home, office, bob)
    finally:
        for proc in reversed(procs):
            proc.stop()


def terminal_log(agent: Agent) -> list[str]:
    lines = agent.cli_json("log", "agent", "--lines", "2000")
    assert isinstance(lines, dict), lines
    return [line for line in lines["lines"] if "ztm.terminal" in line]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


# ---------------------------------------------------------------------------------------------------------- exec


def test_exec_streams_stdout_and_stderr_apart_and_returns_the_exit_status(world: World) -> None:
    home = world.home
    cp = home.cli("terminal", "exec", "office", "--", "echo out; echo err >&2; echo more", check=False)
    assert (cp.returncode, cp.stdout, cp.stderr) == (0, "out\nmore\n", "err\n")

    cp = home.cli("terminal", "exec", "office", "--", "echo partial; exit 3", check=False)
    assert (cp.returncode, cp.stdout, cp.stderr) == (3, "partial\n", "")

    cp = home.cli("terminal", "exec", "office", "--", "kill -9 $$", check=False)
    assert (cp.returncode, cp.stdout, cp.stderr) == (128 + 9, "", "")
    cp = home.cli("terminal", "exec", "office", "--", "kill -TERM $$", check=False)
    assert cp.returncode == 128 + 15

    # One word goes to the shell as it is (a pipeline there); several words are quoted one by one.
    cp = home.cli("terminal", "exec", "office", "--", "echo abc | tr b x")
    assert cp.stdout == "axc\n"
    cp = home.cli("terminal", "exec", "office", "--", "printf", "[%s]\\n", "a b", "$HOME", "it's")
    assert cp.stdout == "[a b]\n[$HOME]\n[it's]\n"


def test_exec_carries_stdin_byte_exact(world: World) -> None:
    payload = "".join(f"line {i} {hashlib.sha256(str(i).encode()).hexdigest()}\n" for i in range(15_000))
    assert len(payload) > 1 << 20
    cp = world.home.cli("terminal", "exec", "office", "--", "sha256sum", input=payload, timeout=60)
    assert cp.stdout.split()[0] == hashlib.sha256(payload.encode()).hexdigest()
    # the other way: a command's large output arrives whole
    cp = world.home.cli("terminal", "exec", "office", "--", "cat", input=payload, timeout=60)
    assert cp.stdout == payload


def test_exec_output_waits_for_a_slow_reader(world: World) -> None:
    """The command exits long before its last output is read: all of it still arrives."""
    ztm = " ".join([*ZTM, "--agent", world.home.api_address])
    script = f"{ztm} terminal exec office -- 'head -c 3000000 /dev/zero | tr \"\\0\" x; exit 6'"
    cp = run(["/bin/sh", "-c", f"{{ {script}; echo status=$? >&2; }} | {{ sleep 1; wc -c; }}"], env=world.home.env)
    assert cp.stdout.strip() == "3000000"
    assert "status=6" in cp.stderr


def test_exec_is_logged_on_the_target(world: World) -> None:
    world.home.cli("terminal", "exec", "office", "--", "echo logged-marker-1; exit 5", check=False)
    lines = terminal_log(world.office)
    opened = [line for line in lines if "logged-marker-1" in line and "opened by user root from endpoint home" in line]
    assert opened, lines
    number = re.search(r"terminal session (\d+) opened", opened[-1])
    assert number is not None
    ended = f"terminal session {number.group(1)} (user root from endpoint home) ended after"
    assert any(ended in line and line.endswith("exit status 5") for line in lines), lines
    history = world.office.cli_json("terminal", "config")["history"]
    assert any(h["id"] == int(number.group(1)) and h["result"] == "exit status 5" for h in history), history


def test_bad_command_lines_fail_at_once(world: World) -> None:
    home = world.home
    for args, wanted in (
        (["exec", "office"], "no command given"),
        (["exec", "office", "ls", "-la"], "unrecognized arguments: -la"),
        (["exec", "bad name!", "--", "ls"], "invalid endpoint"),
        (["config", "--add-user", "Bob"], "invalid user"),
        (["config", "--set-shell", "'unbalanced"], "invalid shell"),
        (["open"], "required"),
    ):
        cp = home.cli("terminal", *args, check=False)
        assert cp.returncode == 2, (args, cp)
        assert wanted in one_line_error(cp), (args, cp.stderr)
    cp = home.cli("terminal", "exec", "no-such-ep", "--", "true", check=False)
    assert cp.returncode == 1 and "no-such-ep" in one_line_error(cp), cp
    cp = home.cli("terminal", "exec", "home", "--", "true", check=False)
    assert cp.returncode == 1 and "home is this endpoint" in one_line_error(cp), cp


# ---------------------------------------------------------------------------------------------------- who may


def test_only_the_owner_and_listed_users_get_in(world: World) -> None:
    bob, office = world.bob, world.office
    cp = bob.cli("terminal", "exec", "office", "--", "echo should-not-run", check=False)
    assert cp.returncode == 1 and cp.stdout == "", cp
    message = one_line_error(cp)
    assert "user 'bob' may not open a terminal on endpoint 'office'" in message, message
    assert "--add-user" in message
    wait_until(
        lambda: any("refused for user bob from endpoint bob-laptop" in line for line in terminal_log(office)),
        TIMEOUT,
        "the refusal in office's log",
    )
    assert not any("should-not-run" in line and "opened" in line for line in terminal_log(office))

    try:
        view = office.cli_json("terminal", "config", "--add-user", "bob")
        assert view["users"] == ["bob"]
        cp = bob.cli("terminal", "exec", "office", "--", "echo $ZTM_TERMINAL_USER from $ZTM_TERMINAL_FROM")
        assert cp.stdout == "bob from bob-laptop\n"
    finally:
        office.cli("terminal", "config", "--del-user", "bob")
    cp = bob.cli("terminal", "exec", "office", "--", "true", check=False)
    assert cp.returncode == 1 and "may not open a terminal" in one_line_error(cp)

    # the mesh's administrator (root) is not the owner of bob's endpoint (where bob turned sessions on)
    world.bob.cli("terminal", "enable")
    cp = world.home.cli("terminal", "exec", "bob-laptop", "--", "true", check=False)
    assert cp.returncode == 1 and "user 'root' may not open a terminal" in one_line_error(cp)


def test_configuration_errors_change_nothing(world: World) -> None:
    office = world.office
    before = office.cli_json("terminal", "config")
    cp = office.cli("terminal", "config", "--set-shell", "/no/such/shell", "--add-user", "carol", check=False)
    assert cp.returncode == 1 and "is not an executable on this endpoint" in one_line_error(cp)
    cp = office.cli("terminal", "config", "--del-user", "nobody", check=False)
    assert cp.returncode == 1 and "'nobody' is not in this endpoint's terminal users" in one_line_error(cp)
    after = office.cli_json("terminal", "config")
    assert (after["shell"], after["users"]) == (before["shell"], before["users"])


def test_configuration_survives_a_restart_and_a_stop_kills_sessions(world: World, tmp_path: Path) -> None:
    """On an endpoint of its own (the processes a test starts are stopped when it ends, restarted ones too)."""
    spare = start_agent(tmp_path, "spare")
    spare.join(MESH, "spare", world.hub.permit)
    wait_until(lambda: "spare" in world.home.online_names(), TIMEOUT, "spare online")
    spare.cli("terminal", "config", "--add-user", "carol", "dave", "--set-shell", "/bin/bash --norc")
    spare.cli("terminal", "enable")
    running = subprocess.Popen(
        [*ZTM, "--agent", world.home.api_address, "terminal", "exec", "spare", "--", "echo $$; exec sleep 600"],
        env=world.home.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert running.stdout is not None
        pid = int(running.stdout.readline())
        assert alive(pid)
        restart_agent(spare)
        wait_until(lambda: not alive(pid), TIMEOUT, f"the session's sleep (pid {pid}) to be killed by the stop")
        assert running.wait(TIMEOUT) == 1  # the CLI learns that the session broke
    finally:
        running.kill()
        running.communicate(timeout=TIMEOUT)
    view = spare.cli_json("terminal", "config")
    assert view["enabled"] is True and view["users"] == ["carol", "dave"]
    assert view["shell"] == "/bin/bash --norc"
    assert view["effective_shell"].endswith("bash --norc")
    wait_until(lambda: "spare" in world.home.online_names(), TIMEOUT, "spare back online")
    cp = world.home.cli("terminal", "exec", "spare", "--", "echo $0")
    assert cp.stdout.strip().endswith("bash")


def test_a_dead_client_takes_its_processes_along(world: World) -> None:
    running = subprocess.Popen(
        [*ZTM, "--agent", world.home.api_address, "terminal", "exec", "office", "--", "echo $$; sleep 600 & wait"],
        env=world.home.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert running.stdout is not None
    shell = int(running.stdout.readline())
    children = wait_until(lambda: _children(shell), TIMEOUT, "the background sleep to start")
    running.kill()
    running.communicate(timeout=TIMEOUT)
    for pid in (shell, *children):
        wait_until(lambda p=pid: not alive(p), TIMEOUT, f"process {pid} of the session to be killed")
    wait_until(
        lambda: any("hung up: the opener closed the session" in line for line in terminal_log(world.office)),
        TIMEOUT,
        "the hang-up in office's log",
    )


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


# ------------------------------------------------------------------------------------------------- interactive


def spawn_open(world: World, *, rows: int = 24, cols: int = 80) -> pexpect.spawn[str]:
    env = {**world.home.env, "TERM": "xterm"}
    return pexpect.spawn(
        ZTM[0],
        [*ZTM[1:], "--agent", world.home.api_address, "terminal", "open", "office"],
        env=env,
        cwd=str(world.home.dir),
        dimensions=(rows, cols),
        encoding="utf-8",
        codec_errors="replace",
        timeout=TIMEOUT,
    )


def run_line(child: pexpect.spawn[str], command: str, marker: str) -> str:
    """Type `command; echo MARKER-$((6*7))` and return what came before the computed marker (so the echo of the
    typed line itself never matches)."""
    child.sendline(f"{command}; echo {marker}-$((6*7))")
    child.expect(f"{marker}-42")
    return str(child.before)


def test_interactive_shell(world: World) -> None:
    child = spawn_open(world, rows=24, cols=80)
    try:
        assert "24 80" in run_line(child, "stty size", "size1")
        assert "tty" in run_line(child, "tty", "tty1")  # a real terminal on the target: /dev/pts/N

        child.setwinsize(33, 101)  # SIGWINCH to the CLI, which sends a resize
        wait_until(lambda: "33 101" in run_line(child, "stty size", "size2"), TIMEOUT, "the remote PTY to be 33 x 101")

        child.sendline("sleep 613")
        wait_until(lambda: _sleeping("613"), TIMEOUT, "the remote sleep to start")
        child.sendcontrol("c")
        after = run_line(child, "echo status=$?", "after")
        assert "status=130" in after, after  # sleep was interrupted; the shell is still there
        assert child.isalive()

        child.sendline("exit 7")
        child.expect(pexpect.EOF)
        child.wait()
        assert child.exitstatus == 7
    finally:
        child.close(force=True)
    lines = terminal_log(world.office)
    opened = [
        re.search(r"terminal session (\d+) opened by user root from endpoint home \(.*\): shell /bin/sh$", ln)
        for ln in lines
    ]
    numbers = [m.group(1) for m in opened if m]
    assert numbers, lines
    assert any(
        f"session {n} (user root from endpoint home) ended" in ln and ln.endswith("exit status 7")
        for n in numbers
        for ln in lines
    ), lines


def _sleeping(seconds: str) -> list[int]:
    """Pids of `sleep SECONDS` processes (the agents run on this machine)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")[:2]
            except OSError:
                continue
            if argv == [b"sleep", seconds.encode()]:
                found.append(int(entry.name))
    return found


def test_ctrl_d_ends_the_shell_and_the_local_terminal_is_restored(world: World) -> None:
    """The CLI runs inside a local shell on a PTY: after the remote session, that shell's terminal settings are
    what they were (echo and canonical mode back), and `$?` is the remote status."""
    env = {**world.home.env, "TERM": "xterm", "PS1": "local$ "}
    ztm = " ".join([*ZTM, "--agent", world.home.api_address])
    local = pexpect.spawn("/bin/sh", env=env, encoding="utf-8", timeout=TIMEOUT, dimensions=(24, 80))
    try:
        # the last word: the local shell's first prompt may be printed on the same line (the settings have no spaces)
        before = run_line(local, "stty -g", "settings1").split()[-1]
        local.sendline(f"{ztm} terminal open office")
        assert "24 80" in run_line(local, "stty size", "remote")
        local.sendcontrol("d")
        status = run_line(local, "echo status=$?", "back")
        assert "status=0" in status, status
        after = run_line(local, "stty -g", "settings2").split()[-1]
        assert after == before

        local.sendline(f"{ztm} terminal open office")
        run_line(local, "true", "remote2")
        local.sendline("exit 7")
        assert "status=7" in run_line(local, "echo status=$?", "back2")
        assert run_line(local, "stty -g", "settings3").split()[-1] == before
    finally:
        local.close(force=True)


# --------------------------------------------------------------------------------------------- WebSocket API


def ws_session(agent: Agent, ep: str, first: Any, stdin: bytes = b"") -> list[tuple[str, Any]]:
    """One session over the local API's WebSocket: send `first` (a dict as JSON text, or raw), then `stdin` and an
    eof; collect what comes back until the agent closes."""
    import aiohttp

    async def go() -> list[tuple[str, Any]]:
        url = f"http://{agent.api_address}/api/meshes/{MESH}/apps/terminal/endpoints/{ep}/session"
        got: list[tuple[str, Any]] = []
        headers = {"Authorization": f"Bearer {agent.token}"}
        async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
            if isinstance(first, dict):
                await ws.send_str(json.dumps(first))
            elif isinstance(first, bytes):
                await ws.send_bytes(first)
            else:
                await ws.send_str(first)
            if stdin:
                await ws.send_bytes(stdin)
            if isinstance(first, dict) and first.get("command"):
                await ws.send_str('{"type": "eof"}')
            async with asyncio.timeout(TIMEOUT):
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        got.append(("text", json.loads(msg.data)))
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        got.append(("binary", msg.data))
            got.append(("close", ws.close_code))
        return got

    return asyncio.run(go())


def test_websocket_contract(world: World) -> None:
    home = world.home
    got = ws_session(home, "office", {"type": "open", "mode": "exec", "command": ["cat; echo e >&2; exit 4"]}, b"hi")
    texts = [m for kind, m in got if kind == "text"]
    assert texts[0]["type"] == "started" and texts[0]["pty"] is False and texts[0]["command"][-2] == "-c"
    assert texts[-1] == {"type": "exit", "code": 4, "signal": None}
    output = b"".join(m[1:] for kind, m in got if kind == "binary" and m[:1] == b"\x01")
    errors = b"".join(m[1:] for kind, m in got if kind == "binary" and m[:1] == b"\x02")
    assert (output, errors) == (b"hi", b"e\n")
    assert got[-1] == ("close", 1000)

    got = ws_session(home, "office", {"type": "open", "mode": "shell", "cols": 90, "rows": 20}, b"stty size; exit\r")
    shown = b"".join(m[1:] for kind, m in got if kind == "binary")
    assert b"20 90" in shown
    assert [m for kind, m in got if kind == "text"][-1] == {"type": "exit", "code": 0, "signal": None}

    for first, wanted in (
        ({"type": "resize", "cols": 1, "rows": 1}, "the first message must be"),
        ({"type": "open", "mode": "exec"}, "exec needs a command"),
        ({"type": "open", "mode": "shell", "cols": 0}, "cols must be"),
        ("not json", "not valid JSON"),
        (b"\x00binary", "the first message must be a text frame"),
    ):
        got = ws_session(home, "office", first)
        assert got[0][0] == "text" and got[0][1]["type"] == "error", (first, got)
        assert wanted in got[0][1]["error"], (first, got)
        assert got[-1] == ("close", 4000)

    got = ws_session(world.bob, "office", {"type": "open", "mode": "exec", "command": ["true"]})
    assert got[0] == ("text", got[0][1]) and got[0][1]["code"] == "forbidden", got

    status, body = home.api("GET", f"/api/meshes/{MESH}/apps/terminal/endpoints/office/session")
    assert status == 400 and "WebSocket" in body["error"], body
