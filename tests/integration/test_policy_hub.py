"""The hub side of the mesh policy and the audit log (issue 16), against one real hub with real agents and real TLS:
set / get / history / rollback / dry run / check through mTLS clients holding real agents' certificates; a policy
whose tests fail is refused whole; a new version reaches an endpoint's event stream within 1 s; the `policy` event
follows the `hello` before anything else; audit rows for every action; the admin port's `/audit` JSON lines.

One hub for the module (tests run in file order and build on each other's versions: each reads the current version
first instead of assuming a number). An event-stream watcher is a joined endpoint whose agent was stopped: its
certificate opens `GET /api/events` as the agent would.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eventtap import EventWatch
from reliability.hubclient import HubClient
from security.test_evict import empty_file
from support import Agent, Hub, policy_mesh, wait_until
from ztm import pki

MESH = "m"

POLICY = """{
  // who may reach what
  "groups": {"group:ops": ["bob"]},
  "tagOwners": {"tag:db": ["root"]},
  "acls": [
    {"action": "accept", "src": ["group:ops"], "dst": ["tag:db:tunnel/tcp/pg"]},
    {"action": "accept", "src": ["*"], "dst": ["*:files/shared/"]},
    {"action": "accept", "src": ["root"], "dst": ["*:files-write/users/root/"]},
  ],
  "tests": [
    {"src": "bob", "accept": ["tag:db:tunnel/tcp/pg"], "deny": ["tag:db:terminal"]},
  ],
}
"""


@dataclass
class World:
    hub: Hub
    admin: str
    """The hub's admin address (HOST:PORT)."""
    root: Agent
    """root's agent, endpoint `alice`."""
    bob: Agent
    """bob's agent, endpoint `bob-laptop` (a member)."""
    as_root: HubClient
    as_bob: HubClient
    watch_dir: Path
    """Certificate files of endpoint `watch` (root's; its agent stopped after joining)."""
    tmp: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("policy-hub")
    with policy_mesh(tmp, MESH, ("watch", "watch", None)) as m:
        watch = m.agents["watch"]
        watch.proc.stop()  # its certificate opens the event stream from the test instead
        c = m.clients
        yield World(
            m.hub, m.admin, m.agents["root"], m.agents["bob"], c["root"], c["bob"], watch.data / "meshes" / MESH, tmp
        )


