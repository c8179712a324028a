"""`ztm policy get|set|test|diff|history|rollback|check` and `ztm get audit` against one real hub and two real agents
(real TLS, real sockets): what each prints, that a refused policy changes nothing, that the audit log shows the
actions just done, and that bad input is one line on stderr with a non-zero exit status and no traceback.

One mesh for the module: root's endpoint `db-1` (labelled `tag:db`) and bob's `bob-laptop`. Tests run in file order
and build on each other's versions, each reading the version in force first instead of assuming a number.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support import Agent, Hub, Proc, invite, one_line_error, start_hub_and_agents

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
SECOND = POLICY.replace('"src": ["*"]', '"src": ["bob"]')
FAILING = POLICY.replace('"deny": ["tag:db:terminal"]', '"deny": ["tag:db:tunnel/tcp/pg"]')
SYNTAX = POLICY.replace('"acls": [', '"acl": [')


@dataclass
class World:
    hub: Hub
    root: Agent
    bob: Agent
    tmp: Path

    def file(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("policy-cli")
    procs: list[Proc] = []
    try:
        hub, agents = start_hub_and_agents(tmp, ("root", "bob"))
        procs += [hub.proc, *(a.proc for a in agents.values())]
        root, bob = agents["root"], agents["bob"]
        root.join(MESH, "db-1", hub.permit, "--label", "tag:db")
        bob.join(MESH, "bob-laptop", invite(root, bob, "bob", tmp / "bob.json"))
        yield World(hub, root, bob, tmp)
    finally:
        for proc in reversed(procs):
            proc.stop()


def in_force(agent: Agent) -> dict[str, Any]:
    """The version in force, from the agent's API (the CLI's own output is checked where it is the subject)."""
    got: dict[str, Any] = policy_api(agent)[0]
    return got


def policy_api(agent: Agent) -> tuple[Any, Any]:
    """The version in force and the history, from the agent's API (no CLI start-up)."""
    got = [agent.api("GET", f"/api/meshes/{MESH}/policy{part}") for part in ("", "/history")]
    assert all(status == 200 for status, _ in got), got
    return got[0][1], got[1][1]


def history(agent: Agent) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = policy_api(agent)[1]
    return got


def audit(agent: Agent, *args: str) -> list[dict[str, Any]]:
    got = agent.cli_json("get", "audit", *args)
    assert isinstance(got, list), got
    return got


# ------------------------------------------------------------------------------------------------------- tests


def test_without_a_policy_get_prints_nothing_and_check_says_the_apps_decide(world: World) -> None:
    got = world.bob.cli("policy", "get")
    assert got.stdout == ""
    assert "no policy is set in mesh m: the apps' own lists decide" in got.stderr
    assert in_force(world.bob) == {"version": 0, "text": "", "set_by": "", "set_at": 0}
    assert "no policy was ever set" in world.bob.cli("policy", "history").stdout
    out = world.bob.cli("policy", "check", "--from", "bob", "--to", "db-1", "terminal").stdout
    assert out.splitlines() == ["allowed: bob -> db-1:terminal (policy version 0)",
                                "no policy is set: the apps' own lists decide"]  # fmt: skip


def test_test_runs_the_tests_at_the_hub_and_sets_nothing(world: World) -> None:
    out = world.root.cli("policy", "test", world.file("p1.hujson", POLICY)).stdout
    assert "p1.hujson: the policy is valid and 1 test passed (a dry run at the hub: nothing was set)" in out
    assert world.root.cli_json("policy", "test", world.tmp / "p1.hujson") == {"version": 0, "tests": 1}
    assert in_force(world.root)["version"] == 0


def test_set_then_get_prints_the_text_as_set(world: World) -> None:
    before = in_force(world.root)["version"]
    path = world.file("p1.hujson", POLICY)
    out = world.root.cli("policy", "set", path, "--note", "first").stdout
    assert f"policy version {before + 1} set in mesh m from {path} (1 test passed)" in out
    got = world.bob.cli("policy", "get")  # every member may read it
    assert got.stdout == POLICY  # the file as written: 'ztm policy get > FILE' round-trips
    assert f"policy version {before + 1}, set by root at " in got.stderr
    policy = in_force(world.bob)
    assert (policy["version"], policy["text"], policy["set_by"]) == (before + 1, POLICY, "root")
    assert abs(policy["set_at"] - time.time()) < 120


