"""A mesh's life through the `ztm` command line: join, look around, label, logs, leave, restarts, certificate
renewal, several meshes on one agent, token discovery and the data-directory locks.

Real hub and agent processes on 127.0.0.1 with real TLS; every wait polls with a deadline (tests/support.py).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import (
    ZTM,
    Agent,
    Hub,
    base_env,
    by_name,
    free_port,
    invite,
    join_all,
    one_line_error,
    restart_agent,
    restart_hub,
    run,
    wait_until,
)

MESH = "m"
Make = Callable[..., Any]


# ------------------------------------------------------------------------------------------------------ helpers


def key_values(text: str) -> dict[str, str]:
    """`ztm describe` output (`key:   value` lines) as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def table_rows(text: str) -> list[list[str]]:
    """A `ztm get` table without its header, each row split on runs of 2+ spaces."""
    lines = [line for line in text.splitlines() if line.strip()]
    return [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]


def sees_online(agent: Agent, *names: str, mesh: str | None = None) -> bool:
    extra = ("--mesh", mesh) if mesh else ()
    return set(names) <= agent.online_names(*extra)


def sees_offline(agent: Agent, name: str) -> bool:
    ep = by_name(agent.endpoints()).get(name)
    return ep is not None and ep["online"] is False


def mesh_status(agent: Agent, mesh: str = MESH) -> dict[str, Any]:
    found = [m for m in agent.meshes() if m.get("name") == mesh]
    assert len(found) == 1, f"{agent.name}: expected mesh {mesh} once in ztm get mesh, got {found}"
    return found[0]


def two_agents(make_mesh: Make, *hub_extra: str) -> tuple[Hub, Agent, Agent]:
    hub, agents = make_mesh(("a", "b"), hub_extra=hub_extra)
    a, b = agents["a"], agents["b"]
    join_all(MESH, [(a, "alice"), (b, "bob")], hub.permit)
    return hub, a, b


# -------------------------------------------------------------------------------------------------------- tests


def test_two_agents_see_each_other_and_describe_the_mesh(make_mesh: Make) -> None:
    hub, a, b = two_agents(make_mesh)

    for me, other in ((a, "bob"), (b, "alice")):
        eps = by_name(me.endpoints())
        assert set(eps) == {"alice", "bob"}
        assert all(e["online"] is True for e in eps.values()), eps
        assert all(e["user"] == "root" for e in eps.values()), eps
        local = [name for name, e in eps.items() if e["is_local"] is True]
        assert local == [{"a": "alice", "b": "bob"}[me.name]], f"{me.name}: is_local marks {local}"
        assert eps[other]["is_local"] is False
        assert eps[other]["ip"] == "127.0.0.1"
    # The table says the same for people.
    rows = {r[0]: r for r in table_rows(a.cli("get", "ep").stdout)}
    assert set(rows) == {"alice (local)", "bob"}, rows
    assert rows["bob"][1:3] == ["root", "online"]

    # get mesh: JSON and table
    mesh = mesh_status(a)
    assert mesh["status"] == "online" and mesh["error"] is None
    assert mesh["hubs"] == [hub.address]
    assert mesh["ep_name"] == "alice" and mesh["user"] == "root"
    assert re.fullmatch(r"[0-9a-f]{16}", mesh["mesh_id"])
    assert mesh_status(b)["mesh_id"] == mesh["mesh_id"]
    assert mesh["connected_since"] and mesh["cert_expires"] and mesh["joined_at"]
    assert table_rows(a.cli("get", "mesh").stdout) == [[MESH, "root", "alice", hub.address, "online"]]

    # get hub: JSON and table
    hubs = a.cli_json("get", "hub")
    assert len(hubs) == 1
    h = hubs[0]
    assert h["address"] == hub.address and h["connected"] is True and h["status"] == "online"
    assert isinstance(h["rtt_ms"], float) and h["rtt_ms"] >= 0
    versions = a.cli_json("version")
    assert versions["agent"]["ztm"] == versions["cli"] == h["version"], (versions, h)
    [hub_row] = table_rows(a.cli("get", "hub").stdout)
    assert hub_row[2:4] == [hub.address, "yes"] and hub_row[5:8] == ["*", hub_row[6], "online"], hub_row
    assert hub_row[0] == h["id"] and hub_row[6].endswith(" ms"), hub_row

    # describe mesh / hub / ep
    described = key_values(a.cli("describe", "mesh", MESH).stdout)
    assert described["status"] == "online"
    assert described["hubs"] == hub.address
    assert described["mesh_id"] == mesh["mesh_id"]
    assert described["ep_name"] == "alice"
    described = key_values(a.cli("describe", "hub").stdout)
    assert described["address"] == hub.address and described["status"] == "online"
    assert described["connected"] == "yes" and described["version"] == versions["cli"]
    assert re.fullmatch(r"\d+(\.\d+)? ms", described["rtt_ms"]), described
    described = key_values(a.cli("describe", "ep", "bob").stdout)
    assert described["name"] == "bob" and described["online"] == "yes" and described["is_local"] == "no"
    assert described["version"] == versions["cli"] and described["user"] == "root"
    assert re.fullmatch(r"\d+(\.\d+)? ms", described["ping"]), f"describe ep bob: ping {described['ping']!r}"
    own = key_values(b.cli("describe", "ep").stdout)  # no NAME: this endpoint
    assert own["name"] == "bob" and own["is_local"] == "yes"

    # ping: three replies, exit 0
    cp = a.cli("ping", "ep", "bob", "--count", "3")
    replies = re.findall(r"^reply from bob: time=(\d+\.\d+) ms$", cp.stdout, re.M)
    assert len(replies) == 3, cp.stdout
    assert "3 sent, 3 received, 0% loss" in cp.stdout
    pinged = b.cli_json("ping", "ep", "alice", "--count", "2")
    assert pinged["ep"] == by_name(b.endpoints())["alice"]["id"] and len(pinged["rtt_ms"]) == 2


