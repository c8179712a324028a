"""The web GUI in a real browser (Debian's headless chromium through Playwright) against a real hub and two agents.

The browser talks to agent ep1 only, like a person at ep1's machine; ep2 is the other end (set up with the CLI).
Tests run in file order on one signed-in page: sign in with the link ep1 printed, join by uploading the permit, see
endpoints and ping one, stop and start an app, open a tunnel and carry bytes through it, configure the proxy (and its
credentials, with the open-proxy warning), run a command in the browser terminal, upload and download files, follow
and cancel a slow mesh download, read the log; and the refusals: no API call without a session, a cross-origin page
(another port of the same host) can neither read the session nor use it. Every page is saved
as a screenshot under `test-artifacts/gui/` (or `$ZTM_ARTIFACTS/gui/`).
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import re
import secrets
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import support
from support import Agent, Hub, start_agent, start_hub, wait_until

pytestmark = pytest.mark.gui

MESH = "m"
LINK = r"(http://127\.0\.0\.1:\d+/gui/signin\?code=[A-Za-z0-9_-]+)"


@dataclass
class World:
    hub: Hub
    ep1: Agent
    ep2: Agent
    base: str
    tmp: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("gui")
    procs: list[support.Proc] = []
    try:
        hub = start_hub(tmp)
        procs.append(hub.proc)
        ep1 = start_agent(tmp, "ep1")
        procs.append(ep1.proc)
        ep2 = start_agent(tmp, "ep2")
        procs.append(ep2.proc)
        ep2.join(MESH, "ep2", hub.permit)
        yield World(hub, ep1, ep2, f"http://{ep1.api_address}", tmp)
    finally:
        support.stop_all(procs)


@pytest.fixture(scope="module")
def page(browser_context: Any, world: World) -> Any:
    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    return page


def shot(page: Any, artifacts: Path, name: str) -> None:
    page.wait_for_load_state("networkidle")
    page.evaluate("document.getElementById('toasts').replaceChildren()")  # notices of earlier steps
    page.evaluate("window.scrollTo(0, 0)")  # a click scrolled: the sticky top bar would be drawn mid-page
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def goto(page: Any, world: World, name: str) -> None:
    page.goto(f"{world.base}/gui/#/{name}")
    page.wait_for_selector(f"#nav a.active[data-page={name}]", state="attached")
    page.wait_for_selector("#page h1")


def api_status(page: Any, path: str, method: str = "GET") -> int:
    """A request as the app makes it: the session from this origin's storage in `X-Ztm-Session`, if there is one."""
    script = (
        "([p, m]) => fetch(p, {method: m, headers: {'X-Ztm-Session': localStorage.getItem('ztm.session') || ''}})"
        ".then(r => r.status)"
    )
    return int(page.evaluate(script, [path, method]))


# ------------------------------------------------------------------------------------------------- sign-in


def test_without_signin_the_api_refuses_and_the_app_asks_to_sign_in(page: Any, world: World, artifacts: Path) -> None:
    page.goto(f"{world.base}/")  # the seed's promise: the agent's address opens the GUI
    assert page.url == f"{world.base}/gui/"
    page.wait_for_selector("#signin:not([hidden])")
    assert page.is_hidden("#shell")
    assert page.get_by_text("ztm gui", exact=True).is_visible()
    for path in ("/api/meshes", "/api/version", "/api/log"):
        assert api_status(page, path) == 401, path
    assert api_status(page, "/api/gui/signin-codes", "POST") == 401
    shot(page, artifacts, "00-signin")


