"""Attacks on an endpoint by insiders of a mesh, against real hub and agent processes on 127.0.0.1 (issue 12).

- Cross-mesh identity on the direct listener: the operator of mesh B (who holds B's CA key) forges a certificate
  that claims to be root's endpoint of mesh A, signs it with B's CA and presents it to an agent that joined both
  meshes, naming mesh B in SNI. The agent must take the identity's mesh from the CA that verified the chain: the
  channel is refused (and counted), never served as root of mesh A.
- App package bombs: a malicious member publishes an app whose package is a gzip bomb (a ~0.5 MiB package of
  512 MiB of zeros) or holds a GNU sparse member (a few KB that unpack to 256 MiB). The downloader must refuse
  both with one line, install nothing, and keep its memory bounded while refusing (its peak RSS, VmHWM).
- Terminal and root's remote configuration are opt-in: the hub's operator (who holds the CA) mints alice's identity
  and asks alice's endpoint for a shell; root (whose key the operator also has) reconfigures alice's tunnels and
  proxy from afar. Both are refused until alice turns them on, on that endpoint (`ztm terminal enable`, `ztm
  root-admin on`), and no relayed call can turn them on.
- Proxy deny rules on names: `deny bob localhost` at an exit must also deny bob 127.0.0.1 (and any other name of
  that address): the exit resolves the rule's name and denies its addresses too.

Every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import shutil
import socket
import sqlite3
import ssl
import subprocess
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from integration.test_proxy import socks_code
from support import (
    Agent,
    Hub,
    free_port,
    invite,
    one_line_error,
    restart_agent,
    start_agent,
    start_hub,
    start_hub_and_agents,
    wait_until,
)
from ztm import pki
from ztm.permit import make_permit


def _hub_ca(hub: Hub) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """What the hub's operator holds: the mesh CA's key and certificate (from the hub's database)."""
    key, cert = hub.ca_pems()
    return pki.key_from_pem(key), pki.cert_from_pem(cert)


def _identity(agent: Agent, mesh: str) -> pki.Identity:
    cert = pki.cert_from_pem((agent.data / "meshes" / mesh / "ep.crt").read_text())
    return pki.identity_of(cert)


def _metric(agent: Agent, name: str) -> float:
    status, text = agent.api("GET", "/api/metrics")
    assert status == 200, text
    total = 0.0
    for line in str(text).splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ------------------------------------------------------------------------------- item 3: cross-mesh identity


@dataclass
class TwoMeshes:
    hub_a: Hub
    hub_b: Hub
    home: Agent
    """root's endpoint in mesh A (its id is what the forger claims)."""
    victim: Agent
    """joined to mesh A (as `exit`, with an outbound only root's `home` may use) and to mesh B; listens --direct."""
    direct: int
    target: socket.socket
    """The service behind the victim's outbound: whoever reaches it got through."""
    tmp: Path


@pytest.fixture
def two_meshes(tmp_path: Path) -> Iterator[TwoMeshes]:
    hub_a, hub_b = start_hub(tmp_path, name="hub-a"), start_hub(tmp_path, name="hub-b")
    direct = free_port()
    home = start_agent(tmp_path, "home")
    victim = start_agent(tmp_path, "victim", extra=["--direct", f"127.0.0.1:{direct}"])
    target = socket.create_server(("127.0.0.1", 0))
    target.settimeout(0.2)
    try:
        home.join("a", "home", hub_a.permit)
        victim.join("a", "exit", hub_a.permit)
        victim.join("b", "exit-b", hub_b.permit)
        port = target.getsockname()[1]
        victim.cli("--mesh", "a", "tunnel", "open", "outbound", "tcp/db", "--targets", f"127.0.0.1:{port}",
                   "--users", "root", "--entrances", "home")  # fmt: skip
        yield TwoMeshes(hub_a, hub_b, home, victim, direct, target, tmp_path)
    finally:
        target.close()
        for proc in (victim.proc, home.proc, hub_b.proc, hub_a.proc):
            proc.stop()


def _forge_cross_mesh(world: TwoMeshes) -> tuple[Path, Path]:
    """A certificate signed by mesh B's CA that says `ztm://A/user/root` + `ztm://A/ep/HOME`; (cert, key) files."""
    ca_key_b, ca_cert_b = _hub_ca(world.hub_b)
    home = _identity(world.home, "a")
    assert home.ep_id is not None
    key = pki.new_key()
    now = dt.datetime.now(dt.UTC)
    cert = pki._issue_leaf(  # the CA's own signing step, with SANs of the other mesh
        ca_key_b,
        ca_cert_b,
        cn=home.ep_id,
        sans=[pki._uri(home.mesh_id, "user", "root"), pki._uri(home.mesh_id, "ep", home.ep_id)],
        eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        public_key=key.public_key(),
        now=now,
        lifetime=dt.timedelta(hours=1),
    )
    cert_file, key_file = world.tmp / "forged.crt", world.tmp / "forged.key"
    cert_file.write_text(pki.cert_to_pem(cert))
    key_file.write_text(pki.key_to_pem(key))
    return cert_file, key_file


def _direct_greeting(port: int, sni: str, cert: Path, key: Path, greeting: dict[str, str]) -> bytes:
    """TLS to the direct listener with (cert, key), SNI `sni`; send the greeting; the answer line (b'' if closed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the attacker does not care who the server is
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=sni) as tls:
                tls.sendall(json.dumps(greeting).encode() + b"\n")
                answer = b""
                while not answer.endswith(b"\n"):
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                return answer
        except (ssl.SSLError, ConnectionError):
            return b""


def test_cross_mesh_certificate_is_not_served_as_the_other_mesh(two_meshes: TwoMeshes) -> None:
    world = two_meshes
    mesh_b = _identity(world.victim, "b").mesh_id
    cert, key = _forge_cross_mesh(world)

    def listening() -> bool:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", world.direct), timeout=1).close()
            return True
        return False

    wait_until(listening, 10, "the victim's direct listener")
    before = _metric(world.victim, "ztm_agent_direct_wrong_mesh_total")
    answer = _direct_greeting(world.direct, f"{mesh_b}.ztm", cert, key, {"app": "tunnel", "service": "tcp/db"})
    reached = False
    with contextlib.suppress(TimeoutError, OSError):
        world.target.accept()[0].close()
        reached = True
    assert answer == b"" and not reached, (
        f"a certificate of mesh B's CA was served as root of mesh A: answer {answer!r}, target reached: {reached}"
    )
    wait_until(
        lambda: _metric(world.victim, "ztm_agent_direct_wrong_mesh_total") > before,
        10,
        "the victim to count the refused cross-mesh certificate",
    )
    world.victim.proc.assert_alive()


# ------------------------------------------------------------------------------------- item 11: package bombs

MANIFEST = {"name": "", "version": "1.0.0", "provider": "attacker", "description": "a bomb", "entry": "app:App"}
APP_PY = "from ztm.agent.apps import MeshApp\n\n\nclass App(MeshApp):\n    name = 'x'\n"


@dataclass
class Market:
    hub: Hub
    evil: Agent
    """a member who publishes packages it crafted."""
    victim: Agent
    tmp: Path


@pytest.fixture
def market(tmp_path: Path) -> Iterator[Market]:
    tmp = tmp_path
    hub, agents = start_hub_and_agents(tmp, ("evil", "victim"))
    evil, victim = agents["evil"], agents["victim"]
    try:
        evil.join("m", "evil", hub.permit)
        victim.join("m", "victim", hub.permit)
        yield Market(hub, evil, victim, tmp)
    finally:
        for proc in (victim.proc, evil.proc, hub.proc):
            proc.stop()


def _app_dir(parent: Path, name: str) -> Path:
    root = parent / name
    root.mkdir()
    (root / "ztm-app.json").write_text(json.dumps({**MANIFEST, "name": name}))
    (root / "app.py").write_text(APP_PY)
    return root


def _publish_crafted(world: Market, name: str, package: bytes) -> str:
    """The evil member publishes app `name`, then swaps in `package` (announced with its own SHA-256, as a
    modified agent would); returns that SHA-256 once the victim sees it offered."""
    evil = world.evil
    shutil.copytree(_app_dir(world.tmp, name), evil.data / "apps" / name)
    evil.cli("publish", "app", name)
    digest = hashlib.sha256(package).hexdigest()
    evil.proc.stop()
    (evil.data / "app-packages" / f"{digest}.tar.gz").write_bytes(package)
    db = sqlite3.connect(evil.data / "ztm.db")
    try:
        entry = {"name": name, "version": "1.0.0", "sha256": digest, "size": len(package), "published_at": 0}
        with db:
            db.execute(
                "UPDATE app_config SET value = ? WHERE app = 'apps' AND key = ?",
                (json.dumps(entry), f"published/{name}"),
            )
    finally:
        db.close()
    restart_agent(evil)

    def offered() -> bool:
        rows = world.victim.cli_json("get", "app", "--available")
        return any(r.get("name") == name and r.get("sha256") == digest for r in rows)

    wait_until(offered, 30, f"the victim to see app {name} offered with the crafted package")
    return digest


def _peak_rss_mib(agent: Agent) -> float:
    for line in Path(f"/proc/{agent.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def _installed(agent: Agent, name: str) -> bool:
    return any(a.get("name") == name for a in agent.cli_json("get", "app")) or (agent.data / "apps" / name).exists()


def _gzip_bomb(name: str, zeros: int) -> bytes:
    """A .tar.gz: the app's manifest, then one member of `zeros` zero bytes, compressed at level 9."""
    manifest = json.dumps({**MANIFEST, "name": name}).encode()
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = []
    for member, size in ((tarfile.TarInfo("ztm-app.json"), len(manifest)), (tarfile.TarInfo("big.bin"), zeros)):
        member.size = size
        out.append(packer.compress(member.tobuf(format=tarfile.GNU_FORMAT)))
        if member.name == "ztm-app.json":
            out.append(packer.compress(manifest + bytes(-len(manifest) % 512)))
    block = bytes(1 << 20)
    for _ in range(zeros >> 20):
        out.append(packer.compress(block))
    out.append(packer.compress(bytes(1024)))  # end of archive
    out.append(packer.flush())
    return b"".join(out)


def test_gzip_bomb_is_refused_with_bounded_memory(market: Market) -> None:
    zeros = 512 << 20
    package = _gzip_bomb("gzbomb", zeros)
    assert len(package) < 1 << 20
    _publish_crafted(market, "gzbomb", package)
    before = _peak_rss_mib(market.victim)
    cp = market.victim.cli("download", "app", "gzbomb", check=False, timeout=120)
    peak = _peak_rss_mib(market.victim)
    assert cp.returncode != 0, f"the gzip bomb was installed: {cp.stdout}"
    error = one_line_error(cp)
    assert "Traceback" not in cp.stderr and "unpacked" in error, error
    assert peak - before < 100, (
        f"unpacking a {len(package)}-byte package took the agent from {before:.0f} to {peak:.0f} MiB"
    )
    assert not _installed(market.victim, "gzbomb")
    assert not list(market.victim.data.glob("apps/*")), "the refused package left files behind"
    market.victim.proc.assert_alive()


def test_gnu_sparse_member_is_refused(market: Market) -> None:
    (market.tmp / "sparse-src").mkdir()
    src = _app_dir(market.tmp / "sparse-src", "sparse")
    with open(src / "big.bin", "wb") as f:
        f.truncate(256 << 20)  # a hole: no data on disk
    package_file = market.tmp / "sparse.tar.gz"
    subprocess.run(
        [
            "tar",
            "--sparse",
            "--format=gnu",
            "-czf",
            str(package_file),
            "-C",
            str(src),
            "ztm-app.json",
            "app.py",
            "big.bin",
        ],
        check=True,
    )
    package = package_file.read_bytes()
    assert len(package) < 16 << 10
    with tarfile.open(package_file) as tar:
        assert tar.getmember("big.bin").issparse(), "GNU tar did not make a sparse member"
    _publish_crafted(market, "sparse", package)
    disk = shutil.disk_usage(market.victim.data).free
    cp = market.victim.cli("download", "app", "sparse", check=False, timeout=120)
    assert cp.returncode != 0, f"a package with a GNU sparse member was installed: {cp.stdout}"
    error = one_line_error(cp)
    assert "sparse" in error and "Traceback" not in cp.stderr, error
    assert not _installed(market.victim, "sparse")
    assert not list(market.victim.data.glob("apps/*")), "the refused package left files behind"
    assert disk - shutil.disk_usage(market.victim.data).free < 64 << 20
    market.victim.proc.assert_alive()


# ------------------------------------------------------------------------------ item 12: proxy deny by name


def test_a_deny_rule_on_a_name_also_denies_its_addresses(tmp_path: Path) -> None:
    hub, agents = start_hub_and_agents(tmp_path, ["office", "bob"])
    office, bob = agents["office"], agents["bob"]
    target = socket.create_server(("127.0.0.1", 0))
    try:
        office.join("m", "office", hub.permit)
        bob.join("m", "bob-laptop", invite(office, bob, "bob", tmp_path / "bob.json"))
        office.cli("proxy", "config", "--add-target", "localhost", "127.0.0.0/8")
        office.cli("proxy", "rules", "--deny", "bob", "localhost")
        proxy = free_port()
        bob.cli("proxy", "config", "--set-listen", str(proxy))
        port = target.getsockname()[1]
        wait_until(lambda: socks_code(proxy, "localhost", port) == 0x02, 20, "bob to be denied localhost by name")
        # The same host by address: SOCKS reply 0x02 (not allowed by ruleset), not 0x00 (connected).
        code = socks_code(proxy, "127.0.0.1", port)
        assert code == 0x02, f"'deny bob localhost' let bob reach 127.0.0.1:{port} (SOCKS reply {code:#04x})"
        log = (office.data / "agent.log").read_text()
        assert "rule 1 (deny bob localhost) denies user 'bob' access to 127.0.0.1" in log, log[-2000:]
    finally:
        target.close()
        for proc in (bob.proc, office.proc, hub.proc):
            proc.stop()


# ----------------------------------------------------------- item 8: terminal and root's remote config, opt-in


@dataclass
class Office:
    hub: Hub
    office: Agent
    """alice's endpoint `office`: the target."""
    laptop: Agent
    """alice's other endpoint."""
    home: Agent
    """root's endpoint."""
    tmp: Path


@pytest.fixture
def office(tmp_path: Path) -> Iterator[Office]:
    hub, agents = start_hub_and_agents(tmp_path, ("home", "office", "laptop"))
    home, office, laptop = agents["home"], agents["office"], agents["laptop"]
    try:
        home.join("m", "home", hub.permit)
        office.join("m", "office", invite(home, office, "alice", tmp_path / "alice-office.json"))
        laptop.join("m", "laptop", invite(home, laptop, "alice", tmp_path / "alice-laptop.json"))
        for agent in (home, laptop):
            wait_until(lambda a=agent: "office" in a.online_names(), 30, f"{agent.name} to see office online")
        yield Office(hub, office, laptop, home, tmp_path)
    finally:
        for proc in (laptop.proc, office.proc, home.proc, hub.proc):
            proc.stop()


def _minted_permit(world: Office, user: str) -> Path:
    """What the hub's operator can make with the CA key: a permit for `user`, with a key of its own."""
    ca_key, ca_cert = _hub_ca(world.hub)
    key = pki.new_key()
    cert = pki.issue_user_cert(ca_key, ca_cert, user=user, public_key=key.public_key(), now=dt.datetime.now(dt.UTC))
    permit = make_permit(ca_cert, cert, [world.hub.address], private_key=key)
    path = world.tmp / f"minted-{user}.json"
    path.write_text(permit.to_json())
    return path


def test_terminal_is_off_until_the_owner_enables_it(office: Office) -> None:
    world = office
    operator = start_agent(world.tmp, "operator")
    operator.join("m", "operator", _minted_permit(world, "alice"))  # the hub operator, posing as alice
    wait_until(lambda: "office" in operator.online_names(), 30, "the operator to see office online")
    cp = operator.cli("terminal", "exec", "office", "--", "echo OWNED", check=False, timeout=30)
    assert cp.returncode != 0 and "OWNED" not in cp.stdout, (
        f"a minted owner identity got a shell on a fresh endpoint: {cp.stdout!r}"
    )
    assert "the terminal is off on endpoint 'office'" in one_line_error(cp) and "ztm terminal enable" in cp.stderr
    # No relayed call turns it on: the terminal app answers none, and root's config calls need root-admin.
    for caller in (operator, world.home):
        status, body = caller.api(
            "POST",
            "/api/meshes/m/endpoints/office/apps/terminal/call",
            {"method": "config", "params": {"enabled": True}},
        )
        assert status >= 400, body
    assert world.office.cli_json("terminal", "config")["enabled"] is False
    # The owner turns it on, on the endpoint itself: then the owner's sessions work (from the owner's laptop).
    assert "on" in world.office.cli("terminal", "enable").stdout
    assert world.laptop.cli("terminal", "exec", "office", "--", "echo in").stdout == "in\n"
    world.office.cli("terminal", "disable")
    cp = world.laptop.cli("terminal", "exec", "office", "--", "echo in", check=False)
    assert cp.returncode != 0 and "terminal is off" in cp.stderr
    refused = world.office.cli_json("terminal", "config")["refused"]
    assert refused >= 2, refused


def test_root_configures_others_endpoints_only_when_the_owner_allows_it(office: Office) -> None:
    world = office
    port = free_port()
    opened = ("ep", "office", "tunnel", "open", "outbound", "tcp/grab", "--targets", f"127.0.0.1:{port}")
    cp = world.home.cli(*opened, check=False)
    assert cp.returncode != 0, f"root reconfigured alice's tunnels without her consent: {cp.stdout}"
    assert "ztm root-admin on" in one_line_error(cp), cp.stderr
    cp = world.home.cli("ep", "office", "proxy", "config", "--add-target", "*", check=False)
    assert cp.returncode != 0, f"root reconfigured alice's proxy without her consent: {cp.stdout}"
    assert "ztm root-admin on" in one_line_error(cp), cp.stderr
    assert "grab" not in json.dumps(world.office.cli_json("tunnel", "get", "outbound"))
    # The owner may, from another endpoint of hers.
    world.laptop.cli("ep", "office", "proxy", "config", "--add-target", "10.0.0.0/8")
    # The owner allows root, on the endpoint: root's call works; turned off again, it is refused again.
    assert "root may configure" in world.office.cli("root-admin", "on").stdout
    assert world.office.cli_json("root-admin")["enabled"] is True
    world.home.cli(*opened)
    assert "grab" in json.dumps(world.office.cli_json("tunnel", "get", "outbound"))
    world.office.cli("root-admin", "off")
    cp = world.home.cli("ep", "office", "tunnel", "close", "outbound", "tcp/grab", check=False)
    assert cp.returncode != 0 and "ztm root-admin on" in cp.stderr
