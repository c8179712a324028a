"""Attacks by a hostile hub on relayed app streams (issue 13): real agents, a real hub patched to attack
(tests/security/evil_hub.py), real TLS on 127.0.0.1, a relayed TCP tunnel (no --direct) from bob's entrance
(`bob-laptop`, user bob) to alice's exit (`alice-office`, user alice); root's endpoint `hq` invites both.

* tamper: the hub flips one bit 16 KiB into a stream, of the bytes bob sends (`to-target`) or of those alice's exit
  sends back (`to-caller`). Neither alice's target nor bob's client ever receives an altered byte (only a prefix of
  what was sent), bob's client sees the connection end before the full answer, and other streams between the same
  agents keep working.
* forge-caller: every `stream` event names root's endpoint as the caller. Bob still cannot use alice's exit that
  admits only root (`--users root`); he can use one open to every user. The same forgery on relayed calls does not
  give bob alice's log (`ztm log ep alice-office`: only her owner and root may read it).
* ignore-evict: after `ztm evict bob` the hub revokes bob's certificates in the CRL it serves but keeps relaying his
  streams. Bob's new connections through alice's exit still fail.

Each test first checks what holds today (the controls: the mesh works, the hub really misbehaves), then the attack's
outcome (which fails on a hub-trusting agent: the proof that the test can fail), then, in `e2e_*` helpers, what only
the end-to-end layer shows: the counters of alice's `/api/metrics` and her log lines (the contract with the agent
side: `ztm_agent_e2e_failures_total{mesh,reason}`, `ztm_agent_e2e_caller_mismatch_total{mesh}`).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from integration.test_tunnel import agent_log, described, open_inbound, open_outbound
from reliability.hubclient import HubClient
from reliability.traffic import EchoServer, echoes
from support import (
    Agent,
    Hub,
    base_env,
    by_name,
    holds_for,
    invite,
    one_line_error,
    run,
    start_hub_and_agents,
    wait_until,
)
from ztm import pki

MESH = "m"
EVIL_HUB = [sys.executable, str(Path(__file__).with_name("evil_hub.py"))]
"""`support.start_hub(program=...)`: the real hub, patched at startup by the mode in `ZTM_EVIL_HUB`."""
TAMPER_AFTER = 16 << 10
"""Bytes of a stream the tampering hub passes untouched (far more than the e2e handshake and the OPEN record)."""


# ------------------------------------------------------------------------------------------------------ helpers


@dataclass
class Mesh:
    hub: Hub
    hq: Agent
    """root's endpoint `hq`."""
    alice: Agent
    """alice's exit, endpoint `alice-office`."""
    bob: Agent
    """bob's entrance, endpoint `bob-laptop`."""


def hostile_mesh(tmp_path: Path, env: Mapping[str, str]) -> Mesh:
    """An evil hub (`env`: its ZTM_EVIL_* settings), root's `hq`, alice's `alice-office` and bob's `bob-laptop`."""
    hub, agents = start_hub_and_agents(tmp_path, ("hq", "alice", "bob"), hub_program=EVIL_HUB, hub_env=env)
    hq, alice, bob = agents["hq"], agents["alice"], agents["bob"]
    hq.join(MESH, "hq", hub.permit)
    alice.join(MESH, "alice-office", invite(hq, alice, "alice", tmp_path / "alice.json"))
    bob.join(MESH, "bob-laptop", invite(hq, bob, "bob", tmp_path / "bob.json"))
    return Mesh(hub, hq, alice, bob)