def test_sign_in_with_the_link_the_agent_printed(page: Any, world: World, artifacts: Path) -> None:
    link_file = world.ep1.data / "gui-signin.txt"  # stdout is not a terminal here: the link went to this 0600 file
    wait_until(link_file.exists, 30, "ep1's sign-in link")
    match = re.search(LINK, link_file.read_text())
    assert match, link_file.read_text()
    page.goto(match.group(1))
    page.wait_for_selector("#shell:not([hidden])")
    assert page.url.startswith(f"{world.base}/gui/")
    assert "code=" not in page.url and "signin=" not in page.url
    assert page.context.cookies() == []  # no cookie: browsers send cookies to every port of a host
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("localStorage.getItem('ztm.session')")  # this origin's storage (scheme, host and port)
    assert api_status(page, "/api/meshes") == 200
    shot(page, artifacts, "01-meshes-empty")


# ------------------------------------------------------------------------------------------- meshes, endpoints


def test_join_a_mesh_by_uploading_the_permit(page: Any, world: World, artifacts: Path) -> None:
    goto(page, world, "meshes")
    form = page.locator("[data-testid=join-form]")
    form.locator("input[name=mesh]").fill(MESH)
    form.locator("input[name=as]").fill("ep1")
    form.locator("input[name=permit]").set_input_files(str(world.hub.permit))
    form.locator("input[name=labels]").fill("site=lab gui")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("[data-testid=meshes] >> text=ep1")
    page.wait_for_selector("#mesh-status.ok")
    assert [m["name"] for m in world.ep1.meshes()] == [MESH]
    page.wait_for_selector("text=Hubs of m")
    shot(page, artifacts, "02-meshes")


def test_a_bad_permit_is_a_one_line_error_and_changes_nothing(page: Any, world: World) -> None:
    bad = world.tmp / "not-a-permit.json"
    bad.write_text('{"hello": "world"}')
    form = page.locator("[data-testid=join-form]")
    form.locator("input[name=mesh]").fill("other")
    form.locator("input[name=as]").fill("ep1b")
    form.locator("input[name=permit]").set_input_files(str(bad))
    form.locator("button[type=submit]").click()
    banner = form.locator(".banner.error")
    banner.wait_for()
    assert "permit" in banner.inner_text().lower()
    assert [m["name"] for m in world.ep1.meshes()] == [MESH]


def test_endpoints_are_listed_with_status_and_can_be_pinged(page: Any, world: World, artifacts: Path) -> None:
    goto(page, world, "endpoints")
    table = page.locator("table[data-testid=endpoints]")
    table.locator("text=ep2").wait_for()
    assert table.locator("tr", has_text="ep2").locator(".badge.ok").inner_text() == "online"
    assert "site=lab" in table.locator("tr", has_text="ep1").inner_text()
    # the path to each peer (docs/nat-traversal.md): on one machine with the hub, through the hub
    assert page.locator("[data-testid=path-ep2]").inner_text().startswith("relay via ")
    assert page.locator("[data-testid=path-ep1]").inner_text() == "\u2013"  # an en dash: no path to itself
    page.click("[data-testid=ping-ep2]")
    page.wait_for_function(
        "() => /\\d+\\.\\d ms/.test([...document.querySelectorAll('table[data-testid=endpoints] tr')]"
        ".find(r => r.textContent.includes('ep2')).textContent)"
    )
    table.locator("tr", has_text="ep2").locator("td").first.click()
    page.wait_for_selector("#page h2:has-text('ep2')")
    shot(page, artifacts, "03-endpoints")


