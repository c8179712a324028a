"""The hub sees no plaintext of relayed app streams, shown by an independent decoder (issue 13, "Proof").

One hub started with `SSLKEYLOGFILE` (its TLS secrets logged, `ztm.keylog`) and two agents on loopback (`home`, the
entrance, and `office`, the exit; no `--direct`, so every app stream goes through the hub). `tcpdump` records the
hub's port from before the agents join, and `tshark` (Debian's Wireshark, no ztm code) decrypts the capture with the
hub's keys and decodes every HTTP/2 frame (tests/capture.py). One capture covers four actions, told apart by packet
numbers:

* control: `ztm label --add MARKER` is a request to the hub, which must read it: the marker IS in the decoded DATA,
  the request's `:path` is in the decoded headers, every TLS connection decoded to HTTP/2 and the frame counts are
  sane, so an empty or failed decode cannot pass the others;
* tunnel: a random marker through a relayed TCP tunnel to an echo server at the exit, and back;
* terminal: `ztm terminal exec office -- echo MARKER`: the marker travels as the command's argument and comes back
  in its output;
* shell: an interactive `ztm terminal open office` (on a pseudo-terminal, pexpect) where `echo MARKER` is typed in
  two parts, the second only once the remote terminal echoed the first (keystrokes as a user sends them), and the
  command prints it back. The typed marker crosses in two stdin frames of the terminal protocol, whose headers
  split it even in the joined stream, so each typed part (12 random hex digits or more) is looked for too.

For the tunnel, the exec and the shell the marker must be absent from every decoded DATA frame and header value,
and from each HTTP/2 stream's DATA joined in order (a marker split across frames), in both directions, while the
same packets show DATA frames in both directions on both agents' connections (the bytes did cross the hub, decoded).
Before the end-to-end layer of issue 13 these three fail: the hub relays the plaintext.

Needs root (tcpdump on `lo`), like the namespace lab: skipped with the reason otherwise. As root, a missing
tcpdump or tshark fails (scripts/setup.sh installs both). Every wait polls with a deadline (tests/support.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

import capture
from support import ZTM, Agent, Hub, Proc, free_port, join_all, start_hub_and_agents, wait_until

MESH = "m"
TIMEOUT = 30.0
DATA, HEADERS = 0, 1
"""HTTP/2 frame types."""


@dataclass
class Window:
    """The packets one action produced: numbers `after` < n <= `until`."""

    after: int
    until: int


@dataclass
class Run:
    hub: Hub
    home: Agent
    office: Agent
    decoded: capture.Decoded
    control: bytes
    tunnel: bytes
    terminal: bytes
    shell: bytes
    shell_parts: tuple[bytes, bytes]
    """The two parts the shell's marker was typed in."""
    windows: dict[str, Window]
    keys: Path
    """The hub's `SSLKEYLOGFILE`."""


class EchoServer:
    """A threaded TCP echo server on 127.0.0.1 (the tunnel's target): echoes until EOF, then closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="e2e-echo", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(TIMEOUT)
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def echo_through(port: int, payload: bytes) -> bytes:
    """Send `payload` to 127.0.0.1:`port`, half-close, and read the answer to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := sock.recv(65536):
            got += chunk
    return bytes(got)


def marker(kind: str) -> bytes:
    return f"e2e-{kind}-{secrets.token_hex(12)}".encode()