class Recorder(EchoServer):
    """An echo server that also keeps every connection's received bytes, and whether that connection ended."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.ended: list[bool] = []
        self._lock = threading.Lock()
        super().__init__()

    def __enter__(self) -> Recorder:
        return self

    def _serve(self, conn: socket.socket) -> None:  # type: ignore[override]
        with self._lock:
            index = len(self.received)
            self.received.append(bytearray())
            self.ended.append(False)
        try:
            with conn, contextlib.suppress(OSError):
                conn.settimeout(60)
                while data := conn.recv(1 << 16):
                    self.received[index] += data
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
        finally:
            self.ended[index] = True


def exchange(port: int, data: bytes, timeout: float = 20.0) -> bytes:
    """Send `data` through the entrance on `port`, half-close, and read until the connection ends; a reset or a
    refused write ends it too. Returns what came back."""
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sender = threading.Thread(target=lambda: _send(sock, data), daemon=True)
        sender.start()
        with contextlib.suppress(ConnectionError):
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        sender.join(timeout)
    return b"".join(chunks)


def _send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


def first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def uses_exit(entrance: Agent, tunnel: str, exit_name: str) -> bool:
    """The entrance's `tunnel` would use the exit of endpoint `exit_name` now (it found it through the hub)."""
    exits = described(entrance, "inbound", tunnel).get("exit_endpoints") or []
    return any(e.get("name") == exit_name for e in exits)


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric(agent: Agent, name: str, **labels: str) -> float:
    """The sum of the samples of `name` on the agent's `/api/metrics` whose labels include MESH and `labels` (0 when
    there is none)."""
    status, text = agent.api("GET", "/api/metrics")
    assert status == 200, text
    want = {"mesh": MESH, **labels}
    total = 0.0
    for line in str(text).splitlines():
        head, _, value = line.rpartition(" ")
        sample, _, rest = head.partition("{")
        if sample != name:
            continue
        got = dict(_LABEL.findall(rest))
        if all(got.get(k) == v for k, v in want.items()):
            total += float(value)
    return total


def logged(agent: Agent, *words: str) -> str | None:
    """The first line of the agent's log containing every one of `words` (case-insensitive), or None."""
    lowered = [w.lower() for w in words]
    return next((ln for ln in agent_log(agent).splitlines() if all(w in ln.lower() for w in lowered)), None)


# --------------------------------------------------------------------------------------------------- tamper


@pytest.mark.parametrize("direction", ["to-target", "to-caller"])
def test_a_tampering_hub_never_delivers_altered_bytes(tmp_path: Path, direction: str) -> None:
    """`to-target`: the hub alters what bob's entrance sends (alice's exit must notice); `to-caller`: what alice's
    exit sends back (bob's entrance must notice)."""
    env = {"ZTM_EVIL_HUB": "tamper", "ZTM_EVIL_TAMPER_AFTER": str(TAMPER_AFTER), "ZTM_EVIL_TAMPER_DIRECTION": direction}
    mesh = hostile_mesh(tmp_path, env)
    with Recorder() as target:
        open_outbound(mesh.alice, "tcp/rec", target.port)
        port = open_inbound(mesh.bob, "tcp/rec", "--exit-users", "alice")
        # Control: short streams (under TAMPER_AFTER bytes) are untouched by this hub; one stays open throughout.
        wait_until(lambda: exchange(port, b"warm-up") == b"warm-up", 20, "bob's entrance to reach alice's exit")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as held:
            held.sendall(b"held-1")
            assert _recv_exactly(held, 6) == b"held-1"

            data = b"tampered" + os.urandom(256 << 10)
            before = len(target.received)
            answer = exchange(port, data)
            # The target's connection of that stream (it may have received nothing: the altered record was the first)
            index = wait_until(lambda: before if len(target.received) > before else None, 10, "the tampered stream")
            wait_until(lambda: target.ended[index], 15, "the target's connection of the tampered stream to end")
            received = bytes(target.received[index])
            target_intact = data.startswith(received)
            assert target_intact, (
                f"alice's target received altered bytes: {len(received)} bytes, the first difference at offset "
                f"{first_difference(received, data)} (the hub flips the byte at {TAMPER_AFTER})"
            )
            client_intact = data.startswith(answer)  # the target echoes: bob's client may only get back what was sent
            assert client_intact, (
                f"bob's client received altered bytes: {len(answer)} bytes, the first difference at offset "
                f"{first_difference(answer, data)} (the hub flips the byte at {TAMPER_AFTER})"
            )
            assert len(answer) < len(data), (
                f"bob's client got the whole answer ({len(answer)} bytes) of a tampered stream"
            )
            # Other streams between the same agents keep working: the held one and a new one.
            held.sendall(b"held-2")
            assert _recv_exactly(held, 6) == b"held-2", "the stream held open across the tampering stopped working"
        assert exchange(port, b"after") == b"after", "a new stream after the tampered one did not work"
    e2e_integrity_failure_counted(mesh.alice if direction == "to-target" else mesh.bob)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n and (chunk := sock.recv(n - len(got))):
        got += chunk
    return got