def test_mesh_addresses_and_routes_root_approves(page: Any, world: World, artifacts: Path) -> None:
    """Issue 17: the list and the detail show the mesh addresses; ep1's user (root) approves a route ep2 advertised,
    with the button of the detail panel."""
    eps = {e["name"]: e for e in world.ep2.endpoints()}
    goto(page, world, "endpoints")
    page.locator("table[data-testid=endpoints]").locator("text=ep2").wait_for()
    assert page.locator("[data-testid=mesh-ip-ep2]").inner_text() == eps["ep2"]["mesh_ip"]
    assert page.locator("[data-testid=mesh-ip-ep1]").inner_text() == eps["ep1"]["mesh_ip"]
    world.ep2.cli("ep", "ep2", "route", "advertise", "10.20.0.0/16")
    page.click("#page button:has-text('Refresh')")
    page.locator("table[data-testid=endpoints] tr", has_text="ep2").locator("td").first.click()
    page.wait_for_selector("#page h2:has-text('ep2')")
    assert page.locator("[data-testid=mesh-ip6]").inner_text() == eps["ep2"]["mesh_ip6"]
    page.locator("[data-testid='approve-10.20.0.0/16']").click()
    wait_until(
        lambda: {e["name"]: e for e in world.ep2.endpoints()}["ep2"]["routes"] == ["10.20.0.0/16"],
        10,
        "the route approved from the GUI",
    )
    page.locator("[data-testid='unapprove-10.20.0.0/16']").wait_for()
    shot(page, artifacts, "03b-endpoint-routes")
    world.ep2.cli("ep", "ep2", "route", "withdraw", "10.20.0.0/16")


def test_apps_stop_and_start(page: Any, world: World, artifacts: Path) -> None:
    goto(page, world, "apps")
    page.wait_for_selector("table[data-testid=apps] >> text=tunnel")

    def running(name: str) -> bool:
        status, apps = world.ep1.api("GET", f"/api/meshes/{MESH}/apps")
        assert status == 200, apps
        return any(a["name"] == name and a["running"] for a in apps)

    assert running("proxy")
    page.click("[data-testid=app-stop-proxy]")
    page.wait_for_selector("[data-testid=app-start-proxy]")
    assert not running("proxy")
    page.click("[data-testid=app-start-proxy]")
    page.wait_for_selector("[data-testid=app-stop-proxy]")
    assert running("proxy")
    shot(page, artifacts, "04-apps")


# --------------------------------------------------------------------------------------------------- tunnel


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def test_open_a_tunnel_see_it_listed_and_carry_bytes(page: Any, world: World, artifacts: Path) -> None:
    with EchoServer(("127.0.0.1", 0), _Echo) as echo:
        threading.Thread(target=echo.serve_forever, daemon=True).start()
        try:
            goto(page, world, "tunnel")
            form = page.locator("[data-testid=open-outbound]")
            form.locator("input[name=tunnel]").fill("tcp/echo")
            form.locator("input[name=targets]").fill(f"127.0.0.1:{echo.server_address[1]}")
            form.locator("button[type=submit]").click()
            page.wait_for_selector("table[data-testid=outbound] >> text=tcp/echo")
            assert form.locator("input[name=tunnel]").input_value() == "", "the form is emptied once it worked"

            port = support.free_port()
            world.ep2.cli("tunnel", "open", "inbound", "tcp/echo", "--listen", str(port))
            mesh_wide = page.locator("table[data-testid=mesh-tunnels] tr", has_text="tcp/echo")
            wait_until(lambda: "ep2" in mesh_wide.inner_text(timeout=1000), 30, "the inbound of ep2 in the GUI's list")

            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"z")
                assert sock.recv(1) == b"z"
            row = page.locator("table[data-testid=outbound] tr", has_text="tcp/echo")
            wait_until(lambda: "1 B" in row.inner_text(timeout=1000), 30, "the byte counted in the outbound row")
            shot(page, artifacts, "05-tunnel")

            # inbound opened and closed from the GUI too
            form = page.locator("[data-testid=open-inbound]")
            form.locator("input[name=tunnel]").fill("tcp/echo")
            local_port = support.free_port()
            form.locator("input[name=listen]").fill(str(local_port))
            form.locator("button[type=submit]").click()
            page.wait_for_selector("table[data-testid=inbound] >> text=tcp/echo")
            assert support.tcp_accepts("127.0.0.1", local_port)
            page.click("[data-testid='close-inbound-tcp/echo']")
            page.wait_for_selector("table[data-testid=inbound]", state="detached")
            wait_until(lambda: not support.tcp_accepts("127.0.0.1", local_port), 10, "the closed inbound to stop")
            page.click("[data-testid='close-outbound-tcp/echo']")
            page.wait_for_selector("table[data-testid=outbound]", state="detached")
            status, mine = world.ep1.api("GET", f"/api/meshes/{MESH}/apps/tunnel")
            assert status == 200 and mine == {"inbound": [], "outbound": []}, mine
        finally:
            echo.shutdown()