def test_join_returns_only_once_the_endpoint_is_online(
    make_mesh: Make,
) -> None:
    hub, agents = make_mesh(("a", "b"))
    a, b = agents.values()
    a.join(MESH, "alice", hub.permit)
    joined = json.loads(
        b.cli("join", MESH, "--as", "bob", "--permit", hub.permit, "--label", "role=db", "-o", "json").stdout
    )
    # No polling from here on: the first look must already see bob online.
    eps = by_name(a.endpoints())
    assert "bob" in eps, f"alice's first look after bob's join does not list bob: {sorted(eps)}"
    assert eps["bob"]["online"] is True, f"bob joined but alice's first look lists him offline: {eps['bob']}"
    assert eps["bob"]["labels"] == ["role=db"]
    assert joined["status"] == "online" and joined["ep_name"] == "bob" and joined["ep_id"] == eps["bob"]["id"]
    assert mesh_status(b)["status"] == "online"
    assert by_name(b.endpoints())["alice"]["online"] is True


def test_labels(make_mesh: Make, tmp_path: Path) -> None:
    hub, agents = make_mesh(("a", "bob"))
    a, b = agents.values()
    a.join(MESH, "alice", hub.permit)
    b.join(MESH, "bob-laptop", invite(a, b, "bob", tmp_path / "bob.json"))

    cp = a.cli("label", "--add", "role=web", "--add", "zone=eu")
    assert cp.stdout.strip() == "labels of alice: role=web, zone=eu"
    assert by_name(b.endpoints())["alice"]["labels"] == ["role=web", "zone=eu"]
    cp = a.cli("label", "--delete", "zone=eu")
    assert cp.stdout.strip() == "labels of alice: role=web"
    assert by_name(b.endpoints())["alice"]["labels"] == ["role=web"]
    rows = {r[0]: r for r in table_rows(b.cli("get", "ep").stdout)}
    assert rows["alice"][5] == "role=web", rows["alice"]
    assert a.cli_json("label")["labels"] == ["role=web"]  # no flags: show

    # Invalid labels: refused on one line, nothing changes.
    for bad in ("bad label!", "k=" + "x" * 62, "ümlaut"):
        line = one_line_error(a.cli("label", "--add", bad, check=False))
        assert "label" in line, line
    status, answer = a.api("POST", f"/api/meshes/{MESH}/endpoints/alice/labels", {"add": ["no spaces allowed"]})
    assert status == 400 and "label" in answer["error"], (status, answer)
    line = one_line_error(a.cli("label", "--add", ",".join(f"l{i}" for i in range(40)), check=False))
    assert re.search(r"labels", line), line
    assert by_name(a.endpoints())["alice"]["labels"] == ["role=web"]

    # Another user may not label alice (root's endpoint); root may label anybody's.
    line = one_line_error(b.cli("label", "ep", "alice", "--add", "owner=bob", check=False))
    assert "root" in line, line
    assert by_name(a.endpoints())["alice"]["labels"] == ["role=web"]
    cp = a.cli("label", "ep", "bob-laptop", "--add", "team=ops")
    assert cp.stdout.strip() == "labels of bob-laptop: team=ops"
    assert by_name(b.endpoints())["bob-laptop"]["labels"] == ["team=ops"]
    cp = b.cli("label", "--add", "os=linux")  # bob labels his own endpoint
    assert by_name(a.endpoints())["bob-laptop"]["labels"] == ["team=ops", "os=linux"]