def test_a_failing_test_refuses_the_whole_policy_and_changes_nothing(world: World) -> None:
    before, versions = in_force(world.root), history(world.root)
    path = world.file("failing.hujson", FAILING)
    line = one_line_error(world.root.cli("policy", "set", path, "--note", "bad", check=False))
    assert line.startswith(f"ztm: {path}: policy refused, 1 of 1 tests failed: test at line "), line
    assert "bob -> tag:db:tunnel/tcp/pg should be denied" in line, line
    assert line.endswith("; nothing was changed"), line
    assert in_force(world.root) == before
    assert history(world.root) == versions
    assert world.root.cli("policy", "get").stdout == before["text"]
    # the dry run says the same, and sets nothing either
    line = one_line_error(world.root.cli("policy", "test", path, check=False))
    assert "policy refused, 1 of 1 tests failed" in line, line
    assert in_force(world.root) == before


def test_diff_is_a_unified_diff_against_the_policy_in_force(world: World) -> None:
    version = in_force(world.root)["version"]
    path = world.file("p2.hujson", SECOND)
    lines = world.root.cli("policy", "diff", path).stdout.splitlines()
    assert lines[:2] == [f"--- mesh m policy version {version}", f"+++ {path}"], lines
    assert '-    {"action": "accept", "src": ["*"], "dst": ["*:files/shared/"]},' in lines
    assert '+    {"action": "accept", "src": ["bob"], "dst": ["*:files/shared/"]},' in lines
    assert len([x for x in lines if x.startswith(("+", "-"))]) == 4  # two headers, one line out, one in
    same = world.root.cli("policy", "diff", world.tmp / "p1.hujson")
    assert same.stdout.strip() == f"{world.tmp / 'p1.hujson'} is the same as mesh m policy version {version}"
    got = world.root.cli_json("policy", "diff", path)
    assert got["same"] is False and got["version"] == version and "+++ " in got["diff"]


def test_check_prints_the_verdict_and_the_deciding_rule(world: World) -> None:
    version = in_force(world.root)["version"]
    out = world.bob.cli("policy", "check", "--from", "bob", "--to", "db-1", "tunnel/tcp/pg").stdout.splitlines()
    assert out[0] == f"allowed: bob -> db-1:tunnel/tcp/pg (policy version {version})"
    assert out[1].startswith("allowed by the policy rule at line 6 (acls[0]: "), out
    out = world.bob.cli("policy", "check", "--from", "bob@bob-laptop", "--to", "db-1", "terminal").stdout
    assert out.splitlines() == [f"denied: bob@bob-laptop -> db-1:terminal (policy version {version})",
                                f"denied: no rule of policy version {version} allows it"]  # fmt: skip
    got = world.bob.cli_json("policy", "check", "--from", "carol", "--to", "tag:db", "files/shared/a.txt")
    assert (got["allowed"], got["line"], got["version"]) == (True, 7, version)
    # against a draft instead of the policy in force
    draft = world.file("draft.hujson", POLICY.replace('"group:ops": ["bob"]', '"group:ops": ["dave"]'))
    out = world.bob.cli("policy", "check", "--from", "bob", "--to", "db-1", "tunnel/tcp/pg", "--file", draft).stdout
    assert out.splitlines()[0] == f"denied: bob -> db-1:tunnel/tcp/pg (draft {draft})"


def test_history_and_rollback(world: World) -> None:
    first = in_force(world.root)
    second = first["version"] + 1
    world.root.cli("policy", "set", world.tmp / "p2.hujson", "--note", "only bob reads /shared/")
    assert in_force(world.root)["text"] == SECOND
    versions = history(world.bob)
    assert [v["version"] for v in versions[:2]] == [second, first["version"]]  # newest first
    assert versions[0]["note"] == "only bob reads /shared/" and versions[1]["note"] == "first"
    table = world.bob.cli("policy", "history").stdout.splitlines()
    assert table[0].split() == ["VERSION", "SET", "BY", "SET", "AT", "LINES", "SHA256", "NOTE"]
    assert table[1].startswith(f"{second} *") and "root" in table[1] and "only bob reads /shared/" in table[1]
    assert versions[0]["sha256"][:12] in table[1]
    assert world.root.cli("policy", "get", "--version", str(first["version"])).stdout == POLICY
    out = world.root.cli("policy", "rollback", str(first["version"])).stdout
    assert f"to the text of policy version {first['version']}: it is now version {second + 1}" in out
    now = in_force(world.root)
    assert (now["version"], now["text"]) == (second + 1, POLICY)
    assert history(world.root)[0]["note"] == f"rollback to {first['version']}"