def e2e_integrity_failure_counted(receiver: Agent) -> None:
    """With the e2e layer: the receiving endpoint counted the altered record and logged why."""
    wait_until(
        lambda: metric(receiver, "ztm_agent_e2e_failures_total", reason="integrity") >= 1,
        10,
        'ztm_agent_e2e_failures_total{reason="integrity"} >= 1 on the receiving agent',
    )
    wait_until(lambda: logged(receiver, "e2e", "integrity"), 10, "a log line with 'e2e' and 'integrity'")


# ----------------------------------------------------------------------------------------------- forge-caller


def test_a_hub_naming_another_caller_does_not_grant_its_rights(tmp_path: Path) -> None:
    mesh = hostile_mesh(tmp_path, {"ZTM_EVIL_HUB": "forge-caller", "ZTM_EVIL_CALLER": "hq"})
    with EchoServer() as echo:
        open_outbound(mesh.alice, "tcp/only-root", echo.port, extra=("--users", "root"))
        open_outbound(mesh.alice, "tcp/open", echo.port)
        root_port = open_inbound(mesh.hq, "tcp/only-root", "--exit-users", "alice")
        bob_only_root = open_inbound(mesh.bob, "tcp/only-root", "--exit-users", "alice")
        bob_open = open_inbound(mesh.bob, "tcp/open", "--exit-users", "alice")
        # Controls: root may use the exit that admits only root; bob may use the open one (with e2e, on the rights
        # of the certificate's user, bob, whatever the hub claims).
        wait_until(lambda: echoes(root_port), 20, "root's entrance to use alice's root-only exit")
        wait_until(lambda: echoes(bob_open), 20, "bob's entrance to use alice's open exit")
        wait_until(lambda: uses_exit(mesh.bob, "tcp/only-root", "alice-office"), 10, "bob to find the root-only exit")

        for attempt in range(3):
            data = f"bob posing as root, attempt {attempt}".encode()
            answer = exchange(bob_only_root, data)
            assert answer == b"", (
                f"alice's root-only exit let bob's connection through on the hub's word that the caller was root's "
                f"endpoint `hq`: it answered {answer!r}"
            )
    e2e_caller_mismatch_logged(mesh.alice, "bob")
    # With e2e too: the exit refused on the rights of the certificate's user and counted it as a refusal.
    assert described(mesh.alice, "outbound", "tcp/only-root")["refused"] >= 1


def test_a_hub_naming_another_caller_of_a_relayed_call_does_not_get_the_log(tmp_path: Path) -> None:
    """The same forgery on a relayed call (issue 13 lists remote logs among the relayed calls that carry user data):
    an endpoint's log goes to its owner and to root only, whatever the hub says about who asks."""
    env = {"ZTM_EVIL_HUB": "forge-caller", "ZTM_EVIL_CALLER": "hq", "ZTM_EVIL_FORGE_CALLS": "1"}
    mesh = hostile_mesh(tmp_path, env)
    marker = f"joined mesh {MESH} as alice-office"
    wait_until(lambda: logged(mesh.alice, marker), 10, "alice's log to show her join")
    assert marker in mesh.hq.cli("log", "ep", "alice-office").stdout, "control: root could not read alice's log"

    cp = mesh.bob.cli("log", "ep", "alice-office", check=False)
    assert cp.returncode != 0, (
        f"alice's endpoint handed its log to bob on the hub's word that the caller was root's endpoint `hq`: "
        f"{len(cp.stdout.splitlines())} lines"
    )
    assert marker not in cp.stdout + cp.stderr
    one_line_error(cp)


def e2e_caller_mismatch_logged(exit_agent: Agent, user: str) -> None:
    """With the e2e layer: the exit counted and logged that the hub named another caller than the certificate."""
    wait_until(
        lambda: metric(exit_agent, "ztm_agent_e2e_caller_mismatch_total") >= 1,
        10,
        "ztm_agent_e2e_caller_mismatch_total >= 1 on the exit",
    )
    wait_until(lambda: logged(exit_agent, "hub named", user), 10, f"a log line with 'hub named' and {user!r}")


