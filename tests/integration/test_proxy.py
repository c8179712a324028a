"""The proxy app end to end, through the `ztm proxy` command line: real hub and agent processes on 127.0.0.1, real
HTTP and HTTPS servers (threads of this process, free ports, a certificate the test makes), and real clients: curl
through `socks5h://` and through the HTTP proxy (absolute-URI requests and CONNECT), and a hand-written SOCKS5 client
for what curl does not do (UDP ASSOCIATE, malformed requests).

Covered: both protocols on one port; names resolved at the exit; HTTPS through CONNECT and through SOCKS; a rule
denying a user (SOCKS reply 0x02, HTTP 403 with the reason); an unreachable target (SOCKS 0x05, HTTP 502); no
matching exit (SOCKS 0x03, HTTP 502); malformed SOCKS and HTTP requests and oversized headers answered with an error
while another session keeps working; UDP ASSOCIATE to a UDP echo server; rules and configuration through the CLI,
kept across a restart; remote configuration by the owner only; one-line errors for bad input.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import ipaddress
import json
import os
import socket
import ssl
import struct
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support import (
    ZTM,
    Agent,
    Proc,
    base_env,
    free_port,
    invite,
    join_all,
    one_line_error,
    restart_agent,
    start_agent,
    start_hub,
    start_hub_and_agents,
    wait_until,
)
from support import run as run_cmd

MESH = "m"


# ------------------------------------------------------------------------------------------------- test servers


def make_tls(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA (written to directory/ca.pem for curl's --cacert) and a server context for localhost/127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers every GET/POST with what it saw: method, request target (origin form expected), Host, body."""

    protocol_version = "HTTP/1.1"
    name = "http"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = {
            "server": self.name,
            "method": self.command,
            "target": self.path,
            "host": self.headers.get("Host"),
            "proxy_headers": [k for k in self.headers if k.lower().startswith("proxy-")],
            "connection": self.headers.get("Connection"),
            "body": body.decode("latin-1"),
        }
        data = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HttpsHandler(_Handler):
    name = "https"


class Servers:
    """An HTTP and an HTTPS server, a TCP echo and a UDP echo server on 127.0.0.1, each on a thread."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.https = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HttpsHandler)
        self.https.socket = tls.wrap_socket(self.https.socket, server_side=True)
        self.echo = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.2)
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self.threads = [
            threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True),
            threading.Thread(target=self.https.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True),
            threading.Thread(target=self._echo, daemon=True),
            threading.Thread(target=self._udp_echo, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def port(self, name: str) -> int:
        sock = {"http": self.http.socket, "https": self.https.socket, "echo": self.echo, "udp": self.udp}[name]
        return int(sock.getsockname()[1])

    def _echo(self) -> None:
        self.echo.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.echo.accept()
            except (TimeoutError, OSError):
                continue
            self._conns.append(conn)
            threading.Thread(target=self._echo_one, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo_one(conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass

    def _udp_echo(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.udp.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            self.udp.sendto(b"echo:" + data, addr)

    def close(self) -> None:
        self._stop.set()
        self.http.shutdown()
        self.https.shutdown()
        for thread in self.threads:
            thread.join(5)
        for sock in (self.http.socket, self.https.socket, self.echo, self.udp, *self._conns):
            sock.close()


# ------------------------------------------------------------------------------------------------------ clients


def curl(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """curl with no proxy from the environment, a deadline, the status code on the last line of stdout."""
    argv = ["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}", *args]
    return run_cmd(argv, env=base_env({"NO_PROXY": None}), timeout=timeout, check=False)


def curl_ok(*args: str) -> dict[str, Any]:
    cp = curl(*args)
    assert cp.returncode == 0, f"curl {' '.join(args)} failed: {cp.stderr}"
    body, _, status = cp.stdout.rpartition("\n")
    assert status == "200", (status, body)
    seen: dict[str, Any] = json.loads(body)
    return seen


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def socks_address(host: str, port: int) -> bytes:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return bytes([3, len(host)]) + host.encode() + struct.pack("!H", port)
    return bytes([1 if ip.version == 4 else 4]) + ip.packed + struct.pack("!H", port)


def read_reply(sock: socket.socket) -> tuple[int, str, int]:
    """A SOCKS5 reply: (code, bound host, bound port)."""
    head = recv_exactly(sock, 4)
    assert head[0] == 5 and head[2] == 0, head
    if head[3] == 1:
        host = str(ipaddress.IPv4Address(recv_exactly(sock, 4)))
    elif head[3] == 4:
        host = str(ipaddress.IPv6Address(recv_exactly(sock, 16)))
    else:
        host = recv_exactly(sock, recv_exactly(sock, 1)[0]).decode()
    (port,) = struct.unpack("!H", recv_exactly(sock, 2))
    return head[1], host, port


def socks_open(proxy: int, command: int, host: str, port: int) -> tuple[socket.socket, int, str, int]:
    sock = socket.create_connection(("127.0.0.1", proxy), timeout=15)
    sock.sendall(b"\x05\x01\x00")
    assert recv_exactly(sock, 2) == b"\x05\x00"
    sock.sendall(bytes([5, command, 0]) + socks_address(host, port))
    code, bound_host, bound_port = read_reply(sock)
    return sock, code, bound_host, bound_port


def socks_code(proxy: int, host: str, port: int) -> int:
    sock, code, _, _ = socks_open(proxy, 1, host, port)
    sock.close()
    return code


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data` and end the sending side, then read everything the proxy answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


# ------------------------------------------------------------------------------------------------ shared world


@dataclass
class World:
    home: Agent
    """root's entrance."""
    office: Agent
    """root's exit."""
    bob: Agent
    """user bob's endpoint, also an entrance."""
    servers: Servers
    ca: Path
    proxy: int
    """home's proxy port."""
    bob_proxy: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("proxy")
    ca, tls = make_tls(tmp)
    servers = Servers(tls)
    procs: list[Proc] = []
    try:
        hub, agents = start_hub_and_agents(tmp, ("home", "office", "bob"))
        procs += [hub.proc, *(a.proc for a in agents.values())]
        join_all(MESH, [(agents["home"], "home"), (agents["office"], "office")], hub.permit)
        agents["bob"].join(MESH, "bob-laptop", invite(agents["home"], agents["bob"], "bob", tmp / "bob.json"))
        office = agents["office"]
        office.cli("proxy", "config", "--add-target", "localhost", "127.0.0.0/8", "--add-exclusion", "127.0.0.2")
        office.cli("proxy", "config", "--add-target", "::1")
        proxy, bob_proxy = free_port(), free_port()
        agents["home"].cli("proxy", "config", "--set-listen", str(proxy))
        agents["bob"].cli("proxy", "config", "--set-listen", f"127.0.0.1:{bob_proxy}")
        yield World(agents["home"], office, agents["bob"], servers, ca, proxy, bob_proxy)
    finally:
        servers.close()
        for proc in reversed(procs):
            proc.stop()