def test_a_member_cannot_set_roll_back_or_read_the_audit(world: World) -> None:
    before = in_force(world.bob)
    line = one_line_error(world.bob.cli("policy", "set", world.tmp / "p2.hujson", check=False))
    assert line.startswith("ztm: ") and "root" in line and "admin" in line, line
    line = one_line_error(world.bob.cli("policy", "rollback", "1", check=False))
    assert "admin" in line, line
    line = one_line_error(world.bob.cli("get", "audit", check=False))
    assert "audit" in line, line
    assert in_force(world.bob) == before


def test_get_audit_shows_the_actions_done(world: World) -> None:
    entries = audit(world.root)
    actions = [(e["actor"], e["action"]) for e in entries]
    for wanted in [("root", "join"), ("root", "invite"), ("bob", "join"), ("root", "policy-set"),
                   ("root", "policy-rollback"), ("bob", "denied")]:  # fmt: skip
        assert wanted in actions, (wanted, actions)
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)  # oldest first
    sets = [e for e in entries if e["action"] == "policy-set"]
    assert all(e["actor_ep"] == "db-1" for e in sets), sets
    assert {e["action"] for e in audit(world.root, "--user", "bob")} <= {"join", "enroll", "denied", "renew"}
    assert all(e["actor"] == "bob" for e in audit(world.root, "--user", "bob"))
    # --since: a duration ago, an ISO time, unix seconds
    assert audit(world.root, "--since", "2030-01-01T00:00:00Z") == []
    assert {e["seq"] for e in audit(world.root, "--since", "1h")} == {e["seq"] for e in entries}
    last = entries[-1]
    newer = audit(world.root, "--since", str(int(last["at"])))
    assert last["seq"] in {e["seq"] for e in newer} and len(newer) < len(entries)
    assert len(audit(world.root, "--limit", "2")) == 2
    table = world.root.cli("get", "audit", "--user", "bob").stdout.splitlines()
    assert table[0].split() == ["SEQ", "TIME", "ACTOR", "FROM", "ACTION", "TARGET", "DETAIL"]
    assert any(" denied " in row and " bob " in row for row in table[1:]), table
    assert world.root.cli("get", "audit", "--since", "2030-01-01").stdout.strip() == "no audit entries match"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["policy", "set", "{tmp}/missing.hujson"], "ztm: policy file {tmp}/missing.hujson does not exist"),
        (["policy", "set", "{tmp}"], "is a directory, not a file"),
        (["policy", "set", "{tmp}/latin1.hujson"], "is not UTF-8 text (byte 0xe9 on line 2): save it as UTF-8"),
        (
            ["policy", "set", "{tmp}/syntax.hujson"],
            "ztm: {tmp}/syntax.hujson: policy line 5, column 3: unknown key 'acl'",
        ),
        (["policy", "test", "{tmp}/syntax.hujson"], "policy line 5, column 3"),
        (["get", "audit", "--since", "yesterday"], "ztm get: argument --since: expected unix seconds"),
        (["get", "audit", "--user", "Bob!"], "argument --user: invalid user"),
        (["get", "audit", "bob"], "ztm get audit takes no NAME"),
        (["policy", "check", "--from", "Bob Smith", "--to", "db-1", "terminal"], "argument --from: invalid caller"),
        (["policy", "check", "--from", "bob", "--to", "db-1", "tunel/tcp/pg"], "invalid app target 'tunel/tcp/pg'"),
        (["policy", "check", "--from", "bob", "--to", "no such", "terminal"], "argument --to: invalid"),
        (["policy", "check", "--from", "bob", "--to", "nobody", "terminal"], "no endpoint named 'nobody'"),
        (["policy", "rollback", "999"], "999"),
        (["policy", "set", "{tmp}/p1.hujson", "--note", "two\nlines"], "a note is one line"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(world: World, args: list[str], expected: str) -> None:
    world.file("latin1.hujson", "{\n  // caf\xe9\n}\n".encode("latin-1"))
    world.file("syntax.hujson", SYNTAX)
    before = in_force(world.root)
    tmp = str(world.tmp)
    got = world.root.cli(*[a.replace("{tmp}", tmp) for a in args], check=False)
    line = one_line_error(got)
    assert expected.replace("{tmp}", tmp) in line, line
    assert got.stdout == ""
    assert in_force(world.root) == before


def test_json_output_is_the_apis(world: World) -> None:
    policy = world.root.cli_json("policy", "get")
    assert set(policy) == {"version", "text", "set_by", "set_at"}
    versions = world.root.cli_json("policy", "history")
    assert set(versions[0]) == {"version", "set_by", "set_at", "note", "lines", "sha256"}
    entry = world.root.cli_json("get", "audit", "--limit", "1")[0]
    assert set(entry) == {"seq", "at", "hub", "actor", "actor_ep", "action", "target", "detail", "source"}
    assert json.loads(world.root.cli("policy", "get", "-o", "json").stdout)["version"] == policy["version"]


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("POST", "/policy", {"text": "{}", "dry_run": True, "set_by": "root"}, "unknown field 'set_by'"),
        ("POST", "/policy", {"dry_run": True}, "missing field 'text'"),
        ("POST", "/policy", {"text": 42}, "field 'text' must be the policy's text (a string), got int"),
        ("POST", "/policy", {"text": "{}", "dry_run": "yes"}, "field 'dry_run' must be true or false"),
        ("POST", "/policy", {"text": "{}", "note": "a\nb"}, "field 'note' must be one line"),
        ("POST", "/policy", {"text": " " * (1 << 20) + "{}"}, "the policy text is 1048578 bytes; at most 1048576"),
        ("POST", "/policy", [1], "request body must be a JSON object"),
        ("POST", "/policy/rollback", {"version": "1"}, "version must be a whole number from 1 to"),
        ("POST", "/policy/rollback", {"version": 1, "force": True}, "unknown field 'force'"),
        ("POST", "/policy/check", {"from": "bob", "to": "db-1"}, "missing field 'target'"),
        ("POST", "/policy/check", {"from": "Bob", "to": "db-1", "target": "terminal"}, "invalid caller 'Bob'"),
        ("POST", "/policy/check", {"from": "bob", "to": "tag:", "target": "terminal"}, "invalid tag 'tag:'"),
        ("GET", "/policy?version=1%26user%3Droot", None, "query parameter 'version' must be a whole number"),
        ("GET", "/audit?since=yesterday", None, "query parameter 'since' must be unix seconds"),
        ("GET", "/audit?user=root%26limit%3D1", None, "invalid user name 'root&limit=1'"),
        ("GET", "/audit?limit=0", None, "query parameter 'limit' must be a whole number from 1 to 10000"),
        ("GET", "/audit?seq=1", None, "unknown query parameter 'seq'"),
    ],
)
def test_the_agent_api_checks_requests_before_they_leave(
    world: World, method: str, path: str, body: Any, expected: str
) -> None:
    before = policy_api(world.root)
    status, got = world.root.api(method, f"/api/meshes/{MESH}{path}", body)
    assert status == 400, (status, got)
    assert expected in got["error"] and "\n" not in got["error"], got
    assert policy_api(world.root) == before


def test_a_policy_body_may_exceed_the_apis_usual_limit(world: World) -> None:
    """Nearly 1 MiB of policy text (UTF-8) is about 3 MiB of JSON with ASCII escapes (each "é" a 6-byte \\u00e9): the
    pass-through takes such a body to the hub, over the API's usual 1 MiB limit."""
    text = "{}\n//" + "\u00e9" * (((1 << 20) - 200) // 2) + "\n"
    assert (1 << 20) - 200 <= len(text.encode()) <= 1 << 20
    body = {"text": text, "dry_run": True}
    assert len(json.dumps(body)) > 2 * (1 << 20)
    status, got = world.root.api("POST", f"/api/meshes/{MESH}/policy", body, timeout=30)
    assert (status, got) == (200, {"version": 0, "tests": 0}), (status, str(got)[:200])