def test_logs_and_stats(make_mesh: Make) -> None:
    _hub, a, _b = two_agents(make_mesh)

    cp = a.cli("log", "ep", "bob")
    lines = cp.stdout.splitlines()
    assert lines, "ztm log ep bob printed nothing"
    assert any("joined mesh m as bob" in line for line in lines), cp.stdout
    assert len(a.cli_json("log", "ep", "bob", "-n", "1")["lines"]) == 1

    cp = a.cli("log", "agent")
    assert any("agent API on http://" + a.api_address in line for line in cp.stdout.splitlines()), cp.stdout
    assert any("joined mesh m as alice" in line for line in cp.stdout.splitlines()), cp.stdout

    hub_log = a.cli_json("log", "hub")["lines"]
    assert any("enrolled endpoint bob" in line for line in hub_log), hub_log

    stats = a.cli_json("stats", "ep")
    assert stats, "ztm stats ep -o json: no rows"
    assert any(s["bytes_sent"] > 0 and s["bytes_received"] > 0 for s in stats), stats
    rows = table_rows(a.cli("stats", "ep").stdout)
    assert rows and all(re.fullmatch(r"[\d.]+ (B|KiB|MiB|GiB)", r[1]) for r in rows), rows
    assert any(not r[1].startswith("0 ") and not r[2].startswith("0 ") for r in rows), rows


def test_leave_and_join_again(make_mesh: Make) -> None:
    hub, a, b = two_agents(make_mesh)
    bob_id = by_name(a.endpoints())["bob"]["id"]

    cp = b.cli("leave", MESH)
    assert cp.stdout.strip() == f"left mesh {MESH}"
    wait_until(lambda: sees_offline(a, "bob"), 10, "alice to list bob offline after bob left")
    assert b.meshes() == []
    assert "has not joined any mesh" in b.cli("get", "mesh").stdout
    assert not (b.data / "meshes" / MESH).exists(), "leave left the mesh's TLS files behind"
    line = one_line_error(b.cli("get", "ep", check=False))
    assert "not joined any mesh" in line, line
    assert a.online_names() == {"alice"}

    b.join(MESH, "bob", hub.permit)
    eps = [e for e in a.endpoints() if e["name"] == "bob"]
    assert len(eps) == 1 and eps[0]["online"] is True, f"after joining again alice lists {eps}"
    assert eps[0]["id"] != bob_id, "a new join is a new endpoint"
    assert mesh_status(b)["status"] == "online"