def type_in_a_shell(home: Agent, first: str, second: str) -> None:
    """`ztm terminal open office` on a pseudo-terminal: type `echo FIRST` then, once the remote terminal echoed it,
    `SECOND` and Enter; see FIRSTSECOND printed on a line of its own, and exit."""
    child = pexpect.spawn(
        ZTM[0],
        [*ZTM[1:], "--agent", home.api_address, "terminal", "open", "office"],
        env={**home.env, "TERM": "xterm"},
        cwd=str(home.dir),
        encoding="utf-8",
        codec_errors="replace",
        timeout=TIMEOUT,
    )
    try:
        # the session is up and the local terminal raw (the CLI reads keys as typed) once a computed answer is back
        child.send("echo ready-$((6*7))\r")
        child.expect_exact("ready-42")
        child.send(f"echo {first}")
        child.expect_exact(first)  # the remote terminal's echo: the first part crossed on its own
        child.send(f"{second}\r")
        child.expect_exact(f"\n{first}{second}")  # the command's output (the typed line shows `echo ` before it)
        child.sendline("exit 0")
        child.expect(pexpect.EOF)
        child.wait()
        assert child.exitstatus == 0, child.exitstatus
    finally:
        child.close(force=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Everything happens once, under one capture; the tests then read the decoded result."""
    if os.geteuid() != 0:
        pytest.skip("capturing loopback traffic needs root (tcpdump -i lo)")
    reason = capture.unavailable_reason()
    assert reason is None, reason  # root without tcpdump or tshark: scripts/setup.sh installs them
    tmp = tmp_path_factory.mktemp("e2e-capture")
    keys = tmp / "hub-keys.log"
    procs: list[Proc] = []
    echo = EchoServer()
    try:
        # The agents dial the hub only when they join, after the capture started.
        hub, agents = start_hub_and_agents(tmp, ("home", "office"), hub_env={"SSLKEYLOGFILE": str(keys)})
        home, office = agents["home"], agents["office"]
        procs += [hub.proc, home.proc, office.proc]
        cap = capture.Capture(hub.port, tmp / "capture")
        procs.append(cap.proc)
        join_all(MESH, [(home, "home"), (office, "office")], hub.permit)
        wait_until(lambda: "office" in home.online_names(), TIMEOUT, "home to see office online")
        office.cli("terminal", "config", "--set-shell", "/bin/sh")
        office.cli("terminal", "enable")
        office.cli("tunnel", "open", "outbound", "tcp/echo", "--targets", f"127.0.0.1:{echo.port}")
        listen = free_port()
        home.cli("tunnel", "open", "inbound", "tcp/echo", "--listen", str(listen))
        wait_until(lambda: echo_through(listen, b"ready") == b"ready", TIMEOUT, "the tunnel to echo")
        windows: dict[str, Window] = {}

        control = marker("control")
        start = cap.mark()
        home.cli("label", "--add", control.decode())
        windows["control"] = Window(start, cap.mark())

        tunnel = marker("tunnel")
        start = cap.mark()
        got = echo_through(listen, tunnel)
        windows["tunnel"] = Window(start, cap.mark())
        assert got == tunnel, f"the tunnel echoed {got!r}, not the marker"

        terminal = marker("terminal")
        start = cap.mark()
        out = home.cli("terminal", "exec", "office", "--", "echo", terminal.decode()).stdout
        windows["terminal"] = Window(start, cap.mark())
        assert out.strip() == terminal.decode(), f"the terminal printed {out!r}, not the marker"

        shell = marker("shell")
        cut = len(shell) - 12  # both parts hold 12 random hex digits or more
        parts = (shell[:cut], shell[cut:])
        start = cap.mark()
        type_in_a_shell(home, parts[0].decode(), parts[1].decode())
        windows["shell"] = Window(start, cap.mark())

        pcap = cap.stop()
        for proc in reversed(procs):
            proc.stop()
        decoded = capture.decode(pcap, keys, hub.port)
        yield Run(hub, home, office, decoded, control, tunnel, terminal, shell, parts, windows, keys)
    finally:
        echo.close()
        for proc in reversed(procs):
            proc.stop()


def assert_absent(run: Run, window: Window, secret: bytes, *parts: bytes) -> None:
    """Neither `secret` nor any of `parts` is anywhere in the decoded capture, though the action that carried them
    (`window`) was seen."""
    found = [f"{text.decode()!r} in {place}" for text in (secret, *parts) for place in run.decoded.where(text)]
    assert not found, f"the hub's decrypted traffic holds the marker: {len(found)} places: " + "; ".join(found[:8])
    # Not vacuous: during the action, DATA crossed the hub both ways on the entrance's and the exit's connections
    # (at least two client connections), and tshark decoded it.
    sizes = run.decoded.data_bytes(window.after, window.until)
    hub = f"127.0.0.1:{run.hub.port}"
    clients = {src for src, dst in sizes if dst == hub} | {dst for src, dst in sizes if src == hub}
    both_ways = [c for c in clients if min(sizes.get((c, hub), 0), sizes.get((hub, c), 0)) >= len(secret)]
    assert len(both_ways) >= 2, (
        f"decoded DATA during the action, bytes per (sender, receiver): {sizes}; expected at least "
        f"{len(secret)} each way on two connections (entrance and exit): the capture did not see the relayed stream"
    )


# -------------------------------------------------------------------------------------------------------- tests


def test_control_the_decoder_reads_what_the_hub_legitimately_sees(run: Run) -> None:
    decoded = run.decoded
    assert decoded.encrypted_records >= 50 and not decoded.undecrypted, (
        f"{decoded.encrypted_records} encrypted TLS records, not decrypted in packets {decoded.undecrypted[:20]}"
    )
    assert decoded.count(HEADERS) >= 20 and decoded.count(DATA) >= 20, (
        f"only {decoded.count(HEADERS)} HEADERS and {decoded.count(DATA)} DATA frames decoded"
    )
    found = decoded.where(run.control)
    window = run.windows["control"]
    in_window = [f for f in decoded.frames if window.after < f.number <= window.until and run.control in f.data]
    assert in_window, f"the label {run.control.decode()} sent to the hub is not in the decoded capture: {found}"
    paths = [h for f in decoded.frames if window.after < f.number <= window.until for h in f.headers]
    assert any(h.startswith(":path: ") and h.endswith("/labels") for h in paths), paths


def test_a_relayed_tunnel_carries_no_plaintext_through_the_hub(run: Run) -> None:
    assert_absent(run, run.windows["tunnel"], run.tunnel)


def test_a_relayed_terminal_session_carries_no_plaintext_through_the_hub(run: Run) -> None:
    assert_absent(run, run.windows["terminal"], run.terminal)


def test_a_relayed_interactive_shell_carries_no_plaintext_through_the_hub(run: Run) -> None:
    assert_absent(run, run.windows["shell"], run.shell, *run.shell_parts)


def test_the_check_holds_for_a_marker_never_sent(run: Run) -> None:
    """The absence check itself: with a marker nobody sent, it passes on the very windows the two tests above use,
    so once the hub relays only ciphertext nothing else stands in their way."""
    for name in ("tunnel", "terminal", "shell"):
        assert_absent(run, run.windows[name], marker("unsent"))


def test_the_key_log_holds_the_hubs_tls_secrets_privately(run: Run) -> None:
    text = run.keys.read_text()
    assert "CLIENT_TRAFFIC_SECRET_0" in text and "SERVER_TRAFFIC_SECRET_0" in text, text[:500]
    assert run.keys.stat().st_mode & 0o777 == 0o600, oct(run.keys.stat().st_mode)
