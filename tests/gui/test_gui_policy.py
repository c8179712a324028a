"""The Policy and Audit pages of the web GUI in a real browser (Debian's headless chromium through Playwright) against a
real hub and a real agent (root's endpoint `db-1`, labelled `tag:db`).

Tests run in file order on one signed-in page, as in test_gui_browser.py: sign in with the link the agent wrote, see
that no policy is set, a draft with a syntax error gets the hub's line/column message (and its line marked), a valid
draft is tested, set and listed in the history, "who may reach this endpoint" lists its rules, a check names the
deciding rule, a rollback from the history, and the Audit page lists and filters the entries. Screenshots go to
`test-artifacts/gui/` (or `$ZTM_ARTIFACTS/gui/`) as `20-policy-*.png` and `21-audit.png`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import support
from gui.test_gui_browser import LINK, shot
from support import Agent, Hub, start_hub_and_agents, wait_until

pytestmark = pytest.mark.gui

MESH = "m"
POLICY = """{
  // ops reach the database, everyone reads /shared/
  "groups": {"group:ops": ["bob"]},
  "tagOwners": {"tag:db": ["root"]},
  "acls": [
    {"action": "accept", "src": ["group:ops"], "dst": ["tag:db:tunnel/tcp/pg"]},
    {"action": "accept", "src": ["*"], "dst": ["*:files/shared/"]},
  ],
  "tests": [
    {"src": "bob", "accept": ["tag:db:tunnel/tcp/pg"], "deny": ["tag:db:terminal"]},
  ],
}
"""
SYNTAX = POLICY.replace('"acls": [', '"acl": [')


@dataclass
class World:
    hub: Hub
    ep: Agent
    base: str
    tmp: Path

    def policy(self) -> dict[str, Any]:
        status, got = self.ep.api("GET", f"/api/meshes/{MESH}/policy")
        assert status == 200, got
        assert isinstance(got, dict)
        return got


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("gui-policy")
    procs: list[support.Proc] = []
    try:
        hub, agents = start_hub_and_agents(tmp, ("db-1",))
        procs += [hub.proc, agents["db-1"].proc]
        ep = agents["db-1"]
        ep.join(MESH, "db-1", hub.permit, "--label", "tag:db")
        yield World(hub, ep, f"http://{ep.api_address}", tmp)
    finally:
        support.stop_all(procs)


@pytest.fixture(scope="module")
def page(browser_context: Any, world: World) -> Any:
    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    return page


def goto(page: Any, world: World, name: str) -> None:
    """Open page `name` afresh (the same URL again would not render it again: a fragment is not a navigation)."""
    url = f"{world.base}/gui/#/{name}"
    if page.url == url:
        page.reload()
    else:
        page.goto(url)
    page.wait_for_selector(f"#nav a.active[data-page={name}]", state="attached")
    page.wait_for_selector("#page h1")


def set_draft(page: Any, text: str) -> None:
    page.fill("[data-testid=policy-draft]", text)


# ------------------------------------------------------------------------------------------------------- tests


def test_sign_in_with_the_link_the_agent_wrote(page: Any, world: World) -> None:
    link_file = world.ep.data / "gui-signin.txt"
    wait_until(link_file.exists, 30, "the agent's sign-in link")
    match = re.search(LINK, link_file.read_text())
    assert match, link_file.read_text()
    page.goto(match.group(1))
    page.wait_for_selector("#shell:not([hidden])")
    page.wait_for_selector("#mesh-status.ok")


def test_the_policy_page_says_when_no_policy_is_set(page: Any, world: World, artifacts: Path) -> None:
    goto(page, world, "policy")
    page.wait_for_selector("[data-testid=policy-none]")
    page.wait_for_selector("[data-testid=policy-local] >> text=No policy is set")
    page.wait_for_selector("[data-testid=policy-history] >> text=No policy was ever set")
    # root may change it: the set button is there
    assert page.locator("[data-testid=policy-set]").count() == 1
    shot(page, artifacts, "20-policy-none")


def test_who_may_reach_says_not_available_from_an_agent_without_the_route(page: Any, world: World) -> None:
    """An agent that does not report its rules (an older one: 404) gets a plain "not available", no error."""

    def older_agent(route: Any) -> None:
        body = '{"error": "no route GET /api/meshes/m/policy/local", "code": "not_found"}'
        route.fulfill(status=404, content_type="application/json", body=body)

    page.route("**/api/meshes/m/policy/local", older_agent)
    try:
        goto(page, world, "policy")
        page.wait_for_selector("[data-testid=policy-local] >> text=Not available")
        assert page.locator("[data-testid=policy-local] .banner.error").count() == 0
    finally:
        page.unroute("**/api/meshes/m/policy/local")


def test_a_draft_with_a_syntax_error_shows_the_line_and_column(page: Any, world: World, artifacts: Path) -> None:
    goto(page, world, "policy")
    set_draft(page, SYNTAX)
    page.click("[data-testid=policy-test]")
    banner = page.wait_for_selector("[data-testid=policy-result] .banner.error")
    assert "policy line 5, column 3: unknown key 'acl'" in banner.inner_text()
    marked = page.wait_for_selector("[data-testid=policy-draft-view] .line.marked")
    assert marked.get_attribute("data-line") == "5"
    # "Set policy" with it is refused the same way, and nothing is stored
    page.click("[data-testid=policy-set]")
    page.wait_for_function(
        "() => (document.querySelector('[data-testid=policy-result]') || {}).textContent.includes('column 3')"
    )
    assert world.policy()["version"] == 0
    shot(page, artifacts, "20-policy-syntax-error")


def test_a_valid_draft_is_tested_set_and_listed_in_the_history(page: Any, world: World, artifacts: Path) -> None:
    goto(page, world, "policy")
    set_draft(page, POLICY)
    page.click("[data-testid=policy-test]")
    page.wait_for_selector("[data-testid=policy-result] >> text=Valid, and 1 test passed: nothing was set")
    assert world.policy()["version"] == 0
    page.fill("[data-testid=policy-note]", "first, from the GUI")
    page.click("[data-testid=policy-set]")
    page.wait_for_selector("[data-testid=policy-result] >> text=Set as version 1 (1 test passed)")
    got = world.policy()
    assert (got["version"], got["text"], got["set_by"]) == (1, POLICY, "root")
    row = page.locator("[data-testid=policy-history] tbody tr", has_text="first, from the GUI")
    row.wait_for()
    assert row.locator("td").first.inner_text() == "1 (in force)"
    assert row.locator("td").nth(1).inner_text() == "root"
    # the text in force, highlighted: keys, strings and comments apart, one numbered line each
    page.wait_for_selector("[data-testid=policy-version] >> text=1")
    view = page.locator("[data-testid=policy-text]")
    assert view.locator(".line").count() == POLICY.count("\n")
    assert view.inner_text().replace("\n\n", "\n").strip() == POLICY.strip()
    assert view.locator(".hl-comment").first.inner_text() == "// ops reach the database, everyone reads /shared/"
    assert '"groups"' in view.locator(".hl-key").all_inner_texts()
    assert '"tag:db:tunnel/tcp/pg"' in view.locator(".hl-string").all_inner_texts()
    # who may reach this endpoint (db-1 has tag:db): the two rules, with their lines
    rules = page.locator("[data-testid=policy-local] li")
    rules.first.wait_for()
    texts = rules.all_inner_texts()
    assert len(texts) == 2 and texts[0].startswith("line 6: ") and "tag:db:tunnel/tcp/pg" in texts[0], texts
    assert texts[1].startswith("line 7: ") and "files/shared/" in texts[1], texts
    shot(page, artifacts, "20-policy-set")


def test_check_names_the_deciding_rule(page: Any, world: World) -> None:
    goto(page, world, "policy")
    form = page.locator("[data-testid=policy-check]")
    form.locator("input[name=from]").fill("bob")
    form.locator("input[name=to]").fill("db-1")
    form.locator("input[name=target]").fill("tunnel/tcp/pg")
    form.locator("button[type=submit]").click()
    answer = page.locator("[data-testid=policy-check-result] .banner")
    answer.filter(has_text="Allowed").wait_for()
    assert "allowed by the policy rule at line 6 (acls[0]: " in answer.inner_text()
    form.locator("input[name=target]").fill("terminal")
    form.locator("button[type=submit]").click()
    answer.filter(has_text="Denied").wait_for()
    assert "no rule of policy version 1 allows it" in answer.inner_text()
    form.locator("input[name=target]").fill("tunel/x")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("[data-testid=policy-check-result] .banner.error >> text=invalid app target")


def test_rollback_from_the_history(page: Any, world: World) -> None:
    world.ep.cli("policy", "set", _write(world.tmp / "second.hujson", POLICY.replace("bob", "carol")))
    assert world.policy()["version"] == 2
    goto(page, world, "policy")
    page.wait_for_selector("[data-testid=policy-version] >> text=2")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("[data-testid=rollback-1]")
    page.wait_for_selector("[data-testid=policy-version] >> text=3")
    got = world.policy()
    assert (got["version"], got["text"]) == (3, POLICY)
    page.wait_for_selector("[data-testid=policy-history] >> text=rollback to 1")
    assert not page.errors, page.errors


def test_the_audit_page_lists_and_filters_the_entries(page: Any, world: World, artifacts: Path) -> None:
    goto(page, world, "audit")
    table = page.wait_for_selector("[data-testid=audit]")
    text = table.inner_text()
    for action in ("join", "policy-set", "policy-rollback"):
        assert action in text, text
    assert "first, from the GUI" in text  # the note, in the entry's detail
    shot(page, artifacts, "21-audit")
    page.fill("[data-testid=audit-user]", "nobody")
    page.click("[data-testid=audit-filter] button[type=submit]")
    page.wait_for_selector("[data-testid=audit] >> text=No audit entry matches.")
    page.fill("[data-testid=audit-user]", "root")
    page.click("[data-testid=audit-filter] button[type=submit]")
    page.wait_for_selector("table[data-testid=audit] >> text=policy-rollback")
    page.fill("[data-testid=audit-from]", "2100-01-01T00:00")
    page.click("[data-testid=audit-filter] button[type=submit]")
    page.wait_for_selector("[data-testid=audit] >> text=No audit entry matches.")
    assert not page.errors, page.errors


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