def call(client: HubClient, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return client.json(method, path, body)


def ok(client: HubClient, method: str, path: str, body: Any = None) -> Any:
    status, got = call(client, method, path, body)
    assert status == 200, f"{method} {path}: {status} {got}"
    return got


def current(world: World) -> dict[str, Any]:
    got = ok(world.as_bob, "GET", "/api/policy")
    assert isinstance(got, dict)
    return got


def audit(world: World, **query: str) -> list[dict[str, Any]]:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    got = ok(world.as_root, "GET", "/api/audit" + (f"?{q}" if q else ""))
    assert isinstance(got, list)
    return got


# ------------------------------------------------------------------------------------------------------- tests


def test_no_policy_is_version_0_and_allows_with_the_apps_lists(world: World) -> None:
    assert current(world) == {"version": 0, "text": "", "set_by": "", "set_at": 0}
    got = ok(world.as_bob, "POST", "/api/policy/check", {"from": "bob", "to": "alice", "target": "terminal"})
    assert got == {
        "allowed": True, "line": 0, "rule": "", "why": "no policy is set: the apps' own lists decide", "version": 0
    }  # fmt: skip
    assert ok(world.as_bob, "GET", "/api/policy/history") == []


def test_set_get_history_rollback(world: World) -> None:
    # a dry run checks and stores nothing
    assert ok(world.as_root, "POST", "/api/policy", {"text": POLICY, "dry_run": True}) == {"version": 0, "tests": 1}
    assert current(world)["version"] == 0
    first = ok(world.as_root, "POST", "/api/policy", {"text": POLICY, "note": "first"})
    assert first == {"version": 1, "tests": 1}
    got = current(world)
    assert (got["version"], got["text"], got["set_by"]) == (1, POLICY, "root")
    assert abs(got["set_at"] - time.time()) < 60
    second_text = POLICY.replace('"src": ["*"]', '"src": ["bob"]')
    assert ok(world.as_root, "POST", "/api/policy", {"text": second_text})["version"] == 2
    history = ok(world.as_bob, "GET", "/api/policy/history")
    assert [h["version"] for h in history] == [2, 1]  # newest first
    assert history[1]["note"] == "first" and history[1]["set_by"] == "root"
    assert history[1]["sha256"] == hashlib.sha256(POLICY.encode()).hexdigest()
    assert history[1]["lines"] == POLICY.count("\n")
    assert ok(world.as_bob, "GET", "/api/policy?version=1")["text"] == POLICY
    assert call(world.as_bob, "GET", "/api/policy?version=99")[0] == 404
    # rollback: version 1's text as a new version
    assert ok(world.as_root, "POST", "/api/policy/rollback", {"version": 1}) == {"version": 3, "tests": 1}
    got = current(world)
    assert (got["version"], got["text"]) == (3, POLICY)
    assert ok(world.as_bob, "GET", "/api/policy/history")[0]["note"] == "rollback to 1"


def test_a_policy_whose_tests_fail_is_refused_whole(world: World) -> None:
    before = current(world)
    history = ok(world.as_bob, "GET", "/api/policy/history")
    failing = POLICY.replace('"deny": ["tag:db:terminal"]', '"deny": ["tag:db:tunnel/tcp/pg"]')
    status, got = call(world.as_root, "POST", "/api/policy", {"text": failing})
    assert status == 400, got
    assert got["error"].startswith("policy refused, 1 of 1 tests failed: test at line "), got
    assert "\n" not in got["error"]
    assert current(world) == before and ok(world.as_bob, "GET", "/api/policy/history") == history
    # a syntax error names its line and column, nothing changes either
    status, got = call(world.as_root, "POST", "/api/policy", {"text": '{\n  "acl": []\n}'})
    assert status == 400 and got["error"].startswith("policy line 2, column 3: "), got
    assert current(world) == before


def test_check_explains(world: World) -> None:
    ok(world.as_root, "POST", "/api/endpoints/alice/labels", {"add": ["tag:db"]})
    version = current(world)["version"]
    got = ok(world.as_bob, "POST", "/api/policy/check", {"from": "bob", "to": "alice", "target": "tunnel/tcp/pg"})
    assert got["allowed"] is True and got["line"] == 6 and got["version"] == version, got
    assert got["why"].startswith("allowed by the policy rule at line 6"), got
    got = ok(world.as_bob, "POST", "/api/policy/check", {"from": "bob", "to": "alice", "target": "terminal"})
    assert (got["allowed"], got["line"], got["rule"]) == (False, 0, ""), got
    # a draft
    draft = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:terminal"]}]}'
    got = ok(world.as_bob, "POST", "/api/policy/check",
             {"from": "bob", "to": "alice", "target": "terminal", "text": draft})  # fmt: skip
    assert (got["allowed"], got["line"], got["version"]) == (True, 1, 0), got
    status, got = call(world.as_bob, "POST", "/api/policy/check", {"from": "bob", "to": "nobody", "target": "terminal"})
    assert status == 404 and "no endpoint named 'nobody'" in got["error"], got
    status, got = call(world.as_bob, "POST", "/api/policy/check", {"from": "bob", "to": "alice", "target": "ssh"})
    assert status == 400 and "\n" not in got["error"], got


def test_the_policy_event_follows_the_hello_and_a_new_version_arrives_within_1s(world: World) -> None:
    watch = EventWatch(world.hub, world.watch_dir)
    try:
        version = current(world)["version"]
        wait_until(lambda: len(watch.events) >= 2, 10, "the first two events")
        first = [e for _t, e in watch.events[:2]]
        assert first[0]["type"] == "hello" and first[1] == {"type": "policy", "version": version, "text": POLICY}
        text = POLICY.replace("// who may reach what", "// version from the 1 s test")
        sent = time.monotonic()
        got = ok(world.as_root, "POST", "/api/policy", {"text": text})
        arrived = wait_until(lambda: [t for t, e in watch.of("policy") if e["version"] == got["version"]], 5,
                             "the new version on the event stream")  # fmt: skip
        took = arrived[0] - sent
        print(f"policy version {got['version']} reached the event stream {took * 1000:.1f} ms after the set was sent")
        assert took < 1.0, f"the new policy took {took:.3f} s to reach the event stream"
        assert watch.of("policy")[-1][1]["text"] == text
    finally:
        watch.close()


def test_audit_rows_for_each_action(world: World) -> None:
    rows = audit(world)
    actions = [r["action"] for r in rows]
    assert actions[0] == "hub-start" and rows[0]["actor"] == "" and rows[0]["target"] == rows[0]["hub"]
    joins = {r["target"]: r for r in rows if r["action"] == "join"}
    assert set(joins) == {"alice", "bob-laptop", "watch"}
    assert joins["bob-laptop"]["actor"] == "bob" and joins["bob-laptop"]["source"].startswith("127.0.0.1:")
    invites = [r for r in rows if r["action"] == "invite"]
    assert [(r["actor"], r["actor_ep"], r["target"]) for r in invites] == [("root", "alice", "bob")]
    sets = [r for r in rows if r["action"] == "policy-set"]
    assert [r["detail"]["version"] for r in sets] == [1, 2, 4]  # refused and dry-run sets left no row
    assert (
        sets[0]["detail"]["note"] == "first"
        and sets[0]["detail"]["sha256"] == hashlib.sha256(POLICY.encode()).hexdigest()
    )
    rollback = [r for r in rows if r["action"] == "policy-rollback"]
    assert [(r["detail"]["version"], r["detail"]["rollback_to"]) for r in rollback] == [(3, 1)]
    labels = [r for r in rows if r["action"] == "label"]
    assert labels and labels[-1]["target"] == "alice" and labels[-1]["detail"]["add"] == ["tag:db"]
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    mark = rows[-1]["seq"]
    # renew (watch's own certificate), a file and an app published, an invitation, an eviction, an endpoint deleted
    watch = HubClient(world.hub.address, world.watch_dir)
    try:
        key = pki.key_from_pem((world.watch_dir / "ep.key").read_text())
        ep_id = pki.identity_of(pki.cert_from_pem((world.watch_dir / "ep.crt").read_text())).ep_id
        assert ep_id is not None
        ok(watch, "POST", "/api/renew", {"csr": pki.csr_to_pem(pki.make_csr(key, name=ep_id))})
    finally:
        watch.close()
    ok(world.as_root, "POST", "/api/files/entry", empty_file("/users/root/audit.txt"))
    assert call(world.as_root, "POST", "/api/services", {"app": "tunnel", "services": ["tcp/audit-test"]})[0] == 204
    dave = pki.public_key_to_pem(pki.new_key().public_key())
    ok(world.as_root, "POST", "/api/users/dave/invite", {"public_key": dave, "days": 1})
    ok(world.as_root, "POST", "/api/users/dave/evict", {})
    ok(world.as_root, "DELETE", "/api/endpoints/watch")
    status, got = call(world.as_bob, "POST", "/api/users/carol/evict", {})
    assert status == 403, got
    fresh = [r for r in audit(world, since=str(rows[-1]["at"])) if r["seq"] > mark]
    done = [(r["action"], r["actor"], r["target"]) for r in fresh]
    assert done == [
        ("renew", "root", "watch"),
        ("file-publish", "root", "/users/root/audit.txt"),
        ("app-publish", "root", "tunnel"),
        ("invite", "root", "dave"),
        ("evict", "root", "dave"),
        ("leave", "root", "watch"),
        ("denied", "bob", "carol"),
    ], done
    assert fresh[2]["detail"]["services"] == ["tcp/audit-test"] and fresh[2]["actor_ep"] == "alice"
    assert fresh[-1]["detail"] == {"attempted": "evict users", "refusal": "only root may evict users; you are 'bob'"}
    # the same services again (agents publish after every hello): no new row
    assert call(world.as_root, "POST", "/api/services", {"app": "tunnel", "services": ["tcp/audit-test"]})[0] == 204
    assert audit(world)[-1]["seq"] == fresh[-1]["seq"]
    # the filters
    assert {r["actor"] for r in audit(world, user="bob")} == {"bob"}
    assert len(audit(world, limit="2")) == 2
    assert audit(world, since=str(time.time() + 60)) == []


def test_admin_port_exports_json_lines(world: World) -> None:
    rows = audit(world)
    after = rows[2]["seq"]
    with urllib.request.urlopen(f"http://{world.admin}/audit?after={after}", timeout=10) as resp:
        assert resp.status == 200 and resp.headers["content-type"].startswith("application/x-ndjson")
        lines = resp.read().decode().splitlines()
    exported = [json.loads(line) for line in lines]
    assert exported[: len(rows) - 3] == rows[3:]
    assert all(r["seq"] > after for r in exported)
    with urllib.request.urlopen(f"http://{world.admin}/audit", timeout=10) as resp:
        assert json.loads(resp.read().decode().splitlines()[0])["action"] == "hub-start"


def test_bad_input_is_a_one_line_400(world: World) -> None:
    version = current(world)["version"]
    cases = [
        ("GET", "/api/audit?since=yesterday", None, "query parameter 'since' must be unix seconds"),
        ("GET", "/api/audit?since=nan", None, "query parameter 'since' must be unix seconds"),
        ("GET", "/api/audit?limit=0", None, "limit"),
        ("GET", "/api/policy?version=x", None, "query parameter 'version' must be a number"),
        ("POST", "/api/policy", {"note": "no text"}, "missing field 'text'"),
        ("POST", "/api/policy", {"text": 7}, "field 'text' must be"),
        ("POST", "/api/policy", {"text": "{}", "note": "x" * 501}, "field 'note' must be one line"),
        ("POST", "/api/policy/rollback", {"version": "1"}, "version"),
        ("POST", "/api/policy/check", {"from": "bob", "to": "alice"}, "missing field 'target'"),
    ]
    for method, path, body, expected in cases:
        status, got = call(world.as_root, method, path, body)
        assert status == 400, (path, body, got)
        assert expected in got["error"] and "\n" not in got["error"], (path, body, got)
    assert current(world)["version"] == version


def test_a_hub_records_its_start_and_stop(hub: Hub) -> None:
    hub.proc.stop()  # SIGTERM, as an operator stops it
    db = sqlite3.connect(f"file:{hub.data / 'ztm-hub.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT action, actor, target, hub FROM audit ORDER BY seq").fetchall()
    finally:
        db.close()
    assert [r[0] for r in rows] == ["hub-start", "hub-stop"], rows
    assert all(r[1] == "" and r[2] == r[3] for r in rows), rows
