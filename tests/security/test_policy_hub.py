"""Attacks on the hub's side of the mesh policy and audit log (issue 16), against a real hub and real agents with
real TLS on loopback. The attackers speak the wire protocol with their own agents' certificate files
(tests/reliability/hubclient.py), as a modified agent would.

* A member (neither root nor a policy admin) sets or rolls back the policy: 403, nothing changes, and a `denied`
  audit row names him.
* A policy admin named by root tries to make more admins (or to drop root's list): 403; he may change the rest.
* A member gives his endpoint a tag (`tag:db`) the policy's `tagOwners` does not let him give: 403, by label or by
  enrolling again with it; untagged labels stay his to set.
* The audit log cannot be edited: no PUT/PATCH/DELETE route on an audit path in the OpenAPI file nor in the hub's
  route table, and trying them on the hub (and on its admin port) changes no row.
* A 2 MiB policy is refused with 400 at once.
* A member opening a stream the policy denies is refused by the hub itself (403 "policy: ..."), before the target
  hears of it; a stream of an allowed kind still goes to the target.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from integration.test_hub_admin import metrics
from reliability.hubclient import HubClient
from support import Agent, Hub, policy_mesh
from ztm import pki
from ztm.version import E2E_VERSION

MESH = "m"
REPO = Path(__file__).resolve().parents[2]

POLICY = """{
  "admins": ["carol"],
  "tagOwners": {"tag:db": ["root"]},
  "acls": [
    {"action": "accept", "src": ["bob"], "dst": ["tag:db:tunnel/tcp/pg"]},
  ],
}
"""


@dataclass
class World:
    hub: Hub
    admin: str
    root: Agent
    """root's agent, endpoint `alice` (tagged tag:db by the tests)."""
    bob: Agent
    """endpoint `bob-laptop`: a member."""
    as_root: HubClient
    as_bob: HubClient
    as_carol: HubClient
    """endpoint `carol-pc`: a policy admin (the policy's `admins`)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("policy-attacks")
    with policy_mesh(tmp, MESH, ("carol", "carol-pc", "carol"), ("root", "bob", "carol")) as m:
        c = m.clients
        world = World(m.hub, m.admin, m.agents["root"], m.agents["bob"], c["root"], c["bob"], c["carol"])
        status, got = world.as_root.json("POST", "/api/policy", {"text": POLICY})
        assert status == 200, got
        yield world


def current(world: World) -> dict[str, Any]:
    status, got = world.as_root.json("GET", "/api/policy")
    assert status == 200, got
    return dict(got)


def audit_rows(world: World) -> list[dict[str, Any]]:
    status, got = world.as_root.json("GET", "/api/audit?limit=10000")
    assert status == 200, got
    return list(got)


def test_a_member_cannot_set_or_roll_back_the_policy(world: World) -> None:
    before = current(world)
    opened = POLICY.replace('"src": ["bob"]', '"src": ["*"]')
    status, got = world.as_bob.json("POST", "/api/policy", {"text": opened})
    assert status == 403, got
    assert got["error"] == (
        "only root or a policy admin (the policy's \"admins\") may set the policy; you are 'bob'"
    ), got  # fmt: skip
    status, got = world.as_bob.json("POST", "/api/policy/rollback", {"version": 1})
    assert status == 403, got
    assert current(world) == before
    denied = [r for r in audit_rows(world) if r["action"] == "denied" and r["actor"] == "bob"]
    assert [r["detail"]["attempted"] for r in denied][-2:] == ["set the policy", "roll the policy back"], denied
    assert denied[-1]["actor_ep"] == "bob-laptop" and denied[-1]["source"].startswith("127.0.0.1:")
    # nor read the audit log
    status, got = world.as_bob.json("GET", "/api/audit")
    assert status == 403, got


def test_an_admin_cannot_make_more_admins(world: World) -> None:
    before = current(world)
    for admins in ('["carol", "bob"]', '["bob"]', "[]"):
        status, got = world.as_carol.json("POST", "/api/policy", {"text": POLICY.replace('["carol"]', admins)})
        assert status == 403, (admins, got)
        assert got["error"] == "only root may change the policy's \"admins\"; you are 'carol'", got
    assert current(world) == before
    # what an admin may do: change the rules (admins kept), and read the audit log
    changed = POLICY.replace('"tunnel/tcp/pg"', '"tunnel/tcp/pg", "tag:db:tunnel/tcp/pg2"')
    status, got = world.as_carol.json("POST", "/api/policy", {"text": changed})
    assert status == 200, got
    assert current(world)["set_by"] == "carol"
    assert world.as_carol.json("GET", "/api/audit?limit=1")[0] == 200
    assert world.as_root.json("POST", "/api/policy", {"text": POLICY})[0] == 200  # back to the module's policy


def test_a_member_cannot_give_himself_a_tag_he_does_not_own(world: World) -> None:
    status, got = world.as_bob.json("POST", "/api/endpoints/bob-laptop/labels", {"add": ["tag:db"]})
    assert status == 403, got
    assert "tagOwners of 'tag:db' does not name user 'bob'" in got["error"], got
    labels = {e["name"]: e["labels"] for e in world.as_bob.json("GET", "/api/endpoints")[1]}
    assert "tag:db" not in labels["bob-laptop"]
    # enrolling the endpoint again with the tag: refused the same way (his user certificate)
    user = HubClient(world.hub.address, world.bob.data / "meshes" / MESH, user_cert=True)
    try:
        key = pki.key_from_pem((world.bob.data / "meshes" / MESH / "ep.key").read_text())
        ep_id = pki.identity_of(pki.cert_from_pem((world.bob.data / "meshes" / MESH / "ep.crt").read_text())).ep_id
        assert ep_id is not None
        body = {"ep_id": ep_id, "name": "bob-laptop", "csr": pki.csr_to_pem(pki.make_csr(key, name=ep_id)),
                "labels": ["tag:db"]}  # fmt: skip
        status, got = user.json("POST", "/api/enroll", body)
        assert status == 403 and "tagOwners of 'tag:db'" in got["error"], got
    finally:
        user.close()
    # labels that are not tags are his; root owns tag:db
    assert world.as_bob.json("POST", "/api/endpoints/bob-laptop/labels", {"add": ["blue"]})[0] == 200
    assert world.as_root.json("POST", "/api/endpoints/alice/labels", {"add": ["tag:db"]})[0] == 200


def _hub_routes() -> set[tuple[str, str]]:
    """(method, path pattern) of every route in the hub's route table (src/ztm/hub/routes.py)."""
    text = (REPO / "src" / "ztm" / "hub" / "routes.py").read_text()
    found = set(re.findall(r'\("(GET|POST|PUT|PATCH|DELETE)", re\.compile\(rf?"([^"]+)"\)', text))
    assert ("GET", "/api/audit") in found and len(found) > 20, found
    return found