# ----------------------------------------------------------------------------------------------- ignore-evict


def test_a_hub_ignoring_an_eviction_cannot_keep_the_user_in(tmp_path: Path) -> None:
    mesh = hostile_mesh(tmp_path, {"ZTM_EVIL_HUB": "ignore-evict"})
    with EchoServer() as echo:
        open_outbound(mesh.alice, "tcp/echo", echo.port)  # any member may use it: only the eviction stands in the way
        port = open_inbound(mesh.bob, "tcp/echo", "--exit-users", "alice")
        wait_until(lambda: echoes(port), 20, "bob's entrance to use alice's exit before the eviction")

        mesh.hq.cli("evict", "bob")
        # Controls: the hub did revoke bob's certificate in the CRL it serves, yet keeps bob online and relaying.
        bob_serial = pki.cert_from_pem((mesh.bob.data / "meshes" / MESH / "ep.crt").read_text()).serial_number
        with HubClient(mesh.hub.address, mesh.hq.data / "meshes" / MESH) as client:
            status, body = client.json("GET", "/api/crl")
        assert status == 200, body
        crl = x509.load_pem_x509_crl(body["crl"].encode())
        assert crl.get_revoked_certificate_by_serial_number(bob_serial) is not None, "the hub's CRL spares bob"
        assert by_name(mesh.hq.endpoints())["bob-laptop"]["online"], "the evil hub hung up on bob after all"

        wait_until(
            lambda: not echoes(port), 10, "bob's tunnelled connections through alice's exit to fail after his eviction"
        )
        holds_for(lambda: not echoes(port), 3.0, "bob's tunnelled connections failing after his eviction")
    e2e_revoked_caller_refused(mesh.alice)


def e2e_revoked_caller_refused(exit_agent: Agent) -> None:
    """With the e2e layer: the exit refused bob's certificate because the CA's CRL revokes it. The evil hub changes
    nothing about bob's certificate (still in its validity, of this mesh, issued by the CA) but the CRL, so the
    reason is "revoked" whether bob's stream came with a new handshake or resumed a session made before the
    eviction (the exit checks the session's peer against the CRL it holds on every stream)."""
    wait_until(
        lambda: metric(exit_agent, "ztm_agent_e2e_failures_total", reason="revoked") >= 1,
        10,
        'ztm_agent_e2e_failures_total{reason="revoked"} >= 1 on the exit',
    )


# ----------------------------------------------------------------------------------------------- the evil hub


def test_the_evil_hub_refuses_a_bad_setting(tmp_path: Path) -> None:
    """A mistyped mode or number is one line on stderr (exit 2), not a hub that quietly behaves."""
    cases = {
        "ZTM_EVIL_HUB": ({"ZTM_EVIL_HUB": "tampr"}, "ZTM_EVIL_HUB must be one of tamper, forge-caller, ignore-evict"),
        "after": ({"ZTM_EVIL_HUB": "tamper", "ZTM_EVIL_TAMPER_AFTER": "16k"}, "ZTM_EVIL_TAMPER_AFTER must be a whole"),
        "direction": ({"ZTM_EVIL_HUB": "tamper", "ZTM_EVIL_TAMPER_DIRECTION": "up"}, "must be one of to-target"),
        "caller": ({"ZTM_EVIL_HUB": "forge-caller"}, "ZTM_EVIL_CALLER must name the endpoint"),
        "calls": (
            {"ZTM_EVIL_HUB": "forge-caller", "ZTM_EVIL_CALLER": "hq", "ZTM_EVIL_FORGE_CALLS": "yes"},
            "ZTM_EVIL_FORGE_CALLS must be 0 or 1",
        ),
    }
    for what, (env, expected) in cases.items():
        cp = run([*EVIL_HUB, "run", "hub", "--listen", "127.0.0.1:1"], env=base_env(env), cwd=tmp_path, check=False)
        assert cp.returncode == 2, (what, cp.returncode, cp.stderr)
        line = one_line_error(cp)
        assert line.startswith("evil_hub: ") and expected in line, (what, line)
