"""`ztm.service` without systemd: detached background processes, pid files, readiness, early exit, stop.

The processes are tiny `python -c` programs standing in for hub and agent, started through the same helpers.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ports import free_port
from ztm import service
from ztm.addr import Address
from ztm.apps.net.options import NetOptions
from ztm.cli.daemons import agent_config, hub_config
from ztm.cli.main import main
from ztm.cli.registry import COMMANDS, build_parser
from ztm.config import AgentConfig, HubConfig
from ztm.errors import Timeout, ZtmError

LISTENER = """
import pathlib, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
if len(sys.argv) > 2:
    p = pathlib.Path(sys.argv[2])
    if not p.exists():
        p.write_text("{}")
        p.chmod(0o600)
print("listening on", sys.argv[1], flush=True)
time.sleep(60)
"""


@pytest.fixture(autouse=True)
def no_systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(service.ENV_NO_SYSTEMD, "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("ZTM_DATA", "ZTM_AGENT", "ZTM_MESH", "ZTM_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Pids a test started; killed at the end whatever happened."""
    started: list[int] = []
    yield started
    for pid in started:
        if service.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            service._wait_gone(pid, 5)


def listener(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-c", LISTENER, str(port), *extra]


def test_start_ready_running_stop(tmp_path: Path, pids: list[int]) -> None:
    port = free_port()
    pidfile, out = tmp_path / "d" / "hub.pid", tmp_path / "d" / "hub.out"
    started = time.monotonic()
    pid = service.start_background(listener(port), pidfile, out, service.tcp_probe(Address("0.0.0.0", port)))
    pids.append(pid)
    assert time.monotonic() - started < 10
    assert pidfile.read_text() == f"{pid}\n"
    assert service.running_pid(pidfile) == pid
    assert os.getsid(pid) == pid  # its own session: a closed terminal does not take it down
    assert service.tcp_probe(Address("127.0.0.1", port))()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "started: " in out.read_text()

    assert service.stop_background(pidfile, timeout=5) == pid
    assert not service.pid_alive(pid)
    assert not pidfile.exists()
    assert service.stop_background(pidfile) is None


def test_start_says_already_running(tmp_path: Path, pids: list[int]) -> None:
    port = free_port()
    svc = service.Service(
        "hub", tuple(listener(port)), tmp_path / "d", service.tcp_probe(Address("127.0.0.1", port)), "listening"
    )
    said: list[str] = []
    assert service.start(svc, said.append) is True
    pid = service.running_pid(svc.pid_file)
    assert pid is not None
    pids.append(pid)
    assert "in the background (pid" in said[0] and "will not come back after a reboot" in said[0]
    assert str(svc.out_file) in said[0]
    assert service.start(svc, said.append) is False
    assert said[1].startswith(f"the hub is already running (pid {pid}")
    assert service.stop("hub", svc.data, said.append) is True
    assert said[2] == f"stopped the hub (pid {pid})"
    assert service.stop("hub", svc.data, said.append) is False
    assert said[3] == f"the hub is not running (no {svc.pid_file})"


def test_early_exit_reports_the_output_tail(tmp_path: Path) -> None:
    pidfile, out = tmp_path / "agent.pid", tmp_path / "agent.out"
    out.write_text("old run output\n")
    argv = [sys.executable, "-c", "import sys; print('line one'); print('bad config: boom'); sys.exit(3)"]
    with pytest.raises(ZtmError) as err:
        service.start_background(argv, pidfile, out, lambda: False, timeout=10, name="agent")
    msg = err.value.message
    assert msg.startswith("the agent exited with code 3 before it was ready; last output")
    assert msg.endswith("line one\nbad config: boom")
    assert "old run output" not in msg
    assert not pidfile.exists()


def test_not_ready_in_time_is_stopped(tmp_path: Path, pids: list[int]) -> None:
    pidfile = tmp_path / "hub.pid"
    argv = [sys.executable, "-c", "import time; print('starting', flush=True); time.sleep(60)"]
    started = time.monotonic()
    with pytest.raises(Timeout) as err:
        service.start_background(argv, pidfile, tmp_path / "hub.out", lambda: False, timeout=0.5, name="hub")
    assert time.monotonic() - started < 8
    assert "was not ready within 0.5s, so it was stopped" in err.value.message
    assert not pidfile.exists()


def test_stop_kills_what_ignores_sigterm(tmp_path: Path, pids: list[int]) -> None:
    pidfile, out = tmp_path / "x.pid", tmp_path / "x.out"
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring', flush=True)\n"
        "time.sleep(60)\n"
    )
    pid = service.start_background(
        [sys.executable, "-c", code], pidfile, out, lambda: "ignoring" in out.read_text(), timeout=10
    )
    pids.append(pid)
    started = time.monotonic()
    assert service.stop_background(pidfile, timeout=0.3) == pid
    assert time.monotonic() - started < 5
    assert not service.pid_alive(pid)


