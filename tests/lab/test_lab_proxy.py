"""The proxy across the seed's picture: curl at home goes through the home endpoint's proxy entrance (SOCKS5 and HTTP
on one port) to HTTP and HTTPS servers that exist only inside the workplace namespace, both behind NAT, through the
hub in the data center. Names are resolved at the exit: `localhost` is the workplace's own loopback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from integration.test_proxy import make_tls
from lab.netlab import Lab
from support import base_env, run, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MESH = "my-mesh"
HTTP_PORT, HTTPS_PORT, PROXY_PORT = 8080, 8443, 1080

# Inside the workplace namespace: an HTTP and an HTTPS server that say where they are and what path they were asked
# for (which shows the absolute URI became origin form). They listen on every address, so that the check that home
# cannot reach them directly could fail.
SERVER = """
import http.server, ssl, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"workplace {self.server.server_port} {self.path} {self.headers.get('Host')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
plain = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H)
tls = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
threading.Thread(target=tls.serve_forever, daemon=True).start()
plain.serve_forever()
"""


def test_curl_at_home_reaches_workplace_servers_through_the_proxy(lab: Lab, tmp_path: Path) -> None:
    ca, _ = make_tls(tmp_path)
    _hub, agents = lab.start_mesh(tmp_path, MESH, {"home": "home", "workplace": "workplace"})
    home, work = agents["home"], agents["workplace"]

    argv = [
        sys.executable,
        "-c",
        SERVER,
        str(HTTP_PORT),
        str(HTTPS_PORT),
        tmp_path / "server.pem",
        tmp_path / "server.key",
    ]
    server = lab.popen("workplace", argv, env=base_env(), name="web")

    def listening() -> bool:
        server.assert_alive()
        return all(lab.can_connect("workplace", "127.0.0.1", p) for p in (HTTP_PORT, HTTPS_PORT))

    wait_until(listening, 15, "the web servers to listen at the workplace")
    lab.assert_unreachable("home", "workplace", HTTP_PORT)
    assert not lab.can_connect("home", "127.0.0.1", HTTP_PORT, timeout=1.0), "a server at home?"

    work.cli("proxy", "config", "--add-target", "localhost", "127.0.0.1")
    home.cli("proxy", "config", "--set-listen", str(PROXY_PORT))
    exits = home.cli_json("proxy", "get", "exits")
    assert [e["name"] for e in exits] == ["workplace"]

    def curl(*args: str) -> str:
        cp = run(["curl", "-sS", "--max-time", "20", *args], netns=lab.ns("home"), env=base_env(), timeout=30)
        return cp.stdout

    socks = f"socks5h://127.0.0.1:{PROXY_PORT}"
    web = f"http://127.0.0.1:{PROXY_PORT}"
    assert curl("-x", socks, f"http://localhost:{HTTP_PORT}/s") == f"workplace {HTTP_PORT} /s localhost:{HTTP_PORT}"
    https = curl("-x", socks, "--cacert", str(ca), f"https://localhost:{HTTPS_PORT}/st")
    assert https == f"workplace {HTTPS_PORT} /st localhost:{HTTPS_PORT}"
    assert (
        curl("-x", web, f"http://localhost:{HTTP_PORT}/h?x=1") == f"workplace {HTTP_PORT} /h?x=1 localhost:{HTTP_PORT}"
    )
    connect = curl("-x", web, "--cacert", str(ca), f"https://localhost:{HTTPS_PORT}/ht")
    assert connect == f"workplace {HTTPS_PORT} /ht localhost:{HTTPS_PORT}"

    # A destination no exit offers is refused by the entrance in the client's protocol.
    cp = run(["curl", "-sS", "--max-time", "20", "-w", "%{http_code}", "-x", web, "http://10.99.0.1/"],
             netns=lab.ns("home"), env=base_env(), timeout=30, check=False)  # fmt: skip
    assert cp.stdout.endswith("502") and "no exit" in cp.stdout, cp.stdout
    counters = work.cli_json("proxy", "get")["counters"]
    assert counters["exit:streams"] == 4
