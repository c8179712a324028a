"""Attacks on the people who read the policy and the audit log (issue 16), with real processes and real TLS.

The attacker is bob, a member whom root made a policy admin (`"admins": ["bob"]`): he may set the policy, and he
talks to the hub with his own certificate directly (not through his agent). He sets a policy whose comment carries
terminal escape sequences (retitle the window, clear the screen) and HTML with a script, and whose note carries the
HTML (the hub refuses control characters in a note: tests/security/test_policy_hub.py). The victims are root at a
terminal (`ztm policy get|history|diff`, `ztm get audit`) and root in the web GUI (the Policy and Audit pages, in
chromium): the escape sequences must reach root's terminal as visible text, never as bytes the terminal obeys, and
the HTML must show as text, never run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gui import conftest as gui_fixtures
from reliability.hubclient import HubClient
from support import Agent, Hub, Proc, invite, start_hub_and_agents

MESH = "m"
ESCAPES = "\x1b]0;owned by bob\x07\x1b[2J\x1b[31m"
HTML = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
HOSTILE = (
    "{\n"
    f"  // {ESCAPES} {HTML}\n"
    '  "admins": ["bob"],\n'
    '  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:files/shared/"]}],\n'
    "}\n"
)
NOTE = HTML


@dataclass
class World:
    hub: Hub
    root: Agent
    bob: Agent
    tmp: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("policy-ui-attack")
    procs: list[Proc] = []
    try:
        hub, agents = start_hub_and_agents(tmp, ("root", "bob"))
        procs += [hub.proc, *(a.proc for a in agents.values())]
        root, bob = agents["root"], agents["bob"]
        root.join(MESH, "db-1", hub.permit)
        bob.join(MESH, "bob-laptop", invite(root, bob, "bob", tmp / "bob.json"))
        admins = tmp / "admins.hujson"
        admins.write_text('{"admins": ["bob"], "acls": []}\n', encoding="utf-8")
        root.cli("policy", "set", admins, "--note", "bob may set the policy")
        # bob, with his own certificate, straight to the hub
        as_bob = HubClient(hub.address, bob.data / "meshes" / MESH)
        try:
            status, got = as_bob.json("POST", "/api/policy", {"text": HOSTILE, "note": NOTE})
        finally:
            as_bob.close()
        assert status == 200, f"the hub refused bob's policy: {status} {got}"
        yield World(hub, root, bob, tmp)
    finally:
        for proc in reversed(procs):
            proc.stop()


def _no_raw_escapes(text: str, what: str) -> None:
    assert "\x1b" not in text and "\x07" not in text, f"{what} sent raw escape bytes to the terminal: {text!r}"


def test_the_hostile_policy_is_in_force(world: World) -> None:
    status, got = world.root.api("GET", f"/api/meshes/{MESH}/policy")
    assert status == 200 and got["text"] == HOSTILE and got["set_by"] == "bob", got


@pytest.mark.parametrize(
    "args",
    [
        ("policy", "get"),
        ("policy", "get", "--version", "2"),
        ("policy", "history"),
        ("policy", "diff", "{tmp}/admins.hujson"),
        ("get", "audit"),
        ("get", "audit", "--user", "bob"),
    ],
)
def test_roots_terminal_gets_the_escapes_as_text(world: World, args: tuple[str, ...]) -> None:
    got = world.root.cli(*[a.replace("{tmp}", str(world.tmp)) for a in args])
    _no_raw_escapes(got.stdout + got.stderr, "ztm " + " ".join(args))
    if args[:2] in (("policy", "history"), ("get", "audit")):  # the note, not the text: no escapes to show
        assert "window.__pwned=1" in got.stdout, got.stdout
        return
    assert re.search(r"\\(x1b|u001b)\]0;owned by bob", got.stdout), got.stdout  # shown, escaped, where it was
    assert got.stdout.count("\n") < 40  # no line of the text was turned into many


def test_policy_get_keeps_the_text_usable_as_a_file(world: World) -> None:
    out = world.root.cli("policy", "get").stdout
    assert out.splitlines()[2:] == HOSTILE.splitlines()[2:]  # lines without escapes are byte for byte the same
    assert len(out.splitlines()) == len(HOSTILE.splitlines())


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The GUI tests' browser (Debian's headless chromium, a new empty profile), for this module."""
    yield from gui_fixtures.browser_context.__wrapped__(tmp_path_factory)


def test_roots_browser_shows_the_html_as_text(world: World, chromium: Any) -> None:
    page = chromium.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        link = re.search(r"http://\S+/gui/signin\?code=[A-Za-z0-9_-]+", world.root.cli("gui").stdout)
        assert link, "ztm gui printed no link"
        page.goto(link.group(0))
        page.wait_for_selector("#shell:not([hidden])")
        base = link.group(0).split("/gui/")[0]
        page.goto(f"{base}/gui/#/policy")
        text = page.wait_for_selector("[data-testid=policy-text]")
        assert HTML in text.inner_text()
        history = page.locator("[data-testid=policy-history] tbody tr").first
        history.wait_for()
        assert HTML in history.inner_text()
        page.goto(f"{base}/gui/#/audit")
        page.wait_for_selector("table[data-testid=audit]")
        assert HTML in page.locator("table[data-testid=audit]").inner_text()
        # nothing of it became markup, nothing ran
        assert page.locator("#page img, #page script").count() == 0
        assert page.evaluate("window.__pwned") is None
        page.goto(f"{base}/gui/#/policy")
        page.wait_for_selector("[data-testid=policy-text]")
        assert page.locator("#page img, #page script").count() == 0
        assert page.evaluate("window.__pwned") is None
        assert not errors, errors
    finally:
        page.close()


OPEN = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'


@pytest.mark.parametrize(
    ("token", "headers", "status"),
    [
        ("", {}, 401),  # another local program without the token
        (None, {"Origin": "http://127.0.0.1:1"}, 403),  # a page of another origin, even with the token
        (None, {"Host": "evil.example:80"}, 403),  # DNS rebinding
        ("", {"Content-Type": "text/plain"}, 401),  # a "simple" cross-site POST carries no credential
    ],
)
def test_nobody_sets_the_policy_through_roots_agent_without_its_credential(
    world: World, token: str | None, headers: dict[str, str], status: int
) -> None:
    """The policy routes sit behind the agent API's guard like every route: a request that could come from a web
    page or another local program, setting an open policy in root's name, is refused and changes nothing."""
    before = world.root.api("GET", f"/api/meshes/{MESH}/policy")[1]
    for method, path, body in (
        ("POST", "/policy", {"text": OPEN, "note": "csrf"}),
        ("POST", "/policy/rollback", {"version": 1}),
        ("GET", "/audit", None),
    ):
        got, answer = world.root.api(method, f"/api/meshes/{MESH}{path}", body, token=token, headers=headers)
        assert got == status, (method, path, got, answer)
    assert world.root.api("GET", f"/api/meshes/{MESH}/policy")[1] == before