def test_stale_pid_files_are_not_running(tmp_path: Path) -> None:
    pidfile = tmp_path / "hub.pid"
    pidfile.write_text("garbage\n")
    assert service.running_pid(pidfile) is None
    # a pid that no longer exists
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], dict(os.environ))
    os.waitpid(pid, 0)
    pidfile.write_text(f"{pid}\n")
    assert service.running_pid(pidfile) is None
    # a live process that is not the one that wrote the file (pid reused after a reboot)
    pidfile.write_text(f"{os.getpid()}\n")
    if Path("/proc/self/stat").exists():
        old = time.time() - 24 * 3600
        os.utime(pidfile, (old, old))
        assert service.running_pid(pidfile) is None
    assert service.stop_background(pidfile) is None
    assert not pidfile.exists()


def test_spawn_failure_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ZtmError) as err:
        service.start_background(["/nonexistent/ztm"], tmp_path / "p.pid", tmp_path / "p.out", lambda: True)
    assert "cannot start the process (/nonexistent/ztm)" in err.value.message


# ---------------------------------------------------------------- command lines and units


def _parse(argv: list[str]) -> object:
    return build_parser(COMMANDS).parse_args(argv)


def test_hub_argv_round_trips_through_the_cli(tmp_path: Path) -> None:
    cfg = HubConfig(
        listen=Address("::", 9000),
        names=(Address("1.2.3.4", 8888), Address("::1", 8888)),
        permit=tmp_path / "root.json",
        data=tmp_path / "data dir",
        max_agents=5,
        cert_ttl=1234.5,
        heartbeat=2.5,
        admin=Address("127.0.0.1", 9100),
        mesh_range="10.77.0.0/16",
    )
    argv = service.hub_argv(cfg, "/usr/bin/python3")
    assert argv[:5] == ["/usr/bin/python3", "-m", "ztm", "run", "hub"]
    assert hub_config(_parse(argv[3:])) == cfg  # type: ignore[arg-type]
    minimal = HubConfig(listen=Address("10.0.0.1", 8888), names=(Address("10.0.0.1", 8888),), data=tmp_path)
    assert hub_config(_parse(service.hub_argv(minimal)[3:])) == minimal  # type: ignore[arg-type]


def test_agent_argv_round_trips_through_the_cli(tmp_path: Path) -> None:
    cfg = AgentConfig(
        listen=Address("127.0.0.1", 7001), data=tmp_path / "a", join="m", join_as="me", permit=tmp_path / "p.json"
    )
    assert agent_config(_parse(service.agent_argv(cfg)[3:])) == cfg  # type: ignore[arg-type]
    exposed = AgentConfig(data=tmp_path / "b", net=NetOptions(expose_ports=True, dns_suffix="mesh.example"))
    argv = service.agent_argv(exposed)
    assert "--expose-ports" in argv
    assert agent_config(_parse(argv[3:])) == exposed  # type: ignore[arg-type]