# ---------------------------------------------------------------------------------------------------- proxy


def test_proxy_listen_targets_and_rules(page: Any, world: World, artifacts: Path) -> None:
    goto(page, world, "proxy")
    port = support.free_port()
    listen = page.locator("[data-testid=proxy-listen]")
    listen.locator("input").fill(f"127.0.0.1:{port}")
    listen.locator("button[type=submit]").click()
    wait_until(lambda: support.tcp_accepts("127.0.0.1", port), 30, "the proxy to listen")
    # the page renders again once its own request is answered: fill the next form only after that, or the new
    # rendering replaces the filled-in box (seen on a loaded machine: the target was never added)
    page.wait_for_selector(f"span.mono:has-text('127.0.0.1:{port}')")
    targets = page.locator("[data-testid=proxy-targets]")
    targets.locator("input").fill("*.lab.example")
    targets.locator("button[type=submit]").click()
    page.wait_for_selector(".chip:has-text('*.lab.example')")
    rule = page.locator("[data-testid=proxy-rule]")
    rule.locator("select").select_option("deny")
    rule.locator("input").nth(1).fill("secret.lab.example")
    rule.locator("button[type=submit]").click()
    page.wait_for_selector("text=secret.lab.example")
    status, config = world.ep1.api("GET", f"/api/meshes/{MESH}/apps/proxy")
    assert status == 200, config
    assert config["listen"] == f"127.0.0.1:{port}"
    assert config["targets"] == ["*.lab.example"]
    assert config["rules"] == [{"action": "deny", "user": "*", "target": "secret.lab.example"}]


def test_proxy_credentials_and_the_open_proxy_warning(page: Any, world: World, artifacts: Path) -> None:
    goto(page, world, "proxy")
    page.wait_for_selector("[data-testid=proxy-auth]")
    warning = page.locator("[data-testid=proxy-open-warning]")
    assert warning.count() == 0  # 127.0.0.1: no warning
    assert "none" in page.inner_text("[data-testid=proxy-auth]")

    port = support.free_port("0.0.0.0")
    listen = page.locator("[data-testid=proxy-listen]")
    listen.locator("input").fill(f"0.0.0.0:{port}")
    listen.locator("button[type=submit]").click()
    warning.wait_for()
    assert f"0.0.0.0:{port}" in warning.inner_text()
    shot(page, artifacts, "06-proxy-open")

    form = page.locator("[data-testid=proxy-set-auth]")
    for name in ("password", "confirm"):
        box = form.locator(f"input[name={name}]")
        assert box.get_attribute("type") == "password" and box.get_attribute("autocomplete") == "new-password", name
    password = secrets.token_urlsafe(18)
    form.locator("input[name=auth-user]").fill("alice")
    form.locator("input[name=password]").fill(password)
    form.locator("input[name=confirm]").fill(password + "x")  # two different passwords: refused before any request
    form.locator("button[type=submit]").click()
    page.wait_for_selector(".toast.error:has-text('passwords differ')")
    status, config = world.ep1.api("GET", f"/api/meshes/{MESH}/apps/proxy")
    assert status == 200 and config["auth"] is None, config

    form.locator("input[name=password]").fill(password)
    form.locator("input[name=confirm]").fill(password)
    form.locator("button[type=submit]").click()
    page.wait_for_selector("[data-testid=proxy-auth-user]:text-is('alice')")
    assert "set" in page.inner_text("[data-testid=proxy-auth]")
    warning.wait_for(state="detached")
    status, config = world.ep1.api("GET", f"/api/meshes/{MESH}/apps/proxy")
    assert status == 200 and config["auth"] == {"user": "alice", "password": "set"}, config
    assert password not in json.dumps(config)
    assert password not in page.content()
    assert password not in json.dumps(page.evaluate("[...document.querySelectorAll('input')].map(i => i.value)"))

    # a SOCKS5 client offering no username/password is refused, and counted on the page
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\xff"
    row = page.locator("table[data-testid=proxy-counters] tr", has_text="unauthorized")
    wait_until(lambda: row.locator("td").nth(1).inner_text(timeout=1000) == "1", 20, "1 unauthorized client counted")
    assert page.locator("table[data-testid=proxy-counters] tr", has_text="direct fallbacks").count() == 1
    shot(page, artifacts, "06-proxy")

    page.click("[data-testid=proxy-clear-auth]")
    page.wait_for_selector("[data-testid=proxy-clear-auth]", state="detached")
    warning.wait_for()
    assert "none" in page.inner_text("[data-testid=proxy-auth]")
    status, config = world.ep1.api("GET", f"/api/meshes/{MESH}/apps/proxy")
    assert status == 200 and config["auth"] is None, config

    loopback = support.free_port()
    listen = page.locator("[data-testid=proxy-listen]")
    listen.locator("input").fill(f"127.0.0.1:{loopback}")
    listen.locator("button[type=submit]").click()
    warning.wait_for(state="detached")
    wait_until(lambda: support.tcp_accepts("127.0.0.1", loopback), 30, "the proxy to listen on loopback again")


