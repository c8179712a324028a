"""Attacks on the choice of exits and on endpoint references, against real hub and agent processes on 127.0.0.1.

Issue 12, items 4 and 5:

* A member (mallory) offers the same tunnel name as alice's exit (`outbound tcp/db`) or a proxy exit for everything
  (`*`): alice's entrance must never hand her a connection by default (only exits of alice's own user or of root),
  and may when alice names mallory explicitly (`--exit-users mallory`).
* A member names an endpoint after another endpoint's id, to pass an `--entrances` check or take an `--exits` pin:
  names that parse as ids are refused by the agent (`ztm join --as`) and by the hub (`POST /api/enroll`), and a
  reference given by name is resolved to one id when it is configured.

Every wait polls with a deadline (tests/support.py).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reliability.hubclient import HubClient
from support import (
    Agent,
    Hub,
    Proc,
    free_port,
    invite,
    one_line_error,
    restart_agent,
    start_agent,
    start_hub_and_agents,
    wait_until,
)
from ztm import pki
from ztm.agent.store import AgentStore

MESH = "m"
CONNECTIONS = 24
"""Connections made through an entrance where a foreign exit competes: with round-robin over two exits, 24 of them
all missing mallory by chance has a probability of 2**-24."""


class TagServer:
    """A threaded TCP server on 127.0.0.1 that sends its tag and closes; counts the connections it took."""

    def __init__(self, tag: str) -> None:
        self.tag = tag.encode()
        self.count = 0
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, name=f"tag-{tag}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.count += 1
            with contextlib.suppress(OSError), conn:
                conn.sendall(self.tag)

    def close(self) -> None:
        self.sock.close()


def read_all(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


def through_tunnel(port: int) -> bytes:
    """The tag of whichever server the entrance on `port` reached (b"" if the connection was closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return read_all(sock)


def through_socks(proxy: int, port: int) -> bytes:
    """SOCKS5 CONNECT to 127.0.0.1:`port` through the proxy entrance on `proxy`; the server's tag, or b"" when the
    entrance refused."""
    with socket.create_connection(("127.0.0.1", proxy), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        if sock.recv(2) != b"\x05\x00":
            return b""
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", port))
        reply = b""
        while len(reply) < 10:
            chunk = sock.recv(10 - len(reply))
            if not chunk:
                return b""
            reply += chunk
        if reply[1] != 0:
            return b""
        return read_all(sock)


def ep_id(agent: Agent) -> str:
    ident = pki.identity_of(pki.cert_from_pem((agent.data / "meshes" / MESH / "ep.crt").read_text()))
    assert ident.ep_id is not None
    return ident.ep_id


@dataclass
class World:
    tmp: Path
    hub: Hub
    hq: Agent
    """root's endpoint (invites the others)."""
    laptop: Agent
    """alice's entrance, endpoint `alice-laptop`."""
    office: Agent
    """alice's exit, endpoint `alice-office`."""
    mallory: Agent
    """user mallory's endpoint `mallory-box`: the attacker, a member like any other."""
    alice_server: TagServer
    mallory_server: TagServer


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("exits")
    procs: list[Proc] = []
    alice_server, mallory_server = TagServer("alice"), TagServer("mallory")
    try:
        hub, agents = start_hub_and_agents(tmp, ("hq", "laptop", "office", "mallory"))
        procs += [hub.proc, *(a.proc for a in agents.values())]
        hq = agents["hq"]
        hq.join(MESH, "hq", hub.permit)
        agents["laptop"].join(MESH, "alice-laptop", invite(hq, agents["laptop"], "alice", tmp / "laptop.json"))
        agents["office"].join(MESH, "alice-office", invite(hq, agents["office"], "alice", tmp / "office.json"))
        agents["mallory"].join(MESH, "mallory-box", invite(hq, agents["mallory"], "mallory", tmp / "mallory.json"))
        yield World(tmp, hub, hq, agents["laptop"], agents["office"], agents["mallory"], alice_server, mallory_server)
    finally:
        alice_server.close()
        mallory_server.close()
        for proc in reversed(procs):
            proc.stop()


def _exits_of(agent: Agent, service: str) -> set[str]:
    tunnels = agent.cli_json("tunnel", "get", "tunnel")
    found = [t for t in tunnels if t.get("tunnel") == service]
    return {str(e.get("name")) for e in found[0]["outbound"] if e.get("online")} if found else set()


# ------------------------------------------------------------------------------------------------------ item 4


def test_a_tunnel_entrance_never_uses_another_users_exit_by_default(world: World) -> None:
    w = world
    w.office.cli("tunnel", "open", "outbound", "tcp/db", "--targets", f"127.0.0.1:{w.alice_server.port}")
    # The attack: mallory offers alice's tunnel name, with her own server behind it.
    w.mallory.cli("tunnel", "open", "outbound", "tcp/db", "--targets", f"127.0.0.1:{w.mallory_server.port}")
    wait_until(lambda: _exits_of(w.laptop, "tcp/db") == {"alice-office", "mallory-box"}, 10, "both exits announced")
    port = free_port()
    w.laptop.cli("tunnel", "open", "inbound", "tcp/db", "--listen", str(port))
    wait_until(lambda: through_tunnel(port) == b"alice", 10, "alice's tunnel to work")

    before = w.mallory_server.count
    tags = [through_tunnel(port) for _ in range(CONNECTIONS)]
    assert tags == [b"alice"] * CONNECTIONS, f"connections reached another user's exit: {tags}"
    assert w.mallory_server.count == before == 0

    # describe shows which exits the entrance uses, each with its endpoint and user.
    view = w.laptop.cli_json("tunnel", "describe", "inbound", "tcp/db")
    used = {(e["name"], e["user"]) for e in view["exit_endpoints"]}
    assert used == {("alice-office", "alice")}, view
    text = w.laptop.cli("tunnel", "describe", "inbound", "tcp/db").stdout
    assert "alice-office" in text and "alice" in text and "mallory-box" not in text, text

    # Without an exit of her own user (or root), alice's connections are closed, never handed to mallory.
    w.office.cli("tunnel", "close", "outbound", "tcp/db")
    wait_until(lambda: _exits_of(w.laptop, "tcp/db") == {"mallory-box"}, 10, "alice's exit to be gone")
    wait_until(lambda: through_tunnel(port) == b"", 10, "alice's entrance to find no exit")
    assert [through_tunnel(port) for _ in range(4)] == [b""] * 4
    assert w.mallory_server.count == 0


def test_a_tunnel_entrance_uses_another_users_exit_when_named(world: World) -> None:
    w = world
    w.office.cli("tunnel", "open", "outbound", "tcp/named", "--targets", f"127.0.0.1:{w.alice_server.port}")
    w.mallory.cli("tunnel", "open", "outbound", "tcp/named", "--targets", f"127.0.0.1:{w.mallory_server.port}")
    wait_until(lambda: _exits_of(w.laptop, "tcp/named") == {"alice-office", "mallory-box"}, 10, "both exits")
    port = free_port()
    w.laptop.cli("tunnel", "open", "inbound", "tcp/named", "--listen", str(port), "--exit-users", "mallory")
    wait_until(lambda: through_tunnel(port) == b"mallory", 10, "a connection to reach mallory's exit")
    view = w.laptop.cli_json("tunnel", "describe", "inbound", "tcp/named")
    assert view["exit_users"] == ["mallory"]
    assert {(e["name"], e["user"]) for e in view["exit_endpoints"]} == {
        ("alice-office", "alice"),
        ("mallory-box", "mallory"),
    }

    # --exits pins an endpoint of any user; the name is resolved to its id when configured.
    mallory_id = ep_id(w.mallory)
    w.laptop.cli("tunnel", "open", "inbound", "tcp/named", "--listen", str(port), "--exits", "mallory-box")
    view = w.laptop.cli_json("tunnel", "describe", "inbound", "tcp/named")
    assert view["exits"] == [mallory_id], view
    assert "mallory-box" in w.laptop.cli("tunnel", "describe", "inbound", "tcp/named").stdout
    assert [through_tunnel(port) for _ in range(3)] == [b"mallory"] * 3


def test_a_proxy_entrance_never_uses_another_users_exit_by_default(world: World) -> None:
    w = world
    w.office.cli("proxy", "config", "--add-target", "127.0.0.0/8")
    w.mallory.cli("proxy", "config", "--add-target", "*")  # the attack: an exit for everything

    def exit_names() -> set[str]:
        return {str(e["name"]) for e in w.laptop.cli_json("proxy", "get", "exits") if e.get("online")}

    wait_until(lambda: {"alice-office", "mallory-box"} <= exit_names(), 10, "both proxy exits announced")
    proxy = free_port()
    w.laptop.cli("proxy", "config", "--set-listen", str(proxy))
    wait_until(lambda: through_socks(proxy, w.alice_server.port) == b"alice", 10, "alice's proxy to work")

    def mallory_streams() -> int:
        counters = w.mallory.cli_json("proxy", "get")["counters"]
        return sum(v for k, v in counters.items() if k.startswith("exit"))

    tags = [through_socks(proxy, w.alice_server.port) for _ in range(CONNECTIONS)]
    assert tags == [b"alice"] * CONNECTIONS
    assert mallory_streams() == 0, "connections reached another user's proxy exit"

    # `ztm proxy get exits` says whose each exit is and whether this entrance uses it.
    exits = {e["name"]: e for e in w.laptop.cli_json("proxy", "get", "exits")}
    assert (exits["alice-office"]["user"], exits["alice-office"]["used"]) == ("alice", True)
    assert (exits["mallory-box"]["user"], exits["mallory-box"]["used"]) == ("mallory", False)
    text = w.laptop.cli("proxy", "get", "exits").stdout
    assert "mallory" in text and "alice-office" in text, text

    # Named explicitly, mallory's exit is used.
    w.laptop.cli("proxy", "config", "--exit-users", "mallory")
    wait_until(lambda: through_socks(proxy, w.alice_server.port) and mallory_streams() > 0, 10, "mallory's exit used")
    w.laptop.cli("proxy", "config", "--exit-users")
    w.laptop.cli("proxy", "config", "--exits", "mallory-box")
    assert w.laptop.cli_json("proxy", "get")["exits"] == [ep_id(w.mallory)]
    w.laptop.cli("proxy", "config", "--exits")
    assert w.laptop.cli_json("proxy", "get")["exits"] == []


# ------------------------------------------------------------------------------------------------------ item 5


def test_a_name_that_is_an_id_is_refused_by_agent_and_hub(world: World) -> None:
    w = world
    laptop_id = ep_id(w.laptop)
    # The attack: another endpoint of mallory's named after alice's laptop's id, to pass alice's
    # `--entrances <laptop id>` check and to take pins on that id.
    imposter = start_agent(w.tmp, "imposter")
    permit = invite(w.hq, imposter, "mallory", w.tmp / "imposter.json")
    for name in (laptop_id, str(uuid.uuid4()), laptop_id.upper(), laptop_id.replace("-", "")):
        line = one_line_error(imposter.cli("join", MESH, "--as", name, "--permit", str(permit), check=False))
        assert "id" in line and name in line, line
    assert laptop_id not in {e["name"] for e in w.hq.endpoints()}

    # The hub refuses such a name too, whatever the agent does.
    mesh_dir = w.mallory.data / "meshes" / MESH
    csr = pki.csr_to_pem(pki.make_csr(pki.key_from_pem((mesh_dir / "ep.key").read_text()), name="x"))
    with HubClient(w.hub.address, mesh_dir, user_cert=True) as client:
        for name in (laptop_id, laptop_id.replace("-", "")):
            body = {"ep_id": str(uuid.uuid4()), "name": name, "csr": csr}
            status, answer = client.json("POST", "/api/enroll", body)
            assert status == 400 and "id" in answer["error"], (status, answer)
    assert laptop_id not in {e["name"] for e in w.hq.endpoints()}


def test_references_are_resolved_to_ids_when_configured(world: World) -> None:
    w = world
    laptop_id, office_id = ep_id(w.laptop), ep_id(w.office)
    w.office.cli("tunnel", "open", "outbound", "tcp/pinned", "--targets", f"127.0.0.1:{w.alice_server.port}",
                 "--entrances", "alice-laptop")  # fmt: skip
    view = w.office.cli_json("tunnel", "describe", "outbound", "tcp/pinned")
    assert view["entrances"] == [laptop_id], view
    text = w.office.cli("tunnel", "describe", "outbound", "tcp/pinned").stdout
    assert "alice-laptop" in text and laptop_id in text, text
    port = free_port()
    w.laptop.cli("tunnel", "open", "inbound", "tcp/pinned", "--listen", str(port), "--exits", office_id)
    assert w.laptop.cli_json("tunnel", "describe", "inbound", "tcp/pinned")["exits"] == [office_id]
    wait_until(lambda: through_tunnel(port) == b"alice", 10, "the pinned tunnel to work")

    # An unknown name is a clear one-line error, and the configuration stays as it was.
    for ref in ("nosuch", str(uuid.uuid4())):
        cp = w.laptop.cli("tunnel", "open", "inbound", "tcp/pinned", "--listen", str(port), "--exits", ref,
                          check=False)  # fmt: skip
        assert ref in one_line_error(cp)
    assert w.laptop.cli_json("tunnel", "describe", "inbound", "tcp/pinned")["exits"] == [office_id]
    assert through_tunnel(port) == b"alice"


def test_names_stored_before_they_were_resolved_become_ids(world: World) -> None:
    """A configuration written before this change holds names: the agent resolves them to ids once it is online."""
    w = world
    office_id = ep_id(w.office)
    port = free_port()
    w.laptop.cli("tunnel", "open", "inbound", "tcp/legacy", "--listen", str(port), "--exits", "alice-office")
    w.laptop.cli("proxy", "config", "--exits", "alice-office")
    w.laptop.proc.stop()
    store = AgentStore(w.laptop.data / "ztm.db")  # what an older agent stored: the names as given
    try:
        stored = store.app_items(MESH, "tunnel")["inbound/tcp/legacy"]
        assert isinstance(stored, dict)
        store.app_set(MESH, "tunnel", "inbound/tcp/legacy", {**stored, "exits": ["alice-office"]})
        store.app_set(MESH, "proxy", "exits", ["alice-office"])
    finally:
        store.close()
    restart_agent(w.laptop)
    wait_until(
        lambda: w.laptop.cli_json("tunnel", "describe", "inbound", "tcp/legacy")["exits"] == [office_id],
        20,
        "the stored name to become alice-office's id",
    )
    wait_until(lambda: w.laptop.cli_json("proxy", "get")["exits"] == [office_id], 20, "the proxy's too")
    w.laptop.cli("proxy", "config", "--exits")