# -------------------------------------------------------------------------------------------------------- tests


def test_curl_through_socks5h_and_the_http_proxy_to_http_and_https(world: World) -> None:
    http_port, https_port = world.servers.port("http"), world.servers.port("https")
    socks = f"socks5h://127.0.0.1:{world.proxy}"
    web = f"http://127.0.0.1:{world.proxy}"

    # SOCKS5 with the name resolved at the exit, plain HTTP and HTTPS.
    seen = curl_ok("-x", socks, f"http://localhost:{http_port}/via/socks?q=1")
    assert seen["server"] == "http" and seen["target"] == "/via/socks?q=1"
    seen = curl_ok("-x", socks, "--cacert", str(world.ca), f"https://localhost:{https_port}/tls")
    assert seen["server"] == "https" and seen["target"] == "/tls"
    # An IP literal, and a request body.
    seen = curl_ok("-x", socks, "-d", "payload", f"http://127.0.0.1:{http_port}/post")
    assert seen["method"] == "POST" and seen["body"] == "payload"

    # HTTP proxy: an absolute-URI request arrives at the server in origin form, without Proxy-* headers.
    seen = curl_ok("-x", web, "-H", "Proxy-Authorization: Basic eDp5", f"http://localhost:{http_port}/abs/path?x=y")
    assert seen["target"] == "/abs/path?x=y" and seen["host"] == f"localhost:{http_port}"
    assert seen["proxy_headers"] == [] and seen["connection"] == "close"
    seen = curl_ok("-x", web, "-d", "a=b", f"http://127.0.0.1:{http_port}/form")
    assert seen["method"] == "POST" and seen["body"] == "a=b" and seen["target"] == "/form"
    # HTTPS through CONNECT; and CONNECT for plain HTTP too (-p).
    seen = curl_ok("-x", web, "--cacert", str(world.ca), f"https://localhost:{https_port}/connect")
    assert seen["server"] == "https" and seen["target"] == "/connect"
    seen = curl_ok("-p", "-x", web, f"http://localhost:{http_port}/tunnelled")
    assert seen["target"] == "/tunnelled"

    text = world.home.cli("proxy", "config").stdout
    assert f"127.0.0.1:{world.proxy} (listening; SOCKS5 and HTTP)" in text and "not an exit" in text, text
    view = world.home.cli_json("proxy", "get")
    assert view["listen"] == f"127.0.0.1:{world.proxy}" and view["listening"] is True
    assert view["counters"]["entrance:streams"] >= 7
    exit_view = world.office.cli_json("proxy", "config")
    assert exit_view["targets"] == ["localhost", "127.0.0.0/8", "::1/128"]
    assert exit_view["exclusions"] == ["127.0.0.2/32"]
    assert exit_view["counters"]["exit:streams"] >= 7
    status, metrics = world.office.api("GET", "/api/metrics")
    assert status == 200 and f'ztm_agent_app_streams{{mesh="{MESH}",app="proxy",name="exit"}}' in metrics
    exits = world.home.cli_json("proxy", "get", "exits")
    assert [(e["name"], sorted(e["targets"])) for e in exits] == [("office", ["127.0.0.0/8", "::1/128", "localhost"])]
    assert "office" in world.home.cli("proxy", "get", "exits").stdout