# ------------------------------------------------------------------------------------------------- terminal


def test_a_command_in_the_browser_terminal(page: Any, world: World, artifacts: Path) -> None:
    world.ep2.cli("terminal", "enable")  # off by default on every endpoint
    goto(page, world, "terminal")
    page.select_option("[data-testid=term-target]", "ep2")
    page.click("[data-testid=term-connect]")
    page.wait_for_selector("[data-testid=term-state] .badge.ok")
    page.locator("[data-testid=terminal] .xterm").click()
    page.keyboard.type("echo gui-$((6*7))-done\n")
    rows = page.locator("[data-testid=terminal] .xterm-rows")
    wait_until(lambda: "gui-42-done" in rows.inner_text(timeout=1000), 30, "the command's output in the terminal")
    shot(page, artifacts, "07-terminal")
    page.keyboard.type("exit\n")
    page.wait_for_selector("[data-testid=term-state] :text('exited 0')")
    # This endpoint's own switch: off by default, turned on and off again from its GUI.
    enabled = lambda: world.ep1.cli_json("terminal", "config")["enabled"]  # noqa: E731
    assert enabled() is False
    page.click("[data-testid=term-enable]")
    wait_until(enabled, 30, "the GUI's toggle to turn sessions on")
    page.click("[data-testid=term-enable]:text('Turn sessions off')")
    wait_until(lambda: enabled() is False, 30, "the GUI's toggle to turn sessions off")


# ---------------------------------------------------------------------------------------------------- files