def test_agent_and_hub_restarts_keep_the_mesh(make_mesh: Make, make_agent: Make) -> None:
    hub, a, b = two_agents(make_mesh)
    before_b = mesh_status(b)
    hub_before = a.cli_json("get", "hub")[0]
    permit_bytes = hub.permit.read_bytes()

    # The agent comes back by itself: same endpoint, online again, seen online by its peer.
    restart_agent(b)
    wait_until(lambda: mesh_status(b)["status"] == "online", 15, "bob's mesh to come back online by itself")
    after_b = mesh_status(b)
    assert after_b["ep_id"] == before_b["ep_id"] and after_b["mesh_id"] == before_b["mesh_id"]
    wait_until(lambda: sees_online(a, "bob"), 15, "alice to list bob online after bob's agent restarted")
    assert [e["name"] for e in a.endpoints()].count("bob") == 1

    # The hub comes back on the same data: same permit file, same CA, agents reconnect by themselves.
    restart_hub(hub)
    assert hub.permit.read_bytes() == permit_bytes, "the hub rewrote the root permit on restart"
    assert os.stat(hub.permit).st_mode & 0o777 == 0o600
    for agent in (a, b):
        reconnected = functools.partial(sees_online, agent, "alice", "bob")
        wait_until(reconnected, 20, f"{agent.name} to reconnect and list alice and bob online")
        assert mesh_status(agent)["status"] == "online"
    hub_after = a.cli_json("get", "hub")[0]
    assert hub_after["hub_id"] == hub_before["hub_id"]
    assert mesh_status(a)["mesh_id"] == before_b["mesh_id"]

    c = make_agent("c")
    c.join(MESH, "carol", hub.permit)  # the permit from the first start still works: same CA
    assert sees_online(a, "alice", "bob", "carol")
    assert mesh_status(c)["mesh_id"] == before_b["mesh_id"]


def test_certificate_renewal_keeps_the_endpoint_online(make_mesh: Make) -> None:
    """With 6-second certificates both agents renew at half-life (PROTOCOL.md section 6); watched until bob's
    certificate was renewed three times (about 9 s), each lists the other online at every look and the listing itself
    never fails."""
    ttl = 6.0
    hub, a, b = two_agents(make_mesh, "--cert-ttl", str(int(ttl)))
    first = mesh_status(b)["cert_expires"]
    changes: list[tuple[float, str]] = [(time.monotonic(), first)]
    start = time.monotonic()
    offline: list[str] = []
    failed: list[str] = []
    checks = 0

    def look() -> bool:
        nonlocal checks
        checks += 1
        when = f"{time.monotonic() - start:.2f}s"
        for me in (a, b):
            status, eps = me.api("GET", f"/api/meshes/{MESH}/endpoints")
            if status != 200:
                failed.append(f"{when}: {me.name}'s endpoint list failed: {status} {eps}")
                continue
            states = {e["name"]: e["online"] for e in eps}
            if states != {"alice": True, "bob": True}:
                offline.append(f"{when}: {me.name} lists {states}")
        status, mesh = b.api("GET", f"/api/meshes/{MESH}")
        if status != 200:
            failed.append(f"{when}: bob's agent does not show its mesh: {status} {mesh}")
            return False
        if mesh["status"] != "online":
            offline.append(f"{when}: bob's own mesh status is {mesh['status']} ({mesh['error']})")
        if mesh["cert_expires"] != changes[-1][1]:
            changes.append((time.monotonic(), mesh["cert_expires"]))
        return len(changes) >= 4  # the first certificate and three renewals

    wait_until(look, 15.0, "bob's certificate to be renewed three times", interval=0.05)
    took = time.monotonic() - start
    assert checks > took / 0.3, f"only {checks} looks in {took:.1f} s"

    assert not offline, f"an endpoint was seen offline during certificate renewals: {offline[:10]}"
    values = [v for _, v in changes]
    assert values == sorted(values) and len(set(values)) == len(values), f"cert_expires went backwards: {values}"
    assert len(values) >= 4, f"bob's certificate was renewed {len(values) - 1} times (ttl {ttl}s): {values}"
    last = mesh_status(b)["cert_expires"]  # the CLI shows it moving forward too
    assert last > first, (first, last)
    log = hub.proc.output()
    assert "certificate expired; closing" not in log and " is offline" not in log, "the hub dropped a session"

    problems = []
    if failed:
        problems.append(f"{len(failed)} endpoint listings failed during renewals, e.g. {failed[:3]}")
    gaps = [round(t2 - t1, 2) for (t1, _), (t2, _) in itertools.pairwise(changes[1:])]  # [0] is no renewal
    if min(gaps) < ttl / 2 * 0.66:
        problems.append(f"bob renewed every {gaps} s with --cert-ttl {ttl:g}: expected every ~{ttl / 2:g} s")
    assert not problems, "; ".join(problems)