def test_a_plain_http_request_goes_with_the_opening_but_connect_and_socks_wait(world: World) -> None:
    """Early data (PROTOCOL.md section 11): an absolute-URI request is in hand, so it is sealed right after the OPEN;
    CONNECT and SOCKS5 clients need the reply first, so their streams send nothing before the exit's answer."""
    from .test_tunnel_direct import metric

    http_port = world.servers.port("http")
    early = "ztm_agent_e2e_early_streams_total"
    before = metric(world.home, early)
    seen = curl_ok("-x", f"http://127.0.0.1:{world.proxy}", "-d", "early=1", f"http://127.0.0.1:{http_port}/early")
    assert seen["method"] == "POST" and seen["body"] == "early=1" and seen["target"] == "/early"
    assert metric(world.home, early) == before + 1
    curl_ok("-p", "-x", f"http://127.0.0.1:{world.proxy}", f"http://localhost:{http_port}/connect-waits")
    curl_ok("-x", f"socks5h://127.0.0.1:{world.proxy}", f"http://localhost:{http_port}/socks-waits")
    assert metric(world.home, early) == before + 1


def test_refusals_speak_the_clients_protocol(world: World) -> None:
    http_port = world.servers.port("http")
    dead = free_port()  # nothing listens there: the exit's connection is refused
    socks = f"socks5h://127.0.0.1:{world.proxy}"

    # Unreachable target: SOCKS "connection refused", HTTP 502 with the reason.
    assert socks_code(world.proxy, "127.0.0.1", dead) == 0x05
    cp = curl("-x", f"http://127.0.0.1:{world.proxy}", f"http://127.0.0.1:{dead}/")
    body, _, status = cp.stdout.rpartition("\n")
    assert status == "502" and "refused" in body and f"127.0.0.1:{dead}" in body, cp.stdout
    # A name that does not resolve at the exit: "host unreachable".
    assert socks_code(world.proxy, "no-such-host.invalid", 80) == 0x04

    # No exit offers the destination (outside the targets, or excluded): "network unreachable", HTTP 502.
    assert socks_code(world.proxy, "192.0.2.1", 80) == 0x03
    assert socks_code(world.proxy, "127.0.0.2", http_port) == 0x03
    cp = curl("-x", f"http://127.0.0.1:{world.proxy}", "http://192.0.2.1/")
    body, _, status = cp.stdout.rpartition("\n")
    assert status == "502" and "no exit" in body, cp.stdout
    cp = curl("-x", socks, "http://192.0.2.1/")
    assert cp.returncode == 97 and "(3)" in cp.stderr, cp.stderr  # curl 7.88 names the SOCKS reply code

    # A rule denies bob the name: SOCKS "not allowed by ruleset", HTTP 403 with the rule; root still gets through.
    rules = world.office.cli_json("proxy", "rules", "--deny", "bob", "localhost")
    assert rules == [{"number": 1, "action": "deny", "user": "bob", "target": "localhost"}]
    try:
        assert socks_code(world.bob_proxy, "localhost", http_port) == 0x02
        cp = curl("-x", f"http://127.0.0.1:{world.bob_proxy}", f"http://localhost:{http_port}/")
        body, _, status = cp.stdout.rpartition("\n")
        assert status == "403" and "rule 1 (deny bob localhost) denies user 'bob'" in body, cp.stdout
        cp = curl("-x", f"socks5h://127.0.0.1:{world.bob_proxy}", f"http://localhost:{http_port}/")
        assert cp.returncode == 97 and ("(2)" in cp.stderr or "not allowed" in cp.stderr), cp.stderr
        # The same host by address is denied too (the exit resolves the rule's name); a network rule covers both.
        assert socks_code(world.bob_proxy, "127.0.0.1", http_port) == 0x02
        world.office.cli("proxy", "rules", "--deny", "*", "127.0.0.0/8", "--at", "1")
        world.office.cli("proxy", "rules", "--allow", "root", "*", "--at", "1")
        assert socks_code(world.bob_proxy, "127.0.0.1", http_port) == 0x02
        assert socks_code(world.bob_proxy, "localhost", http_port) == 0x02  # resolves into 127.0.0.0/8
        assert curl_ok("-x", socks, f"http://localhost:{http_port}/root")["target"] == "/root"
        table = world.office.cli("proxy", "rules").stdout
        assert "allow" in table and "127.0.0.0/8" in table and "deny" in table
    finally:
        for _ in range(3):
            world.office.cli("proxy", "rules", "--delete", "1", check=False)
    assert world.office.cli_json("proxy", "rules") == []
    assert socks_code(world.bob_proxy, "localhost", http_port) == 0x00

    # Commands SOCKS5 does not serve here.
    sock, code, _, _ = socks_open(world.proxy, 2, "127.0.0.1", http_port)  # BIND
    sock.close()
    assert code == 0x07
    log = "\n".join(world.office.api("GET", "/api/log?lines=500")[1]["lines"])
    assert "refused tcp/localhost/" in log and "(user bob)" in log


