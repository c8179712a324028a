"""The test helpers themselves (tests/support.py): polling, process lifecycle, failure reports, namespace sockets."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

import support
from lab.netlab import Lab
from support import Abort, Proc, wait_until

PY = sys.executable


def test_wait_until_returns_the_value() -> None:
    calls = iter([0, None, "", "yes"])
    assert wait_until(lambda: next(calls), 5, "a truthy value") == "yes"


def test_wait_until_times_out_with_the_last_error() -> None:
    def boom() -> bool:
        raise ConnectionRefusedError("nobody home")

    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0.2s waiting for the moon.*nobody home"):
        wait_until(boom, 0.2, "the moon")
    assert time.monotonic() - started < 2


def test_wait_until_stops_at_abort() -> None:
    def give_up() -> bool:
        raise Abort("it died")

    started = time.monotonic()
    with pytest.raises(Abort, match="it died"):
        wait_until(give_up, 30, "never")
    assert time.monotonic() - started < 1


def test_free_port_is_bindable() -> None:
    port = free = support.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    assert 0 < free < 65536


def test_split_hostport() -> None:
    assert support.split_hostport("1.2.3.4:80") == ("1.2.3.4", 80)
    assert support.split_hostport("[::1]:7777") == ("::1", 7777)
    with pytest.raises(ValueError):
        support.split_hostport("nope")


def test_base_env_scrubs_proxies_and_sets_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
    monkeypatch.setenv("ZTM_DATA", "/somewhere")
    env = support.base_env({"EXTRA": "1", "PATH": None}, home=tmp_path)
    assert "https_proxy" not in env and "ZTM_DATA" not in env and "PATH" not in env
    assert env["HOME"] == str(tmp_path) and env["EXTRA"] == "1"
    assert str(support.SRC) in env["PYTHONPATH"].split(os.pathsep)


def test_proc_output_goes_to_a_log_and_stop_terminates(tmp_path: Path) -> None:
    proc = Proc([PY, "-c", "import time; print('hello', flush=True); time.sleep(600)"], log_dir=tmp_path)
    proc.wait_for_output("hello")
    assert proc.alive
    assert proc.log_path.parent == tmp_path
    assert proc.stop() == -signal.SIGTERM
    assert not proc.alive
    assert proc.stop() == -signal.SIGTERM  # idempotent


def test_proc_stop_escalates_to_sigkill_and_reaches_children(tmp_path: Path) -> None:
    code = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "c = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)']); "
        "print('child', c.pid, flush=True); time.sleep(600)"
    )
    proc = Proc([PY, "-c", code], log_dir=tmp_path)
    child = int(proc.wait_for_output(r"child (\d+)").group(1))
    started = time.monotonic()
    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5

    def child_gone() -> bool:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return True
        return state in ("Z", "X")

    wait_until(child_gone, 10, "the child in the same process group to be killed")


def test_proc_kill9_and_exit_status(tmp_path: Path) -> None:
    proc = Proc([PY, "-c", "import time; time.sleep(600)"], log_dir=tmp_path)
    assert proc.kill9() == -signal.SIGKILL
    done = Proc([PY, "-c", "import sys; print('bye'); sys.exit(3)"], log_dir=tmp_path)
    assert done.wait(30) == 3
    assert "bye" in done.output()
    with pytest.raises(Abort, match="exited with status 3"):
        done.assert_alive()


def test_wait_for_output_fails_fast_when_the_process_dies(tmp_path: Path) -> None:
    proc = Proc([PY, "-c", "print('no luck')"], log_dir=tmp_path)
    started = time.monotonic()
    with pytest.raises(Abort, match="no luck"):
        proc.wait_for_output("never printed", timeout=30)
    assert time.monotonic() - started < 10


def test_run_reports_failures_with_output() -> None:
    with pytest.raises(AssertionError, match=r"exit status 2.*oops"):
        support.run([PY, "-c", "import sys; print('oops', file=sys.stderr); sys.exit(2)"])
    assert support.run([PY, "-c", "print(42)"]).stdout.strip() == "42"
    with pytest.raises(AssertionError, match="timed out"):
        support.run([PY, "-c", "import time; time.sleep(600)"], timeout=0.5)


def test_failure_report_has_logs_and_cli_calls(tmp_path: Path) -> None:
    mark = support.cli_log_mark()
    proc = Proc([PY, "-c", "print('server says hi', flush=True)"], log_dir=tmp_path, name="srv")
    proc.wait(30)
    support.run([PY, "-c", "print('cli says hi')"])
    text = support.failure_report([proc], mark)
    assert "srv" in text and "server says hi" in text and "cli says hi" in text


def test_start_hub_fails_fast_when_the_hub_cannot_start(tmp_path: Path) -> None:
    # A program that exits at once stands in for a hub that cannot start: no 30 s wait, and its output is shown.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "ztm").mkdir()
    (fake / "ztm" / "__init__.py").write_text("")
    (fake / "ztm" / "__main__.py").write_text("import sys; print('cannot start: bad flag'); sys.exit(2)")
    started = time.monotonic()
    with pytest.raises(Abort, match="bad flag"):
        support.start_hub(tmp_path, env={"PYTHONPATH": str(fake)})
    with pytest.raises(Abort, match="bad flag"):
        support.start_agent(tmp_path, "a", env={"PYTHONPATH": str(fake)})
    assert time.monotonic() - started < 20


@pytest.mark.lab
def test_netns_socket_lives_in_the_namespace(lab: Lab) -> None:
    # A listener made in `home` from this process; a client in `home` reaches it, the host namespace has no such
    # address. Other threads of this process stay in the host's namespace.
    listener = support.netns_socket(lab.ns("home"))
    with listener:
        listener.bind((lab.addr("home"), 0))
        listener.listen()
        port = listener.getsockname()[1]
        with lab.connect("home", lab.addr("home"), port):
            server_side, peer = listener.accept()
            server_side.close()
            assert peer[0] == lab.addr("home")
    host_ns = os.readlink("/proc/self/ns/net")
    assert os.readlink(f"/proc/self/task/{threading.get_native_id()}/ns/net") == host_ns