def _publish(agent: Agent, path: str, data: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
    try:
        conn.request(
            "POST",
            f"/api/meshes/{MESH}/apps/files/content?path={path}",
            body=data,
            headers={"Authorization": f"Bearer {agent.token}", "Content-Type": "application/octet-stream"},
        )
        answer = conn.getresponse()
        assert answer.status == 201, answer.read()
    finally:
        conn.close()


def test_upload_and_download_files(page: Any, world: World, artifacts: Path, tmp_path: Path) -> None:
    upload = tmp_path / "from-browser.bin"
    upload.write_bytes(os.urandom(3 << 20) + b"end")
    remote = os.urandom((2 << 20) + 17)
    _publish(world.ep2, "/shared/root/from-ep2.bin", remote)

    goto(page, world, "files")
    form = page.locator("[data-testid=upload-form]")
    form.locator("input[type=file]").set_input_files(str(upload))
    form.locator("button[type=submit]").click()
    page.wait_for_selector("[data-testid=transfers] .transfer[data-state=done]")
    page.wait_for_selector("table[data-testid=files] >> text=from-browser.bin")
    status, held = world.ep1.api("GET", f"/api/meshes/{MESH}/apps/files/file?path=/shared/root/from-browser.bin")
    assert status == 200, held
    assert held["size"] == upload.stat().st_size

    for name, expected in (("from-ep2.bin", remote), ("from-browser.bin", upload.read_bytes())):
        with page.expect_download() as info:
            page.click(f"[data-testid='download-/shared/root/{name}']")
        saved = tmp_path / f"saved-{name}"
        info.value.save_as(str(saved))
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == hashlib.sha256(expected).hexdigest(), name
    done = "document.querySelectorAll('[data-testid=transfers] .transfer[data-state=done]').length >= 3"
    page.wait_for_function(done)


def test_a_slow_mesh_download_is_listed_and_cancelled(page: Any, world: World, artifacts: Path) -> None:
    path = "/shared/root/slow.bin"
    _publish(world.ep2, path, os.urandom(3 << 20))
    # the lowest rate: the first chunk goes at once, the next would wait ~17 minutes (a running partial holder)
    status, job = world.ep1.api("POST", f"/api/meshes/{MESH}/apps/files/downloads", {"path": path, "rate": 1024})
    assert status == 202, job

    page.evaluate(f"sessionStorage.setItem('ztm.files.{MESH}', '/shared/root/')")  # the folder the page opens
    goto(page, world, "meshes")
    goto(page, world, "files")
    page.wait_for_selector(f"[data-testid='download-state-{path}'][data-state=running]")
    row = page.locator("table[data-testid=downloads] tr", has_text=path)
    wait_until(lambda: "1/3 chunks" in row.inner_text(timeout=1000), 30, "the first chunk in the download's row")
    assert "ep2 1" in row.inner_text()  # chunks per source

    # the file's holders: ep2 in full, ep1 (this download) as a partial holder once the hub lists it
    file_row = page.locator("table[data-testid=files] tr", has_text="slow.bin").locator("td").first

    def partial_holder() -> bool:
        file_row.click()
        holder = page.locator("table[data-testid=holders] tr", has_text="ep1")
        return "partial" in holder.inner_text(timeout=2000) and "1/3 chunks" in holder.inner_text(timeout=2000)

    wait_until(partial_holder, 30, "ep1 listed as a partial holder", interval=1.0)
    assert "whole file" in page.locator("table[data-testid=holders] tr", has_text="ep2").inner_text()

    page.click(f"[data-testid='cancel-download-{path}']")
    page.wait_for_selector(f"[data-testid='download-state-{path}'][data-state=cancelled]")
    assert page.locator(f"[data-testid='cancel-download-{path}']").count() == 0
    status, jobs = world.ep1.api("GET", f"/api/meshes/{MESH}/apps/files/downloads?path={path}")
    assert status == 200 and jobs[-1]["state"] == "cancelled", jobs
    shot(page, artifacts, "08-files")


# ------------------------------------------------------------------------------------------ logs and settings


def test_logs_and_settings(page: Any, world: World, artifacts: Path) -> None:
    goto(page, world, "logs")
    wait_until(lambda: "agent API on" in page.inner_text("[data-testid=log]"), 20, "the agent's log in the page")
    log_text = page.inner_text("[data-testid=log]")
    assert "code=" not in log_text  # sign-in codes are never logged
    shot(page, artifacts, "09-logs")
    goto(page, world, "settings")
    pem = page.inner_text("[data-testid=identity]")
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    page.click("text=Make a sign-in link")
    made = page.locator("#page pre:has-text('/gui/signin?code=')").inner_text()
    assert made.startswith(f"{world.base}/gui/signin?code="), made
    code = made.split("code=")[1]
    conn = http.client.HTTPConnection("127.0.0.1", world.ep1.port, timeout=10)
    try:  # the link is good: its code opens a session (what the app's script does with it)
        conn.request("POST", "/gui/session", body=json.dumps({"code": code}),
                     headers={"Origin": world.base, "Content-Type": "application/json"})  # fmt: skip
        answer = conn.getresponse()
        assert answer.status == 201 and b'"session"' in answer.read()
    finally:
        conn.close()
    shot(page, artifacts, "10-settings")
    page.click("#theme")
    assert page.evaluate("document.documentElement.dataset.theme") in ("dark", "light")
    if page.evaluate("document.documentElement.dataset.theme") != "dark":
        page.click("#theme")
    goto(page, world, "endpoints")
    page.locator("table[data-testid=endpoints] >> text=ep2").wait_for()
    shot(page, artifacts, "11-endpoints-dark")
    page.set_viewport_size({"width": 420, "height": 860})
    goto(page, world, "meshes")
    shot(page, artifacts, "12-meshes-narrow")
    page.set_viewport_size({"width": 1360, "height": 860})
    page.click("#theme")


# ----------------------------------------------------------------------------------------------- refusals


class _EvilPage(http.server.BaseHTTPRequestHandler):
    target = ""
    timeout = 5  # chromium opens spare connections it never uses: don't wait on them forever

    def do_GET(self) -> None:
        body = b"<!doctype html><title>elsewhere</title><p>another site"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _EvilServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False  # closing must not wait for an idle spare connection's handler


def test_a_cross_origin_page_cannot_use_the_session(page: Any, world: World) -> None:
    """A page of another origin on the same host can neither read the session nor make the browser send it."""
    with _EvilServer(("127.0.0.1", 0), _EvilPage) as evil:
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        other = page.context.new_page()
        try:
            other.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
            assert other.title() == "elsewhere"  # the other site's page really loaded: its scripts run there
            assert other.evaluate("localStorage.getItem('ztm.session')") is None  # storage is per origin
            target = f"{world.base}/api/meshes/{MESH}/endpoints/ep1/labels"
            # a readable cross-origin request fails (no CORS), a blind "simple" POST is refused by the agent
            read = other.evaluate(
                "(url) => fetch(url, {credentials: 'include'}).then(() => 'read', e => 'refused')",
                f"{world.base}/api/meshes",
            )
            assert read == "refused"
            other.evaluate(
                "(url) => fetch(url, {method: 'POST', mode: 'no-cors', credentials: 'include', "
                "headers: {'Content-Type': 'text/plain'}, body: JSON.stringify({add: ['pwned']})}).catch(() => null)",
                target,
            )
            status, ep = world.ep1.api("GET", f"/api/meshes/{MESH}/endpoints/ep1")
            assert status == 200 and "pwned" not in ep["labels"], ep
            # the same request from the GUI's own origin, with its session, works
            status = page.evaluate(
                "(url) => fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json', "
                "'X-Ztm-Session': localStorage.getItem('ztm.session')}, body: JSON.stringify({add: ['mine']})})"
                ".then(r => r.status)",
                f"/api/meshes/{MESH}/endpoints/ep1/labels",
            )
            assert status == 200
            status, ep = world.ep1.api("GET", f"/api/meshes/{MESH}/endpoints/ep1")
            assert "mine" in ep["labels"], ep
        finally:
            other.close()
            evil.shutdown()


def test_sign_out_ends_the_session(page: Any, world: World) -> None:
    goto(page, world, "settings")
    page.click("#page button.danger:has-text('Sign out')")
    page.wait_for_selector("#signin:not([hidden])")
    page.wait_for_selector("#signin-reason:has-text('signed out')")
    assert api_status(page, "/api/meshes") == 401
    assert not page.errors, page.errors
    assert json.dumps(page.errors) == "[]"