def test_bad_requests_get_an_error_while_another_session_keeps_working(world: World) -> None:
    echo = world.servers.port("echo")
    live, code, _, _ = socks_open(world.proxy, 1, "127.0.0.1", echo)
    assert code == 0
    try:
        live.sendall(b"before")
        assert recv_exactly(live, 6) == b"before"

        assert raw_exchange(world.proxy, b"\x05\x01\x02") == b"\x05\xff"  # only username/password offered
        assert raw_exchange(world.proxy, b"\x05\x00") == b"\x05\xff"  # no method at all
        answer = raw_exchange(world.proxy, b"\x05\x01\x00\x05\x01\x00\x09" + bytes(8))  # unknown address type
        assert answer[:2] == b"\x05\x00" and answer[2:4] == b"\x05\x08"
        answer = raw_exchange(world.proxy, b"\x05\x01\x00\x05\x09\x00\x01" + bytes(6))  # unknown command
        assert answer[2:4] == b"\x05\x07"
        answer = raw_exchange(world.proxy, b"\x05\x01\x00\x05\x01\x00\x03\x00\x00\x50")  # empty domain name
        assert answer[2:4] == b"\x05\x04"
        assert raw_exchange(world.proxy, b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00") == b"\x00\x5b" + bytes(6)  # SOCKS4
        assert raw_exchange(world.proxy, b"\x16\x03\x01\x00") == b""  # TLS to the proxy port: closed
        assert raw_exchange(world.proxy, b"\x05\x02\x00") == b""  # truncated greeting, then EOF: closed
        assert raw_exchange(world.proxy, b"\x05\x01\x00\x05\x01\x00\x03\x09abc") == b"\x05\x00"  # truncated request

        for request, status in (
            (b"GARBAGE\r\n\r\n", b"400"),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
            (b"GET https://localhost/ HTTP/1.1\r\n\r\n", b"501"),
            (b"GET http://localhost/ HTTP/2.0\r\n\r\n", b"505"),
            (b"CONNECT localhost HTTP/1.1\r\n\r\n", b"400"),
            (b"GET http://localhost/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", b"400"),
            (b"GET http://localhost/ HTTP/1.1\r\n X-Folded: yes\r\n\r\n", b"400"),
            (b"GET http://localhost/ HTTP/1.1\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", b"431"),
            (b"GET http://localhost/" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"414"),
            (b"GET http://localhost/ HTTP/1.1\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", b"431"),
        ):
            answer = raw_exchange(world.proxy, request)
            assert answer.startswith(b"HTTP/1.1 " + status + b" "), (request[:60], answer[:200])
            assert b"\r\nContent-Type: text/plain" in answer and answer.endswith(b"\n"), answer
        # Oversized headers from curl itself.
        cp = curl("-x", f"http://127.0.0.1:{world.proxy}", "-H", "X-Huge: " + "h" * 40000, "http://localhost/")
        assert cp.stdout.endswith("431"), cp.stdout[-200:]

        live.sendall(b"after")
        assert recv_exactly(live, 5) == b"after"
    finally:
        live.close()
    assert world.home.cli_json("proxy", "get")["counters"]["entrance:malformed"] >= 18
    assert world.home.proc.alive


def test_socks_connect_to_an_ipv6_address(world: World) -> None:
    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    with server:
        port = server.getsockname()[1]
        sock, code, _, _ = socks_open(world.proxy, 1, "::1", port)
        with sock:
            assert code == 0
            conn, _ = server.accept()
            with conn:
                sock.sendall(b"over IPv6")
                assert recv_exactly(conn, 9) == b"over IPv6"
                conn.sendall(b"and back")
                assert recv_exactly(sock, 8) == b"and back"


def test_udp_associate_carries_datagrams_to_an_echo_server(world: World) -> None:
    udp_port = world.servers.port("udp")
    control, code, host, port = socks_open(world.proxy, 3, "0.0.0.0", 0)
    assert code == 0 and host == "127.0.0.1" and port > 0
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(10)
    try:
        for target, size in (("127.0.0.1", 5), ("localhost", 1200), ("127.0.0.1", 30000)):
            payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            client.sendto(b"\x00\x00\x00" + socks_address(target, udp_port) + payload, (host, port))
            data, _ = client.recvfrom(65536)
            header = b"\x00\x00\x00" + socks_address(target, udp_port)
            assert data == header + b"echo:" + payload, (target, data[:40])
        # A fragment and a garbage datagram are dropped; the association keeps working.
        client.sendto(b"\x00\x00\x01" + socks_address("127.0.0.1", udp_port) + b"frag", (host, port))
        client.sendto(b"\xff", (host, port))
        client.sendto(b"\x00\x00\x00" + socks_address("127.0.0.1", udp_port) + b"last", (host, port))
        data, _ = client.recvfrom(65536)
        assert data.endswith(b"echo:last")
    finally:
        client.close()
        control.close()
    counters = world.home.cli_json("proxy", "get")["counters"]
    assert counters["entrance-udp:streams"] >= 2 and counters["entrance-udp:dropped"] >= 2


def test_configuration_errors_and_remote_configuration(world: World) -> None:
    home, office, bob = world.home, world.office, world.bob
    for argv, expected in (
        (("config", "--add-target", "bad target!"), "invalid target"),
        (("config", "--set-listen", "1.2.3:x"), "port"),
        (("rules", "--allow", "Bad User", "*"), "invalid user"),
        (("rules", "--delete", "0"), "invalid rule number"),
    ):
        cp = office.cli("proxy", *argv, check=False)
        assert cp.returncode == 2 and expected in one_line_error(cp), cp.stderr
    error = one_line_error(office.cli("proxy", "config", "--remove-target", "example.com", check=False))
    assert "no target example.com to remove" in error
    error = one_line_error(office.cli("proxy", "rules", "--delete", "7", check=False))
    assert "no proxy rules" in error or "rule number" in error
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        taken = busy.getsockname()[1]
        error = one_line_error(home.cli("proxy", "config", "--set-listen", str(taken), check=False))
        assert "cannot listen" in error
    finally:
        busy.close()
    assert home.cli_json("proxy", "get")["listen"] == f"127.0.0.1:{world.proxy}"  # unchanged, still serving
    assert socks_code(world.proxy, "127.0.0.1", world.servers.port("http")) == 0
    status, body = office.api("POST", f"/api/meshes/{MESH}/apps/proxy/config", {"add_targets": "x"})
    assert status == 400 and "add_targets" in body["error"]

    # root configures bob's endpoint remotely once bob allows it there ('ztm root-admin on'); bob may not configure
    # root's.
    out = home.cli("ep", "bob-laptop", "proxy", "config", "--add-target", "10.9.0.0/16", check=False)
    assert out.returncode == 1 and "ztm root-admin on" in one_line_error(out), out.stderr
    bob.cli("root-admin", "on")
    out = home.cli("ep", "bob-laptop", "proxy", "config", "--add-target", "10.9.0.0/16", check=False)
    assert out.returncode == 0, out.stderr
    assert bob.cli_json("proxy", "get")["targets"] == ["10.9.0.0/16"]
    home.cli("ep", "bob-laptop", "proxy", "config", "--remove-target", "10.9.0.0/16")
    error = one_line_error(bob.cli("ep", "office", "proxy", "rules", "--allow", "bob", "*", check=False))
    assert "owner" in error
    assert office.cli_json("proxy", "rules") == []
    bob.cli("root-admin", "off")


def test_credentials_on_an_entrance_reachable_from_the_network(world: World, tmp_path: Path) -> None:
    bob, http_port, https_port = world.bob, world.servers.port("http"), world.servers.port("https")
    echo = world.servers.port("echo")
    exposed = free_port("0.0.0.0")
    # Beyond loopback without credentials: allowed, with a one-line warning from the CLI and one in the agent's log.
    cp = bob.cli("proxy", "config", "--set-listen", f"0.0.0.0:{exposed}")
    assert cp.stderr.count("\n") == 1 and "warning: the proxy on 0.0.0.0:" in cp.stderr, cp.stderr
    assert "no credentials" in cp.stderr and "--set-auth" in cp.stderr
    assert "warning" in bob.cli("proxy", "get").stderr
    try:
        wait_until(lambda: "without credentials" in agent_log(bob), 10, "the agent's warning")
        password = "s3cret-pass"
        (tmp_path / "pw").write_text(password + "\nignored second line\n")
        cp = bob.cli("proxy", "config", "--set-auth", "carol", "--password-file", tmp_path / "pw")
        assert cp.stderr == "" and "user carol, password set" in cp.stdout, (cp.stdout, cp.stderr)
        view = bob.cli_json("proxy", "get")
        assert view["auth"] == {"user": "carol", "password": "set"} and password not in json.dumps(view)
        status, body = bob.api("GET", f"/api/meshes/{MESH}/apps/proxy")
        assert status == 200 and body["auth"] == {"user": "carol", "password": "set"} and password not in str(body)

        proxy = f"127.0.0.1:{exposed}"
        web, user = f"http://{proxy}", f"carol:{password}"
        # The right credentials, through both protocols (HTTP absolute URI, CONNECT, SOCKS5 in the URL and option).
        seen = curl_ok("--proxy-user", user, "-x", web, f"http://localhost:{http_port}/auth/http")
        assert seen["target"] == "/auth/http" and seen["proxy_headers"] == []  # the credentials stay at the entrance
        seen = curl_ok("--proxy-user", user, "-x", web, "--cacert", str(world.ca), f"https://localhost:{https_port}/c")
        assert seen["server"] == "https"
        seen = curl_ok("-x", f"socks5h://{user}@{proxy}", f"http://localhost:{http_port}/auth/socks")
        assert seen["target"] == "/auth/socks"
        seen = curl_ok("--proxy-user", user, "-x", f"socks5h://{proxy}", "-d", "x=1", f"http://127.0.0.1:{http_port}/")
        assert seen["body"] == "x=1"

        # An authenticated SOCKS session stays open through every refusal below.
        live = socket.create_connection(("127.0.0.1", exposed), timeout=15)
        live.sendall(b"\x05\x01\x02")
        assert recv_exactly(live, 2) == b"\x05\x02"
        live.sendall(b"\x01\x05carol" + bytes([len(password)]) + password.encode())
        assert recv_exactly(live, 2) == b"\x01\x00"
        live.sendall(b"\x05\x01\x00" + socks_address("127.0.0.1", echo))
        assert read_reply(live)[0] == 0
        with live:
            live.sendall(b"before")
            assert recv_exactly(live, 6) == b"before"

            # Missing or wrong credentials, in each client's protocol.
            for args in ((), ("--proxy-user", "carol:wrong"), ("--proxy-user", "mallory:" + password)):
                cp = curl(*args, "-x", web, f"http://localhost:{http_port}/")
                assert cp.stdout.endswith("\n407"), cp.stdout
                cp = curl(*args, "-x", web, "--cacert", str(world.ca), f"https://localhost:{https_port}/")
                assert cp.returncode != 0 and "407" in cp.stderr, cp.stderr
            cp = curl("-x", f"socks5h://{proxy}", f"http://localhost:{http_port}/")  # offers no auth only
            assert cp.returncode == 97, cp.stderr
            cp = curl("-x", f"socks5h://carol:wrong@{proxy}", f"http://localhost:{http_port}/")
            assert cp.returncode == 97, cp.stderr

            # Hand-made clients: the exact answers, and malformed or overlong credentials.
            assert raw_exchange(exposed, b"\x05\x01\x00") == b"\x05\xff"
            assert raw_exchange(exposed, b"\x05\x01\x02\x01\x05carol\x05wrong") == b"\x05\x02\x01\x01"
            assert raw_exchange(exposed, b"\x05\x01\x02\x05\x01\x00") == b"\x05\x02\x01\x01"  # not RFC 1929
            assert raw_exchange(exposed, b"\x05\x01\x02\x01\x00\x01p") == b"\x05\x02\x01\x01"  # empty user
            assert raw_exchange(exposed, b"\x05\x01\x02\x01\xffcarol") == b"\x05\x02"  # truncated, then EOF
            head = b"GET http://localhost/ HTTP/1.1\r\n"
            for extra, status in (
                (b"", b"407"),
                (b"Proxy-Authorization: Bearer abc\r\n", b"407"),
                (b"Proxy-Authorization: Basic !!!\r\n", b"400"),
                (b"Proxy-Authorization: Basic " + base64.b64encode(b"carol") + b"\r\n", b"400"),
                (b"Proxy-Authorization: Basic " + base64.b64encode(b"c" * 300 + b":p") + b"\r\n", b"407"),
                (b"Proxy-Authorization: Basic " + base64.b64encode(b"carol:" + b"p" * 300) + b"\r\n", b"407"),
            ):
                answer = raw_exchange(exposed, head + extra + b"\r\n")
                assert answer.startswith(b"HTTP/1.1 " + status + b" "), (extra, answer[:200])
                if status == b"407":
                    assert b'\r\nProxy-Authenticate: Basic realm="ztm"\r\n' in answer, answer

            live.sendall(b"after")
            assert recv_exactly(live, 5) == b"after"
        counters = bob.cli_json("proxy", "get")["counters"]
        assert counters["entrance:unauthorized"] >= 12 and counters["entrance:malformed"] >= 4, counters
        log = agent_log(bob)
        assert "wrong user name or password (user b'mallory')" in log
        assert password not in log and "wrong" not in log.replace("wrong user name", "")

        # The password from standard input replaces the first; --clear-auth opens the proxy again (with a warning).
        bob.cli("proxy", "config", "--set-auth", "dave", "--password-file", "-", input="from stdin\n")
        assert (
            curl_ok("--proxy-user", "dave:from stdin", "-x", web, f"http://localhost:{http_port}/d")["target"] == "/d"
        )
        assert curl("--proxy-user", user, "-x", web, f"http://localhost:{http_port}/").stdout.endswith("407")
        for argv, expected in (
            (("--password-file", tmp_path / "pw"), "--password-file goes with --set-auth"),
            (("--set-auth", "dave"), "--set-auth needs --password-file"),  # stdin is not a terminal
            (("--set-auth", "a:b", "--password-file", "-"), "invalid user name"),
            (("--set-auth", "dave", "--clear-auth"), "not allowed with"),
            (("--set-auth", "dave", "--password-file", tmp_path / "missing"), "cannot read the password"),
        ):
            cp = bob.cli("proxy", "config", *argv, check=False, input="")
            assert cp.returncode == 2 and expected in one_line_error(cp), (argv, cp.stderr)
        cp = bob.cli("proxy", "config", "--set-auth", "dave", "--password-file", "-", input="\n", check=False)
        assert cp.returncode == 2 and "1 to 255 bytes" in one_line_error(cp)
        status, body = bob.api(
            "POST", f"/api/meshes/{MESH}/apps/proxy/config", {"set_auth": {"user": "x:y", "password": "p"}}
        )
        assert status == 400 and "no ':'" in body["error"]
        assert bob.cli_json("proxy", "get")["auth"] == {"user": "dave", "password": "set"}  # unchanged
        cp = bob.cli("proxy", "config", "--clear-auth")
        assert "warning" in cp.stderr and "auth" in cp.stdout and "no credentials required" in cp.stdout
        assert curl_ok("-x", web, f"http://localhost:{http_port}/open")["target"] == "/open"
    finally:
        bob.cli("proxy", "config", "--set-listen", f"127.0.0.1:{world.bob_proxy}", "--clear-auth")
    assert bob.cli("proxy", "config").stderr == ""  # loopback: no warning


def test_credentials_survive_a_restart(tmp_path: Path) -> None:
    hub = start_hub(tmp_path)
    agent = start_agent(tmp_path, "solo")
    agent.join(MESH, "solo", hub.permit)
    port = free_port()
    agent.cli("proxy", "config", "--set-listen", str(port), "--set-auth", "ann", "--password-file", "-", input="pw\n")
    restart_agent(agent)
    wait_until(lambda: agent.cli_json("proxy", "get")["listening"], 15, "the proxy to listen again")
    assert agent.cli_json("proxy", "get")["auth"] == {"user": "ann", "password": "set"}
    assert raw_exchange(port, b"\x05\x01\x00") == b"\x05\xff"  # still requires credentials
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"\x05\x01\x02\x01\x03ann\x02pw\x05\x01\x00" + socks_address("www.example.org", 80))
        assert recv_exactly(sock, 4) == b"\x05\x02\x01\x00"
        assert read_reply(sock)[0] == 0x03  # authenticated; no exit (it is its own only one)