def test_one_agent_in_two_meshes(make_hub: Make, make_agent: Make) -> None:
    hub1, hub2 = make_hub(name="hub1"), make_hub(name="hub2")
    a, b = make_agent("a"), make_agent("b")
    a.join("one", "alice", hub1.permit)
    a.join("two", "alice2", hub2.permit)
    b.join("one", "bob", hub1.permit)

    rows = table_rows(a.cli("get", "mesh").stdout)
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
        ("one", "alice", hub1.address, "online"),
        ("two", "alice2", hub2.address, "online"),
    ]
    assert {m["name"]: m["mesh_id"] for m in a.meshes()}["one"] != {m["name"]: m["mesh_id"] for m in a.meshes()}["two"]

    line = one_line_error(a.cli("get", "ep", check=False))
    assert "one" in line and "two" in line and "--mesh" in line, line
    line = one_line_error(a.cli("ping", "ep", "bob", "-c", "1", check=False))
    assert "one, two" in line, line

    assert a.online_names("--mesh", "one") == {"alice", "bob"}
    assert a.online_names("--mesh", "two") == {"alice2"}
    as_env = a.cli("get", "ep", "-o", "json", env={"ZTM_MESH": "two"})
    assert {e["name"] for e in json.loads(as_env.stdout)} == {"alice2"}
    flag_wins = a.cli("get", "ep", "-o", "json", "--mesh", "one", env={"ZTM_MESH": "two"})
    assert {e["name"] for e in json.loads(flag_wins.stdout)} == {"alice", "bob"}
    a.cli("ping", "ep", "bob", "-c", "1", env={"ZTM_MESH": "one"})
    line = one_line_error(a.cli("get", "ep", env={"ZTM_MESH": "three"}, check=False))
    assert "three" in line, line
    assert sees_online(b, "alice", "bob")  # bob is only in mesh one and needs no selection


def test_ztm_agent_env_finds_the_token_from_home(
    make_mesh: Make,
) -> None:
    hub, agents = make_mesh(("a",))
    a = agents["a"]
    a.join(MESH, "alice", hub.permit)

    env = base_env({"ZTM_AGENT": a.api_address}, home=a.home)
    cp = run([*ZTM, "get", "ep"], env=env, cwd=a.dir)  # no --agent, no token flag
    assert table_rows(cp.stdout)[0][:3] == ["alice (local)", "root", "online"], cp.stdout
    cp = run([*ZTM, "get", "ep", "-o", "json"], env=env, cwd=a.dir)
    assert [e["name"] for e in json.loads(cp.stdout)] == ["alice"]

    # The token comes from that HOME: another OS user's HOME has none, and is told so.
    stranger = a.dir / "stranger-home"
    stranger.mkdir()
    cp = run([*ZTM, "get", "ep"], env=base_env({"ZTM_AGENT": a.api_address}, home=stranger), check=False)
    line = one_line_error(cp)
    assert "token" in line.lower() and a.api_address in line, line


def test_a_data_directory_serves_one_hub_and_one_agent(make_mesh: Make, tmp_path: Path) -> None:
    hub, agents = make_mesh(("a",))
    a = agents["a"]
    a.join(MESH, "alice", hub.permit)

    other_permit = tmp_path / "other-root.json"
    argv = [*ZTM, "run", "hub", "--listen", f"127.0.0.1:{free_port()}", "--data", hub.data, "--permit", other_permit]
    cp = run(argv, env=hub.env, check=False, timeout=20)
    line = one_line_error(cp)
    assert "another hub is already running" in line and str(hub.data) in line, line
    assert not other_permit.exists()

    argv = [*ZTM, "run", "agent", "--listen", f"127.0.0.1:{free_port()}", "--data", a.data]
    cp = run(argv, env=a.env, check=False, timeout=20)
    line = one_line_error(cp)
    assert "another agent is already running" in line and str(a.data) in line, line

    # The first ones are unharmed.
    assert hub.proc.alive and a.proc.alive
    assert mesh_status(a)["status"] == "online"
    assert a.online_names() == {"alice"}
