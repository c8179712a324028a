"""Installable apps end to end, through the `ztm` command line: real hub and agent processes on 127.0.0.1.

Covered: the example app `examples/chat` installed as a directory app, published by one endpoint (deterministic
package, its SHA-256 announced), downloaded by two others (one with `--from`), started on both, and the two
instances talking to each other over the mesh with the sender's identity as the hub asserts it; a package altered
on the publisher's disk refused by the downloader with nothing installed; a pinned `--sha256` that matches nothing; a
new version replacing the announcement and the old package;
start/stop of built-in and installed apps kept across agent restarts; the app's own command line (`ztm chat ...`)
and an unknown command still being one; `ztm uninstall app` of a downloaded app (gone from the list, the disk and
the command line, also after a restart, its start state forgotten) and of a published one (its offer withdrawn),
built-ins and unknown names refused with one line; `ztm unpublish app` (only by the publisher; installed copies keep
working).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support import (
    Agent,
    Hub,
    Proc,
    invite,
    join_all,
    one_line_error,
    restart_agent,
    start_agent,
    start_hub_and_agents,
    wait_until,
)
from ztm.apps.package import pack

MESH = "m"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chat"


@dataclass
class World:
    hub: Hub
    one: Agent
    """root's endpoint `one`: the publisher."""
    two: Agent
    """root's endpoint `two`."""
    three: Agent
    """bob's endpoint `three`."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("apps")
    procs: list[Proc] = []
    try:
        hub, agents = start_hub_and_agents(tmp, ("one", "two", "three"))
        procs += [hub.proc, *(a.proc for a in agents.values())]
        join_all(MESH, [(agents["one"], "one"), (agents["two"], "two")], hub.permit)
        permit = invite(agents["one"], agents["three"], "bob", tmp / "bob.json")
        agents["three"].join(MESH, "three", permit)
        yield World(hub, agents["one"], agents["two"], agents["three"])
    finally:
        for proc in reversed(procs):
            proc.stop()


def ok(agent: Agent, *args: str, timeout: float = 60.0) -> str:
    cp = agent.cli(*args, check=False, timeout=timeout)
    assert cp.returncode == 0, f"ztm {' '.join(args)}: {cp.stderr}"
    assert "Traceback" not in cp.stdout + cp.stderr
    return cp.stdout


def fails(agent: Agent, *args: str, code: int = 1) -> str:
    cp = agent.cli(*args, check=False, timeout=60.0)
    assert cp.returncode == code, f"ztm {' '.join(args)} should fail with {code}: {cp.stdout} {cp.stderr}"
    return one_line_error(cp)


def apps(agent: Agent) -> dict[str, dict[str, Any]]:
    listed = agent.cli_json("get", "app")
    return {a["name"]: a for a in listed}


def install_example(agent: Agent) -> None:
    shutil.copytree(EXAMPLE, agent.data / "apps" / "chat", ignore=shutil.ignore_patterns("__pycache__"))


def leftovers(agent: Agent) -> list[str]:
    found = agent.data / "apps"
    return sorted(p.name for p in found.iterdir()) if found.exists() else []


def published_sha(world: World) -> str:
    return str(apps(world.one)["chat"]["published"])


# -------------------------------------------------------------------------------------------------------- tests


def test_builtins_listed_and_example_installed_stopped(world: World) -> None:
    before = apps(world.one)
    assert {"tunnel", "apps"} <= set(before)
    assert before["tunnel"]["state"] == "running" and before["tunnel"]["source"] == "builtin"
    install_example(world.one)
    after = apps(world.one)["chat"]
    assert (after["state"], after["source"], after["version"], after["provider"], after["mesh"]) == (
        "stopped",
        "directory",
        "1.0.0",
        "ztm examples",
        MESH,
    )
    table = ok(world.one, "get", "app")
    assert any(line.split()[:2] == ["chat", "ztm"] and "stopped" in line for line in table.splitlines()), table


def test_publish_download_on_two_endpoints_and_the_instances_talk(world: World) -> None:
    if not (world.one.data / "apps" / "chat").exists():
        install_example(world.one)
    out = ok(world.one, "publish", "app", "chat")
    expected = pack(EXAMPLE)
    assert pack(EXAMPLE) == expected, "packaging is not deterministic"
    sha = hashlib.sha256(expected).hexdigest()
    assert sha in out and published_sha(world) == sha
    package = world.one.data / "app-packages" / f"{sha}.tar.gz"
    assert package.read_bytes() == expected

    def offered() -> list[dict[str, Any]] | None:
        rows = [r for r in world.two.cli_json("get", "app", "--available") if r["name"] == "chat"]
        return rows or None

    rows = wait_until(offered, 20, "chat to be announced in the mesh")
    assert rows[0]["sha256"] == sha and [s["name"] for s in rows[0]["sources"]] == ["one"]

    got = json.loads(ok(world.two, "download", "app", "chat", "-o", "json"))
    assert (got["name"], got["sha256"], got["from"]) == ("chat", sha, "one")
    ok(world.three, "download", "app", "chat", "--from", "one", "--sha256", sha)
    for agent in (world.two, world.three):
        installed = agent.data / "apps" / "chat"
        assert (installed / "app.py").read_bytes() == (EXAMPLE / "app.py").read_bytes()
        assert json.loads((installed / ".ztm-origin.json").read_text())["sha256"] == sha
        assert leftovers(agent) == ["chat"]
        view = apps(agent)["chat"]
        assert (view["state"], view["origin"]["from"]) == ("stopped", "one")

    assert "not running" in fails(world.two, "chat", "peers")
    assert "running" in ok(world.two, "start", "app", "chat")
    assert "running" in ok(world.three, "start", "app", "chat")
    assert apps(world.two)["chat"]["running"] is True

    wait_until(lambda: "three" in ok(world.two, "chat", "peers"), 20, "two to see three's chat")
    assert "delivered to three" in ok(world.two, "chat", "send", "three", "hello", "from", "two")
    assert "delivered to two" in ok(world.three, "chat", "send", "two", "hi two, three here")
    inbox3 = ok(world.three, "chat", "inbox")
    assert "two (root): hello from two" in inbox3, inbox3
    inbox2 = ok(world.two, "chat", "inbox")
    assert "three (bob): hi two, three here" in inbox2, inbox2  # bob: from three's certificate, via the hub

    # the app's configuration: a block list, checked on the receiving side
    ok(world.three, "chat", "block", "two")
    assert "does not accept your messages" in fails(world.two, "chat", "send", "three", "still there?")
    ok(world.three, "chat", "unblock", "two")
    ok(world.two, "chat", "send", "three", "again")
    # mesh files through the app API (AppContext.write_file, via the files app)
    assert "saved 2 messages to /users/bob/inbox.txt" in ok(world.three, "chat", "save", "/users/bob/inbox.txt")
    saved = ok(world.three, "download", "file", "/users/bob/inbox.txt", "-o", "-")
    assert saved == "two: hello from two\ntwo: again\n", saved
    # the publisher does not run chat: a stream to it is refused
    assert "not running there" in fails(world.two, "chat", "send", "one", "hello one")
    assert "unknown or incomplete command" in fails(world.two, "chat", "frobnicate")
    # a name that is neither a command nor an installed app is still an unknown command
    assert fails(world.two, "chatter", "x", code=2) == (
        "ztm: unknown command 'chatter'; run 'ztm help' to see the commands"
    )
    # an installed, running app cannot be replaced under its feet
    assert "stop it first" in fails(world.two, "download", "app", "chat")


def test_tampered_package_is_refused_and_nothing_is_installed(world: World, tmp_path: Path) -> None:
    app_dir = world.one.data / "apps" / "chat"
    if not app_dir.exists():
        install_example(world.one)
    ok(world.one, "publish", "app", "chat")
    sha = published_sha(world)
    package = world.one.data / "app-packages" / f"{sha}.tar.gz"
    original = package.read_bytes()
    fresh = start_agent(tmp_path, "fresh")
    try:
        fresh.join(MESH, "fresh", world.hub.permit)
        wrong = "0" * 64
        assert f"not published with SHA-256 {wrong}" in fails(fresh, "download", "app", "chat", "--sha256", wrong)
        # an attacker (or a disk) alters the package the publisher serves: another app with the same name
        evil = tmp_path / "evil"
        shutil.copytree(EXAMPLE, evil, ignore=shutil.ignore_patterns("__pycache__"))
        (evil / "app.py").write_text((EXAMPLE / "app.py").read_text() + "\nOWNED = True\n")
        package.write_bytes(pack(evil))
        error = fails(fresh, "download", "app", "chat", "--from", "one")
        assert "SHA-256" in error and sha in error and "nothing was installed" in error, error
        assert leftovers(fresh) == []
        assert "chat" not in apps(fresh)
        # a truncated package too
        package.write_bytes(original[: len(original) // 2])
        assert "SHA-256" in fails(fresh, "download", "app", "chat")
        assert leftovers(fresh) == []
        package.write_bytes(original)
        ok(fresh, "download", "app", "chat")
        assert leftovers(fresh) == ["chat"]
    finally:
        package.write_bytes(original)
        fresh.proc.stop()


def test_a_new_version_replaces_the_announcement_and_the_old_package(world: World) -> None:
    app_dir = world.one.data / "apps" / "chat"
    if not app_dir.exists():
        install_example(world.one)
    ok(world.one, "publish", "app", "chat")
    old = published_sha(world)
    manifest = json.loads((app_dir / "ztm-app.json").read_text())
    (app_dir / "ztm-app.json").write_text(json.dumps({**manifest, "version": "1.0.1"}))
    entry = json.loads(ok(world.one, "publish", "app", "chat", "-o", "json"))
    assert entry["version"] == "1.0.1" and entry["sha256"] != old
    assert not (world.one.data / "app-packages" / f"{old}.tar.gz").exists()
    assert (world.one.data / "app-packages" / f"{entry['sha256']}.tar.gz").exists()

    def announced() -> list[tuple[str, str]] | None:
        rows = [(r["version"], r["sha256"]) for r in world.two.cli_json("get", "app", "--available")]
        return rows if rows == [("1.0.1", entry["sha256"])] else None

    wait_until(announced, 20, "only the new version to be announced")
    assert "1.0.1" in ok(world.two, "get", "app", "--available")


def test_start_stop_state_survives_restarts(hub: Hub, make_agent: Any) -> None:
    agent = make_agent("solo")
    agent.join(MESH, "solo", hub.permit)
    install_example(agent)
    assert apps(agent)["tunnel"]["state"] == "running"
    assert "stopped" in ok(agent, "stop", "app", "tunnel")
    assert "not running" in fails(agent, "tunnel", "get", "inbound")
    ok(agent, "start", "app", "chat")
    assert "cannot be stopped" in fails(agent, "stop", "app", "apps")
    assert "no app named 'nope'" in fails(agent, "start", "app", "nope")
    assert "invalid app name" in fails(agent, "start", "app", "Bad_Name")
    ok(agent, "stop", "app", "files")
    assert "the files app is not running in mesh m" in fails(agent, "chat", "save", "/users/root/x.txt")
    ok(agent, "start", "app", "files")

    restart_agent(agent)
    wait_until(lambda: agent.meshes()[0]["status"] == "online", 30, "the agent to be back online")
    state = apps(agent)
    assert (state["tunnel"]["state"], state["chat"]["state"], state["apps"]["state"]) == (
        "stopped",
        "running",
        "running",
    )
    assert "no messages" in ok(agent, "chat", "inbox")
    ok(agent, "start", "app", "tunnel")
    ok(agent, "stop", "app", "chat")
    restart_agent(agent)
    state = apps(agent)
    assert (state["tunnel"]["state"], state["chat"]["state"]) == ("running", "stopped")
    ok(agent, "tunnel", "get", "inbound")


# ------------------------------------------------------------------------------------ uninstall and unpublish


def offered_by(agent: Agent, name: str) -> list[str]:
    """The endpoints `ztm get app --available` on `agent` shows offering app `name`."""
    rows = [r for r in agent.cli_json("get", "app", "--available") if r["name"] == name]
    return sorted(s["name"] for r in rows for s in r["sources"])


def ensure_published(world: World) -> str:
    if not (world.one.data / "apps" / "chat").exists():
        install_example(world.one)
    ok(world.one, "publish", "app", "chat")
    wait_until(lambda: offered_by(world.two, "chat") == ["one"], 20, "one's chat to be announced")
    return published_sha(world)


def ensure_running(agent: Agent) -> None:
    if "chat" not in apps(agent):
        ok(agent, "download", "app", "chat", "--from", "one")
    ok(agent, "start", "app", "chat")


def test_uninstall_removes_a_downloaded_app_for_good(world: World, tmp_path: Path) -> None:
    sha = ensure_published(world)
    fresh = start_agent(tmp_path, "fresh")
    fresh.join(MESH, "fresh", world.hub.permit)
    ok(fresh, "download", "app", "chat")
    ok(fresh, "start", "app", "chat")
    assert "no messages" in ok(fresh, "chat", "inbox")

    # built-ins and unknown names: one line, nothing changes
    before = {name: view["state"] for name, view in apps(fresh).items()}
    assert fails(fresh, "uninstall", "app", "tunnel") == "ztm: tunnel is built in: stop it with 'ztm stop app tunnel'"
    assert fails(fresh, "apps", "uninstall", "apps") == "ztm: apps is built in: it cannot be stopped"
    assert fails(fresh, "uninstall", "app", "nope") == "ztm: no app named 'nope' is installed here; see `ztm get app`"
    assert {name: view["state"] for name, view in apps(fresh).items()} == before
    assert leftovers(fresh) == ["chat"]

    out = ok(fresh, "apps", "uninstall", "chat")
    assert out.startswith("uninstalled app chat ") and "stopped it in mesh m" in out, out
    assert "published" not in out, out  # fresh does not publish it
    assert "chat" not in apps(fresh)
    assert not (fresh.data / "apps" / "chat").exists() and leftovers(fresh) == []
    assert fails(fresh, "chat", "inbox", code=2) == "ztm: unknown command 'chat'; run 'ztm help' to see the commands"
    assert "no app named 'chat'" in fails(fresh, "uninstall", "app", "chat")
    assert published_sha(world) == sha, "uninstalling a downloaded copy touched the publisher"

    # what an uninstall interrupted between its rename and its deletion leaves is swept at the next start
    (fresh.data / "apps" / ".removed-ghost-0123abcd" / "pkg").mkdir(parents=True)
    restart_agent(fresh)
    wait_until(lambda: fresh.meshes()[0]["status"] == "online", 30, "the agent to be back online")
    assert "chat" not in apps(fresh) and leftovers(fresh) == []
    # its start state was forgotten: installed again, it starts stopped
    ok(fresh, "download", "app", "chat")
    assert apps(fresh)["chat"]["state"] == "stopped"


def test_unpublish_withdraws_the_offer_and_installed_copies_keep_working(world: World) -> None:
    sha = ensure_published(world)
    for agent in (world.two, world.three):
        ensure_running(agent)
    error = fails(world.three, "unpublish", "app", "chat")
    assert error == (
        "ztm: app chat is not published by this endpoint in mesh m: it is published by one, and only a publisher "
        "can withdraw its offer"
    )
    out = ok(world.one, "apps", "unpublish", "chat")
    assert out.startswith("withdrew app chat ") and "endpoints that installed it keep their copy" in out, out
    wait_until(lambda: offered_by(world.two, "chat") == [], 20, "the offer to be withdrawn")
    assert "chat" not in [r["name"] for r in world.three.cli_json("get", "app", "--available")]
    assert apps(world.one)["chat"]["published"] is None
    assert not (world.one.data / "app-packages" / f"{sha}.tar.gz").exists()
    assert (world.one.data / "apps" / "chat").is_dir(), "unpublish uninstalled the app"
    # the installed copies keep working
    assert "delivered to two" in ok(world.three, "chat", "send", "two", "after the unpublish")
    assert "three (bob): after the unpublish" in ok(world.two, "chat", "inbox")
    assert fails(world.one, "unpublish", "app", "chat") == (
        "ztm: app chat is not published by this endpoint in mesh m; see `ztm get app --available`"
    )
    assert "invalid app name" in fails(world.one, "unpublish", "app", "Chat", code=2)


def test_uninstalling_a_published_app_withdraws_it(world: World) -> None:
    sha = ensure_published(world)
    ensure_running(world.three)
    out = ok(world.one, "uninstall", "app", "chat")
    assert "this endpoint published it: withdrew it from mesh m" in out, out
    wait_until(lambda: offered_by(world.two, "chat") == [], 20, "the offer to be withdrawn")
    assert not (world.one.data / "app-packages" / f"{sha}.tar.gz").exists()
    assert leftovers(world.one) == [] and "chat" not in apps(world.one)
    assert "not published" in fails(world.one, "unpublish", "app", "chat")
    ok(world.three, "chat", "inbox")  # others' copies keep working
    assert apps(world.three)["chat"]["state"] == "running"


def test_uninstall_refuses_a_python_package_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: an entry point of the group `ztm.apps` is pip's to remove; its shadowed namesake directory stays."""
    import asyncio
    from types import SimpleNamespace

    from ztm.agent.applib import AppLibrary
    from ztm.agent.store import AgentStore
    from ztm.apps import loader
    from ztm.errors import Conflict

    meta = {"Author": "someone", "Author-email": None, "Summary": "greets"}
    dist = SimpleNamespace(name="hello-app", version="2.0", metadata=meta)
    entry = SimpleNamespace(name="hello", value="hello_app.app:HelloApp", dist=dist)
    monkeypatch.setattr(loader, "_entry_points", lambda: [entry])
    shutil.copytree(EXAMPLE, tmp_path / "apps" / "hello", ignore=shutil.ignore_patterns("__pycache__"))
    store = AgentStore(tmp_path / "agent.db")
    try:
        library = AppLibrary(tmp_path, store)
        assert library.info("hello").source == "package"
        with pytest.raises(Conflict) as refused:
            asyncio.run(library.uninstall("hello", []))
        assert "pip uninstall hello-app" in refused.value.message and "\n" not in refused.value.message
        assert (tmp_path / "apps" / "hello" / "app.py").exists()
    finally:
        store.close()