# ---------------------------------------------------------------------------------------------- direct channels


@dataclass
class Direct:
    admin: str
    """the hub's admin (metrics) address."""
    home: Agent
    """the entrance."""
    office: Agent
    """an exit reachable directly (`--direct`), offering `localhost`."""
    natted: Agent
    """an exit whose announced direct address does not answer, offering 127.0.0.1 (but not by the name localhost,
    so that the office is the only candidate for it)."""
    proxy: int


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Direct]:
    tmp = tmp_path_factory.mktemp("proxy-direct")
    procs: list[Proc] = []
    try:
        admin = f"127.0.0.1:{free_port()}"
        extra = {
            "office": ("--direct", f"127.0.0.1:{free_port()}"),
            "natted": ("--direct", f"127.0.0.1:{free_port()}", "--direct-announce", f"127.0.0.1:{free_port()}"),
        }
        hub, agents = start_hub_and_agents(
            tmp, ("home", "office", "natted"), hub_extra=["--admin", admin], agent_extra=extra
        )
        procs += [hub.proc, *(a.proc for a in agents.values())]
        join_all(MESH, [(agent, name) for name, agent in agents.items()], hub.permit)
        agents["office"].cli("proxy", "config", "--add-target", "localhost")
        agents["natted"].cli("proxy", "config", "--add-target", "127.0.0.1", "--add-exclusion", "localhost")
        proxy = free_port()
        agents["home"].cli("proxy", "config", "--set-listen", str(proxy))
        yield Direct(admin, agents["home"], agents["office"], agents["natted"], proxy)
    finally:
        for proc in reversed(procs):
            proc.stop()