def test_no_route_edits_or_deletes_audit_rows(world: World) -> None:
    spec = json.loads((REPO / "src" / "ztm" / "openapi.yaml").read_text())
    documented = [
        (method, path)
        for section in ("paths", "x-hub-paths")
        for path, item in spec.get(section, {}).items()
        for method in item
        if "audit" in path
    ]
    assert ("get", "/api/audit") in documented, "the hub's audit route is not in openapi.yaml's x-hub-paths"
    assert [m for m, _ in documented if m in ("put", "patch", "delete")] == []
    assert [r for r in _hub_routes() if "audit" in r[1] and r[0] != "GET"] == []
    # and on the wire: every editing method on every audit path is refused, and no row changes
    before = audit_rows(world)
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        for path in ("/api/audit", f"/api/audit/{before[0]['seq']}", "/api/audit?user=root"):
            status, got = world.as_root.request(method, path, b"[]", [("content-type", "application/json")])
            assert status in (400, 404), (method, path, status, got)
        request = urllib.request.Request(f"http://{world.admin}/audit", method=method, data=b"")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=5)
        err.value.close()
        assert err.value.code == 404
    after = audit_rows(world)
    assert after[: len(before)] == before


def test_a_2mib_policy_is_refused_at_once(world: World) -> None:
    before = current(world)
    huge = '{"groups": {"group:big": [' + ", ".join(f'"user{i:07d}"' for i in range(190_000)) + "]}}"
    assert len(huge) > 2 << 20
    started = time.monotonic()
    status, got = world.as_root.json("POST", "/api/policy", {"text": huge})
    took = time.monotonic() - started
    assert status == 400, got
    assert got["error"].startswith(f"the policy text is {len(huge)} bytes; the hub takes at most 1048576"), got
    print(f"a 2 MiB policy refused in {took * 1000:.0f} ms")
    assert took < 5.0, f"refusing a 2 MiB policy took {took:.2f} s"
    status, got = world.as_bob.json("POST", "/api/policy/check",
                                    {"from": "bob", "to": "alice", "target": "terminal", "text": huge})  # fmt: skip
    assert status == 400 and "at most 1048576" in got["error"], got
    assert current(world) == before


def test_a_policy_whose_event_would_cut_the_agents_off_is_refused(world: World) -> None:
    """Under the 1 MiB text cap, but escapes in the event (newlines, quotes) make its line longer than an agent reads:
    taking it would end every agent's session (and again at every reconnection)."""
    before = current(world)
    text = "{" + "\n" * 1_000_000 + "}"  # each newline is two bytes in the event: \n
    assert len(text.encode()) <= 1 << 20
    status, got = world.as_root.json("POST", "/api/policy", {"text": text, "dry_run": True})
    assert status == 400, got
    assert got["error"].startswith("this policy's event to the agents would be "), got
    assert "agents read at most 1048576: shorten it" in got["error"]
    assert current(world) == before