def test_unit_names(tmp_path: Path) -> None:
    default = service.service_default_data()
    assert default == tmp_path / "home" / ".ztm"
    assert service.unit_name("hub", default) == "ztm-hub.service"
    other = service.unit_name("agent", tmp_path / "other")
    assert (
        other.startswith("ztm-agent-")
        and other.endswith(".service")
        and len(other) == len("ztm-agent-12345678.service")
    )
    assert other != service.unit_name("agent", tmp_path / "third")


def test_unit_text(tmp_path: Path) -> None:
    svc = service.Service(
        "agent",
        ("/usr/bin/python3", "-m", "ztm", "run", "agent", "--data", "/srv/my data/50%"),
        tmp_path,
        lambda: True,
        "ready",
        user="alice",
        home=Path("/home/alice"),
    )
    text = service.unit_text(svc)
    assert 'ExecStart=/usr/bin/python3 -m ztm run agent --data "/srv/my data/50%%"' in text
    assert "Restart=on-failure" in text and "WantedBy=multi-user.target" in text
    assert "User=alice" in text and "Environment=HOME=/home/alice" in text
    assert service.systemd_quote('a"b$c') == '"a\\"b$$c"'


# ---------------------------------------------------------------- through the command line


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[HubConfig]:
    """`ztm start hub` runs LISTENER (listening on the --listen port, writing the permit) instead of a hub."""
    seen: list[HubConfig] = []

    def argv(cfg: HubConfig, python: str = sys.executable) -> list[str]:
        seen.append(cfg)
        return listener(cfg.listen.port, *([str(cfg.permit)] if cfg.permit else []))

    monkeypatch.setattr(service, "hub_argv", argv)
    return seen