def counters(agent: Agent) -> dict[str, int]:
    found: dict[str, int] = agent.cli_json("proxy", "get")["counters"]
    return found


def by_path(agent: Agent, side: str) -> dict[str, int]:
    """The proxy view's connections per path of `side` (entrance or exit, TCP and UDP together)."""
    found: dict[str, int] = agent.cli_json("proxy", "get")["paths"][side]
    return found


def relayed(direct: Direct) -> float:
    """The hub's `ztm_hub_relayed_bytes_total`: every byte it forwarded between endpoints."""
    with urllib.request.urlopen(f"http://{direct.admin}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("ztm_hub_relayed_bytes_total "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def socks_udp_echoes(proxy: int, host: str, port: int, payloads: list[bytes]) -> None:
    """One SOCKS5 UDP association; each payload to the UDP echo server at host:port and back, byte-exact."""
    control, code, relay_host, relay_port = socks_open(proxy, 3, "0.0.0.0", 0)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(10)
    with control, client:
        assert code == 0
        header = b"\x00\x00\x00" + socks_address(host, port)
        for payload in payloads:
            client.sendto(header + payload, (relay_host, relay_port))
            assert client.recvfrom(1 << 17)[0] == header + b"echo:" + payload


def test_proxy_connections_go_over_direct_channels(world: World, direct: Direct) -> None:
    http_port, echo = world.servers.port("http"), world.servers.port("echo")
    socks = f"socks5h://127.0.0.1:{direct.proxy}"
    url = f"http://localhost:{http_port}/direct"
    # The first connection may race the exit's announcement and the CRL: wait for one that went direct.
    wait_until(
        lambda: curl_ok("-x", socks, url) and counters(direct.home).get("entrance:direct", 0) >= 1,
        20,
        "a proxied connection over a direct channel",
    )
    before = counters(direct.home)
    body = bytes(range(1, 256)) * 1200  # ~300 KB, every byte value but NUL (curl -d would strip nothing anyway)
    upload = Path(direct.home.dir) / "upload.bin"
    upload.write_bytes(body)
    for args in (
        ("-x", socks),
        ("-x", f"http://127.0.0.1:{direct.proxy}"),
        ("-p", "-x", f"http://127.0.0.1:{direct.proxy}"),
    ):
        seen = curl_ok(*args, "--data-binary", f"@{upload}", url)
        assert seen["body"].encode("latin-1") == body and seen["target"] == "/direct"
    # Byte-exact both ways with the TCP echo, 1 MiB, through a hand-made SOCKS client.
    data = bytes(range(256)) * 4096
    sock, code, _, _ = socks_open(direct.proxy, 1, "localhost", echo)
    with sock:
        assert code == 0
        sender = threading.Thread(target=sock.sendall, args=(data,))
        sender.start()
        assert recv_exactly(sock, len(data)) == data
        sender.join(10)
    after = counters(direct.home)
    assert after["entrance:direct"] - before["entrance:direct"] == 4, after
    assert after.get("entrance:direct_fallbacks", 0) == before.get("entrance:direct_fallbacks", 0)
    # (what arrived with a request head, up to one read, is sent before the splice and not counted)
    assert after["entrance:sent"] - before["entrance:sent"] >= len(body) + len(data)
    assert after["entrance:received"] - before["entrance:received"] >= len(data)
    exit_counters = counters(direct.office)
    assert exit_counters["exit:direct"] == after["entrance:direct"] == exit_counters["exit:streams"], exit_counters
    status, metrics = direct.home.api("GET", "/api/metrics")
    assert f'ztm_agent_app_direct{{mesh="{MESH}",app="proxy",name="entrance"}}' in metrics
    # A refusal on the direct path reaches the client in its protocol, with the exit's reason.
    direct.office.cli("proxy", "rules", "--deny", "root", "localhost")
    try:
        assert socks_code(direct.proxy, "localhost", http_port) == 0x02
        cp = curl("-x", f"http://127.0.0.1:{direct.proxy}", url)
        body_text, _, status = cp.stdout.rpartition("\n")
        assert status == "403" and "rule 1 (deny root localhost)" in body_text, cp.stdout
    finally:
        direct.office.cli("proxy", "rules", "--delete", "1")
    assert counters(direct.home).get("entrance:direct_fallbacks", 0) == after.get("entrance:direct_fallbacks", 0)
    # Connections per path: every one of the entrance's went direct, and the exit saw them so.
    paths = by_path(direct.home, "entrance")
    assert paths["direct"] == after["entrance:direct"] and paths["lan"] == paths["punched"] == 0, paths
    assert paths["relay"] == after.get("entrance:e2e", 0), (paths, after)
    assert by_path(direct.office, "exit")["direct"] == exit_counters["exit:direct"]
    labels = f'mesh="{MESH}",app="proxy",name="entrance",path="direct"'
    assert f"ztm_agent_app_streams_by_path{{{labels}}} {paths['direct']}" in metrics
    shown = direct.home.cli("proxy", "get").stdout
    assert f"paths (entrance): direct {paths['direct']}" in " ".join(shown.split()), shown


def test_socks_udp_goes_direct_byte_exact_and_the_hub_relays_none(world: World, direct: Direct) -> None:
    udp = world.servers.port("udp")
    # The first association may race the exit's announcement and the CRL: wait for one that went direct.
    wait_until(
        lambda: socks_udp_echoes(direct.proxy, "localhost", udp, [b"warm"]) or counters(direct.home).get(
            "entrance-udp:direct", 0) >= 1, 20, "a UDP flow over a direct channel")  # fmt: skip
    before, hub_before = counters(direct.home), relayed(direct)
    payloads = [os.urandom(n) for n in (1, 700, 1400, 9000, 30000)]
    socks_udp_echoes(direct.proxy, "localhost", udp, payloads)
    assert relayed(direct) == hub_before, "the hub relayed bytes of a SOCKS UDP flow that had a direct path"
    after = counters(direct.home)
    assert after["entrance-udp:direct"] == before["entrance-udp:direct"] + 1, after
    assert after.get("entrance:direct_fallbacks", 0) == before.get("entrance:direct_fallbacks", 0), after
    assert after["entrance-udp:sent"] - before["entrance-udp:sent"] == sum(map(len, payloads))
    exit_udp = counters(direct.office)
    assert exit_udp["exit-udp:direct"] == after["entrance-udp:direct"] == exit_udp["exit-udp:streams"], exit_udp
    assert by_path(direct.home, "entrance")["direct"] == after["entrance:direct"] + after["entrance-udp:direct"]


def test_proxy_falls_back_to_the_relay_when_the_direct_address_does_not_answer(world: World, direct: Direct) -> None:
    http_port = world.servers.port("http")
    socks = f"socks5h://127.0.0.1:{direct.proxy}"
    before = counters(direct.home)
    for i in range(4):  # 127.0.0.1 is only the natted exit's
        seen = curl_ok("-x", socks, f"http://127.0.0.1:{http_port}/relay/{i}")
        assert seen["target"] == f"/relay/{i}"
    after = counters(direct.home)
    assert after.get("entrance:direct", 0) == before.get("entrance:direct", 0), after
    assert after["entrance:direct_fallbacks"] >= before.get("entrance:direct_fallbacks", 0) + 1, after
    assert after["entrance:streams"] - before["entrance:streams"] == 4
    natted = counters(direct.natted)
    assert natted["exit:streams"] >= 4 and natted.get("exit:direct", 0) == 0, natted
    # A SOCKS UDP flow to the natted exit falls back to the relay too, and works.
    socks_udp_echoes(direct.proxy, "127.0.0.1", world.servers.port("udp"), [b"via the hub", os.urandom(2000)])
    udp = counters(direct.home)
    assert udp["entrance-udp:e2e"] == after.get("entrance-udp:e2e", 0) + 1, udp
    assert udp.get("entrance-udp:direct", 0) == after.get("entrance-udp:direct", 0), udp
    assert by_path(direct.natted, "exit") == {"relay": natted["exit:streams"] + 1, "direct": 0, "lan": 0, "punched": 0}


def agent_log(agent: Agent) -> str:
    status, body = agent.api("GET", "/api/log?lines=2000")
    assert status == 200, body
    return "\n".join(body["lines"])


def test_help() -> None:
    for argv in (("proxy", "help"), ("help", "proxy")):
        cp = run_cmd([*ZTM, *argv], env=base_env())
        assert "--set-listen" in cp.stdout and "rules" in cp.stdout and "socks5h://" in cp.stdout, cp.stdout


def test_configuration_survives_a_restart(tmp_path: Path) -> None:
    hub = start_hub(tmp_path)
    agent = start_agent(tmp_path, "solo")
    agent.join(MESH, "solo", hub.permit)
    port = free_port()
    agent.cli("proxy", "config", "--set-listen", str(port), "--add-target", "*.example.org", "192.168.0.0/16")
    agent.cli("proxy", "rules", "--deny", "bob", "*.example.org")
    before = agent.cli_json("proxy", "get")
    restart_agent(agent)

    def same() -> bool:
        now = agent.cli_json("proxy", "get")
        return all(now[k] == before[k] for k in ("listen", "targets", "exclusions", "rules")) and now["listening"]

    wait_until(same, 15, "the proxy configuration to come back after the restart")
    # This endpoint is its own only exit: an entrance never routes to itself, so this is "no exit".
    assert socks_code(port, "www.example.org", 80) == 0x03