def _open(client: HubClient, target: str, app: str, service: str) -> tuple[int, dict[str, Any]]:
    """A CONNECT through the hub to endpoint `target` (its name); the hub's (or the target's) answer."""

    async def go() -> tuple[int, bytes]:
        headers = [("ztm-app", app), ("ztm-service", service), ("ztm-e2e", E2E_VERSION)]
        stream = await client.conn.open_stream("CONNECT", target, headers)
        try:
            status, _ = await stream.response()
            return status, await stream.read_all() if status != 200 else b"{}"
        finally:
            stream.reset()

    status, raw = client.run(go(), 20)
    return status, json.loads(raw)


def test_a_stream_the_policy_denies_is_refused_at_the_hub(world: World) -> None:
    world.as_root.json("POST", "/api/endpoints/alice/labels", {"add": ["tag:db"]})
    version = current(world)["version"]
    denied_before = metrics(world.admin).get("ztm_hub_streams_denied_by_policy_total", 0.0)
    status, got = _open(world.as_bob, "alice", "terminal", "shell")
    assert status == 403, got
    assert got["error"] == (
        f"policy: denied: no rule of policy version {version} allows it (bob@bob-laptop -> alice:terminal)"
    ), got
    for app in ("files", "proxy", "some-app"):
        status, got = _open(world.as_bob, "alice", app, "x")
        assert status == 403 and got["error"].startswith("policy: "), (app, got)
    assert metrics(world.admin)["ztm_hub_streams_denied_by_policy_total"] == denied_before + 4
    # a kind the policy allows bob at alice goes on to alice (which decides in full)
    status, got = _open(world.as_bob, "alice", "tunnel", "tcp/pg")
    assert not (status == 403 and got.get("error", "").startswith("policy: ") and "bob-laptop ->" in got["error"])
    assert metrics(world.admin)["ztm_hub_streams_denied_by_policy_total"] == denied_before + 4


def test_a_member_publishes_only_where_the_policy_lets_him_write(world: World, tmp_path: Path) -> None:
    """The file space lets bob write below /shared/bob/ and /users/bob/; with a policy set, he also needs a
    `files-write` rule: the hub refuses the publication (and an unpublish or acl change) otherwise."""
    local = tmp_path / "notes.txt"
    local.write_text("bob's notes\n")
    version = current(world)["version"]
    cp = world.bob.cli("publish", "file", "/shared/bob/notes.txt", "-i", local, check=False)
    assert cp.returncode != 0 and len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    assert f"policy: denied: no rule of policy version {version} allows it" in cp.stderr, cp.stderr
    assert "files-write/shared/bob/notes.txt by bob@bob-laptop, to publish it" in cp.stderr, cp.stderr
    status, listed = world.as_root.json("GET", "/api/files")
    assert status == 200 and "/shared/bob/notes.txt" not in json.dumps(listed), listed
    allowing = POLICY.replace(
        '"dst": ["tag:db:tunnel/tcp/pg"]},', '"dst": ["tag:db:tunnel/tcp/pg"]},\n    {"action": "accept", '
        '"src": ["bob"], "dst": ["bob-laptop:files-write/shared/bob/"]},'
    )  # fmt: skip
    assert world.as_root.json("POST", "/api/policy", {"text": allowing})[0] == 200
    try:
        world.bob.cli("publish", "file", "/shared/bob/notes.txt", "-i", local)
        cp = world.bob.cli("publish", "file", "/users/bob/notes.txt", "-i", local, check=False)  # not that prefix
        assert cp.returncode != 0 and "policy: denied" in cp.stderr, cp.stderr
    finally:
        assert world.as_root.json("POST", "/api/policy", {"text": POLICY})[0] == 200
    cp = world.bob.cli("unpublish", "file", "/shared/bob/notes.txt", check=False)
    assert cp.returncode != 0 and "to unpublish it" in cp.stderr, cp.stderr
    status, listed = world.as_root.json("GET", "/api/files")
    assert status == 200 and "/shared/bob/notes.txt" in json.dumps(listed), listed


def test_an_admin_cannot_write_lines_into_the_hubs_log_through_a_note(world: World) -> None:
    """A policy admin talking to the hub directly (not through an agent, which checks the note first) sends a note
    with a newline and escape sequences: refused with 400, nothing stored, the hub's log gets no forged line."""
    before = current(world)
    forged = "ok\n2026-12-07 00:00:00 INFO ztm.hub: user root set policy version 99\x1b[2J"
    status, got = world.as_carol.json("POST", "/api/policy", {"text": POLICY, "note": forged})
    assert status == 400, got
    assert got["error"] == "field 'note' must be one line of at most 500 characters that are printable", got
    assert current(world) == before
    assert "set policy version 99" not in world.hub.proc.output()