def test_cli_start_and_stop_hub(
    fake_hub: list[HubConfig], capsys: pytest.CaptureFixture[str], tmp_path: Path, pids: list[int]
) -> None:
    port = free_port()
    argv = ["start", "hub", "--listen", f"127.0.0.1:{port}", "--permit", "root.json", "--data", "state"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    data = tmp_path / "state"
    assert fake_hub[0].data == data and fake_hub[0].permit == tmp_path / "root.json"
    pid = service.running_pid(data / "hub.pid")
    assert pid is not None
    pids.append(pid)
    assert f"started the hub in the background (pid {pid})" in out
    assert (
        f"wrote {tmp_path / 'root.json'} (mode 0600): it holds the root user's private key. Keep it secret; "
        "share ztm invite permits instead." in out
    )

    assert main(argv) == 0
    assert "the hub is already running" in capsys.readouterr().out

    assert main(["stop", "hub", "--data", "state"]) == 0
    assert capsys.readouterr().out.strip() == f"stopped the hub (pid {pid})"
    assert main(["stop", "hub", "--data", "state"]) == 0
    assert "the hub is not running" in capsys.readouterr().out

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"kept the existing permit {tmp_path / 'root.json'} unchanged" in out
    assert main(["stop", "hub", "--data", "state"]) == 0


def test_cli_start_failure_shows_the_output(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def argv(cfg: HubConfig, python: str = sys.executable) -> list[str]:
        return [sys.executable, "-c", "import sys; sys.exit('cannot listen on 0.0.0.0:8888: Address already in use')"]

    monkeypatch.setattr(service, "hub_argv", argv)
    assert main(["start", "hub", "--names", "1.2.3.4", "--data", "d"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ztm: the hub exited with code 1 before it was ready; last output")
    assert err.rstrip().endswith("cannot listen on 0.0.0.0:8888: Address already in use")
    assert not (tmp_path / "d" / "hub.pid").exists()


def test_cli_start_agent_waits_for_the_api(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, pids: list[int]
) -> None:
    port = free_port()

    def argv(cfg: AgentConfig, python: str = sys.executable) -> list[str]:
        return [sys.executable, "-m", "http.server", str(cfg.listen.port), "--bind", cfg.listen.host]

    monkeypatch.setattr(service, "agent_argv", argv)
    assert main(["start", "agent", "--listen", str(port)]) == 0
    out = capsys.readouterr().out
    data = tmp_path / "home" / ".ztm"
    pid = service.running_pid(data / "agent.pid")
    assert pid is not None
    pids.append(pid)
    assert f"API on http://127.0.0.1:{port}" in out and str(data / "agent.out") in out
    assert main(["stop", "agent"]) == 0
    assert not service.pid_alive(pid)


def test_cli_start_hub_needs_names_on_wildcard(capsys: pytest.CaptureFixture[str], fake_hub: list[HubConfig]) -> None:
    assert main(["start", "hub"]) == 1
    assert "--names is required when listening on all interfaces" in capsys.readouterr().err
    assert not fake_hub


# ---------------------------------------------------------------- systemd, with systemctl faked


class FakeSystemctl:
    """Records systemctl calls; `states` are the successive ActiveState/NRestarts answers of `systemctl show`."""

    def __init__(self, states: list[str]) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.states = states

    def __call__(self, *args: str) -> str:
        self.calls.append(args)
        if args[0] == "show":
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return f"ActiveState={state}\nNRestarts=0\nMainPID=4242\n"
        return ""


@pytest.fixture
def systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    units = tmp_path / "units"
    units.mkdir()
    monkeypatch.setattr(service, "UNIT_DIR", units)
    monkeypatch.setattr(service, "systemd_available", lambda: True)
    monkeypatch.setattr(service, "_journal_tail", lambda unit: "Traceback-free: cannot listen on 0.0.0.0:8888")
    return units


def _svc(tmp_path: Path, ready: bool) -> service.Service:
    return service.Service(
        "hub", ("/usr/bin/python3", "-m", "ztm", "run", "hub"), tmp_path / "data", lambda: ready, "listening"
    )


def test_systemd_start_installs_enables_and_waits(
    systemd: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = FakeSystemctl(["inactive", "activating", "active"])
    monkeypatch.setattr(service, "_systemctl", fake)
    svc = _svc(tmp_path, ready=True)
    said: list[str] = []
    assert service.start(svc, said.append) is True
    unit = svc.unit
    assert (systemd / unit).read_text().startswith("# Written by 'ztm start'")
    assert ("daemon-reload",) in fake.calls and ("enable", "--now", unit) in fake.calls
    assert said == [
        f"started the hub as the systemd service {unit} (listening); it comes back after a reboot. "
        f"Logs: journalctl -u {unit}"
    ]
    fake.states = ["active"]
    assert service.start(svc, said.append) is False
    assert "already running as the systemd service" in said[-1]
    assert service.stop("hub", svc.data, said.append) is True
    assert fake.calls[-1] == ("disable", "--now", unit)
    assert said[-1] == f"stopped and disabled the hub service {unit}"


def test_systemd_start_failure_disables_and_shows_the_journal(
    systemd: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = FakeSystemctl(["inactive", "activating", "failed"])
    monkeypatch.setattr(service, "_systemctl", fake)
    svc = _svc(tmp_path, ready=False)
    with pytest.raises(ZtmError) as err:
        service.start(svc, lambda text: None)
    assert err.value.message.startswith(f"the hub service {svc.unit} exited before it was ready, so it was disabled")
    assert err.value.message.endswith("cannot listen on 0.0.0.0:8888")
    assert fake.calls[-1] == ("disable", "--now", svc.unit)


def test_systemd_stop_when_not_running(systemd: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeSystemctl(["inactive"])
    monkeypatch.setattr(service, "_systemctl", fake)
    said: list[str] = []
    assert service.stop("agent", tmp_path / "data", said.append) is False
    assert fake.calls == []  # no unit file: nothing to disable
    assert said == [f"the agent is not running (no {tmp_path / 'data' / 'agent.pid'})"]
