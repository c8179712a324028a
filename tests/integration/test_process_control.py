"""Process control: `ztm start|stop hub|agent` as background processes, unattended `ztm run agent --join`, and the
commands that need no agent (`version`, `help`, `completion`).

`ZTM_NO_SYSTEMD=1` is set for every `ztm start/stop` here, so that running the suite as root on a machine with
systemd never installs units; the background-process path is the one under test (it is what containers and this CI
get anyway).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import (
    ZTM,
    Agent,
    base_env,
    free_port,
    restart_agent,
    restart_hub,
    run,
    start_agent,
    start_hub,
    tcp_accepts,
    wait_until,
)
from ztm.version import __version__

MESH = "pc-mesh"


# ------------------------------------------------------------------------------------------------------- helpers


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class Background:
    """Runs `ztm start/stop` with a private HOME, and kills whatever those started if a test fails half-way (as a
    context manager: on the way out, `cleanup`)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        self.home.mkdir(exist_ok=True)
        self.env = base_env({"ZTM_NO_SYSTEMD": "1"}, home=self.home)
        self.pid_files: list[Path] = []

    def ztm(self, *args: str | Path, timeout: float = 40.0) -> subprocess.CompletedProcess[str]:
        cp = run([*ZTM, *args], env=self.env, cwd=self.tmp, check=False, timeout=timeout)
        assert "Traceback" not in cp.stdout + cp.stderr, f"ztm {args}: a traceback reached the user:\n{cp.stderr}"
        return cp

    def ok(self, *args: str | Path, timeout: float = 40.0) -> str:
        cp = self.ztm(*args, timeout=timeout)
        assert cp.returncode == 0, f"ztm {' '.join(map(str, args))} failed ({cp.returncode}):\n{cp.stdout}{cp.stderr}"
        return cp.stdout

    def watch(self, pid_file: Path) -> None:
        self.pid_files.append(pid_file)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Stop the processes named by the watched pid files: processes this test started with `ztm start`."""
        for pid_file in self.pid_files:
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if pid <= 1 or not _pid_alive(pid):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(AssertionError):
                wait_until(lambda p=pid: not _pid_alive(p), 10, f"pid {pid} to exit")  # type: ignore[misc]
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def bg(tmp_path: Path) -> Iterator[Background]:
    with Background(tmp_path) as background:
        yield background


def _pid_from(text: str, what: str) -> int:
    m = re.search(r"\(pid (\d+)", text)
    assert m, f"{what}: no pid in {text!r}"
    return int(m.group(1))


def _mesh(agent: Agent) -> dict[str, object] | None:
    status, meshes = agent.api("GET", "/api/meshes")
    assert status == 200, (status, meshes)
    return next((m for m in meshes if m.get("name") == MESH), None)


def _online(agent: Agent) -> dict[str, object] | None:
    mesh = _mesh(agent)
    return mesh if mesh is not None and mesh.get("status") == "online" else None


# ------------------------------------------------------------------------------------------------- start/stop agent


def test_start_and_stop_an_agent_in_the_background(bg: Background) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    data = bg.tmp / "agent-data"
    pid_file = data / "agent.pid"
    bg.watch(pid_file)

    out = bg.ok("start", "agent", "--listen", address, "--data", data)
    assert re.search(r"started the agent in the background \(pid \d+\)", out), out
    assert "reboot" in out, f"does not say that a background process will not survive a reboot: {out}"
    pid = _pid_from(out, "ztm start agent")
    assert pid_file.read_text().split()[0] == str(pid)
    assert _pid_alive(pid) and tcp_accepts("127.0.0.1", port)

    # The CLI of the same OS user finds the token from the address alone, by flag or by environment.
    assert "not joined any mesh" in bg.ok("--agent", address, "get", "mesh")
    env_cp = run([*ZTM, "get", "mesh", "-o", "json"], env={**bg.env, "ZTM_AGENT": address}, check=False)
    assert env_cp.returncode == 0 and env_cp.stdout.strip() == "[]", env_cp

    again = bg.ztm("start", "agent", "--listen", address, "--data", data)
    assert again.returncode == 0, again
    assert "already running" in again.stdout and str(pid) in again.stdout, again.stdout
    assert pid_file.read_text().split()[0] == str(pid), "a second start replaced the pid file"

    stopped = bg.ok("stop", "agent", "--data", data)
    assert re.search(rf"stopped the agent \(pid {pid}\)", stopped), stopped
    assert not pid_file.exists(), "ztm stop left the pid file behind"
    wait_until(lambda: not _pid_alive(pid), 10, f"agent pid {pid} to be gone")
    assert not tcp_accepts("127.0.0.1", port), f"{address} still accepts connections after ztm stop"

    second = bg.ztm("stop", "agent", "--data", data)
    assert second.returncode == 0, second
    assert "not running" in second.stdout, second.stdout

    # The user's next command meets a stopped agent: it must say so (not send them looking for a token).
    after = bg.ztm("--agent", address, "get", "mesh")
    assert after.returncode == 1 and after.stderr.count("\n") == 1, after
    assert address in after.stderr, after.stderr
    assert re.search(r"cannot reach|connection refused|not running|start one", after.stderr, re.I), after.stderr


def test_start_agent_on_a_busy_port_fails_cleanly(bg: Background) -> None:
    data = bg.tmp / "agent-data"
    bg.watch(data / "agent.pid")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        cp = bg.ztm("start", "agent", "--listen", address, "--data", data, timeout=30)
    assert cp.returncode == 1, cp
    first = cp.stderr.splitlines()[0]
    assert first.startswith("ztm: ") and "agent" in first, cp.stderr
    assert address in cp.stderr, cp.stderr
    assert not (data / "agent.pid").exists(), "a failed start left a pid file"
    stop = bg.ztm("stop", "agent", "--data", data)
    assert stop.returncode == 0 and "not running" in stop.stdout, stop


# --------------------------------------------------------------------------------------------------- start/stop hub


def test_start_and_stop_a_hub_keeps_its_permit(bg: Background, tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    data, permit = bg.tmp / "hub-data", bg.tmp / "root.json"
    pid_file = data / "hub.pid"
    bg.watch(pid_file)
    argv = ("start", "hub", "--listen", address, "--names", address, "--permit", permit, "--data", data)

    out = bg.ok(*argv)
    assert re.search(r"started the hub in the background \(pid \d+\)", out), out
    assert re.search(r"wrote .*root\.json.*private key", out), f"does not warn that the permit holds a key: {out}"
    pid = _pid_from(out, "ztm start hub")
    assert permit.stat().st_mode & 0o777 == 0o600, oct(permit.stat().st_mode)
    assert "PRIVATE KEY" in permit.read_text()
    original = permit.read_bytes()

    # The permit works: an agent joins with it.
    agent = start_agent(tmp_path, "pc")
    agent.join(MESH, "pc", permit)
    assert _online(agent)

    assert re.search(rf"stopped the hub \(pid {pid}\)", bg.ok("stop", "hub", "--data", data))
    assert not pid_file.exists()
    wait_until(lambda: not _pid_alive(pid), 10, f"hub pid {pid} to be gone")
    assert not tcp_accepts("127.0.0.1", port)
    wait_until(lambda: _online(agent) is None, 20, "the agent to notice that the hub is gone")

    out = bg.ok(*argv)
    assert re.search(r"kept the existing permit .*root\.json", out), out
    assert "wrote" not in out, out
    assert permit.read_bytes() == original, "a second start rewrote the root permit"
    assert permit.stat().st_mode & 0o777 == 0o600
    # Same mesh CA: the agent that joined before reconnects by itself.
    wait_until(lambda: _online(agent), 30, "the agent to reconnect to the restarted hub")

    assert "stopped the hub" in bg.ok("stop", "hub", "--data", data)
    assert not pid_file.exists()
    assert "not running" in bg.ok("stop", "hub", "--data", data)


# ---------------------------------------------------------------------------------------------- unattended joins


def test_run_agent_joins_unattended(tmp_path: Path) -> None:
    hub = start_hub(tmp_path)
    agent = start_agent(tmp_path, "solo", extra=["--join", MESH, "--join-as", "solo", "--permit", str(hub.permit)])
    mesh = wait_until(lambda: _online(agent), 20, "the agent to join and come online by itself")
    assert mesh["ep_name"] == "solo" and mesh["user"] == "root", mesh
    status, eps = agent.api("GET", f"/api/meshes/{MESH}/endpoints")
    assert status == 200 and [(e["name"], e["online"]) for e in eps] == [("solo", True)], eps

    # Started again with the same flags it keeps its membership instead of joining a second time.
    restart_agent(agent)
    again = wait_until(lambda: _online(agent), 20, "the restarted agent to come online again")
    assert again["ep_id"] == mesh["ep_id"], (mesh, again)
    status, meshes = agent.api("GET", "/api/meshes")
    assert status == 200 and len(meshes) == 1, meshes
    assert "failed" not in agent.proc.output(), agent.proc.tail()


def test_run_agent_joins_once_the_hub_comes_up(tmp_path: Path) -> None:
    hub = start_hub(tmp_path)  # its first start writes the root permit; then it goes away
    hub.proc.stop()
    assert not tcp_accepts("127.0.0.1", hub.port)

    agent = start_agent(tmp_path, "early", extra=["--join", MESH, "--join-as", "early", "--permit", str(hub.permit)])
    agent.proc.wait_for_output(r"unattended join of .*retrying", timeout=20)
    status, meshes = agent.api("GET", "/api/meshes")
    assert status == 200 and meshes == [], f"a mesh is listed while its hub was down: {meshes}"
    assert not (agent.data / "meshes" / MESH).exists(), "a failed attempt left its mesh directory behind"

    restart_hub(hub)
    mesh = wait_until(lambda: _online(agent), 30, "the agent to join once the hub is up")
    assert mesh["ep_name"] == "early", mesh


# ------------------------------------------------------------------------------------------- commands with no agent


def _plain(tmp_path: Path, *args: str) -> str:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = base_env({"ZTM_AGENT": f"127.0.0.1:{free_port()}"}, home=home)  # no agent there
    cp = run([*ZTM, *args], env=env, cwd=tmp_path, check=False, timeout=20)
    assert cp.returncode == 0, f"ztm {' '.join(args)} exited {cp.returncode}:\n{cp.stdout}{cp.stderr}"
    assert "Traceback" not in cp.stdout + cp.stderr
    return cp.stdout


def test_version_and_help(tmp_path: Path) -> None:
    from ztm.cli.registry import COMMANDS

    version = _plain(tmp_path, "version")
    assert f"ztm {__version__}" in version and "agent" in version, version
    assert f"ztm {__version__}" in _plain(tmp_path, "--version")

    overview = _plain(tmp_path, "help")
    for command in COMMANDS:
        assert re.search(rf"^  {re.escape(command.name)}\b", overview, re.M), f"ztm help omits {command.name}"
    assert _plain(tmp_path) == overview, "ztm with no arguments should print the overview"

    join_help = _plain(tmp_path, "help", "join")
    for needle in ("--as", "--permit", "--label", "examples:", "ztm join"):
        assert needle in join_help, f"ztm help join lacks {needle!r}"
    assert _plain(tmp_path, "join", "--help") == join_help
    run_hub = _plain(tmp_path, "help", "run", "hub")
    assert "--listen" in run_hub and "--names" in run_hub and "--max-agents" in run_hub, run_hub


def test_bash_completion(tmp_path: Path) -> None:
    script = _plain(tmp_path, "completion", "bash")
    path = tmp_path / "ztm.bash"
    path.write_text(script)
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False, timeout=20)
    assert syntax.returncode == 0, syntax.stderr

    def complete(*words: str) -> set[str]:
        line = " ".join(f"'{w}'" for w in words)
        probe = (
            f"source {path}\n"
            f"COMP_WORDS=(ztm {line}); COMP_CWORD={len(words)}\n"
            "fn=$(complete -p ztm | sed -E 's/.*-F ([^ ]+).*/\\1/')\n"
            '"$fn"; printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        cp = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=False, timeout=20)
        assert cp.returncode == 0, cp.stderr
        return set(cp.stdout.split())

    assert "join" in complete("jo"), complete("jo")
    assert {"hub", "agent"} <= complete("start", ""), complete("start", "")
    assert "--permit" in complete("join", "m", "--pe"), complete("join", "m", "--pe")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion(tmp_path: Path) -> None:
    script = _plain(tmp_path, "completion", "zsh")
    assert script.startswith("#compdef ztm"), script[:80]
    path = tmp_path / "_ztm"
    path.write_text(script)
    syntax = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True, check=False, timeout=20)
    assert syntax.returncode == 0, syntax.stderr
