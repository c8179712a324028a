"""A member against the hub's `endpoint` fan-out (PROTOCOL.md section 5, "Interest"), with real processes.

`mallory` (an invited user who joined normally) uses its agent's certificate files directly:

* it changes its labels 500 times: before, every one was an `endpoint` event queued for every online session (a
  victim's stream, the hub's CPU and the victims' loops paid for it); now only sessions that keep the whole list or
  watch mallory get them (coalesced, as before), so a victim that never dealt with mallory gets none;
* it asks for every event (`ztm-events: all`, `POST /api/events/interest`): it gets what any agent of an earlier
  release gets, once per change, and cannot widen or read another session's interest;
* it looks up 100,000 endpoint ids (300 that exist, the rest not): the hub watches at most `WATCH_MAX` for its
  session (least recently used first out, each told with an `unwatch` event) and its memory stays bounded.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bench.common import rss_kib

from eventtap import EventWatch
from reliability.hubclient import HubClient
from support import Agent, Hub, free_port, invite, start_hub_and_agents, wait_until
from ztm import pki
from ztm.hub.interest import WATCH_MAX

pytestmark = pytest.mark.slow

MESH = "m"
WATCHED = [("ztm-events", "watched")]
EXTRA_ENDPOINTS = 300


@dataclass
class World:
    hub: Hub
    admin: str
    root: Agent
    mallory: Agent
    victim: Agent
    tmp: Path

    def dir(self, agent: Agent) -> Path:
        return agent.data / "meshes" / MESH


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("fanout")
    admin = f"127.0.0.1:{free_port()}"
    hub, agents = start_hub_and_agents(tmp, ("root", "mallory", "victim"), hub_extra=["--admin", admin])
    root, mallory, victim = agents["root"], agents["mallory"], agents["victim"]
    try:
        root.join(MESH, "root-ep", hub.permit)
        mallory.join(MESH, "mallory", invite(root, mallory, "mallory", tmp / "mallory.json"))
        victim.join(MESH, "victim", invite(root, victim, "victim", tmp / "victim.json"))
        mallory.proc.stop()  # their certificates open event streams from the test instead
        victim.proc.stop()
        yield World(hub, admin, root, mallory, victim, tmp)
    finally:
        for agent in (victim, mallory, root):
            agent.proc.stop()
        hub.proc.stop()


@pytest.fixture
def as_root(world: World) -> Iterator[HubClient]:
    """A client on root's endpoint certificate (its agent stays online)."""
    with HubClient(world.hub.address, world.dir(world.root)) as client:
        yield client


def metrics(admin: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {k: float(v) for k, _, v in (line.partition(" ") for line in text.splitlines() if line[:1] != "#")}


def ok(client: HubClient, method: str, path: str, body: Any = None) -> Any:
    status, got = client.json(method, path, body)
    assert status == 200, f"{method} {path}: {status} {got}"
    return got


def own_mark(watch: EventWatch, ep_id: str, label: str) -> None:
    """The watch's own label change, waited for: everything queued for the session before it has arrived."""
    ok(watch.client, "POST", f"/api/endpoints/{ep_id}/labels", {"add": [label]})
    wait_until(lambda: any(label in v["labels"] for v in watch.about(ep_id)), 10, f"own label {label}")


def test_a_members_label_churn_reaches_no_session_that_does_not_watch_it(world: World) -> None:
    w = world
    victim = EventWatch(w.hub, w.dir(w.victim), WATCHED)
    mallory = HubClient(w.hub.address, w.dir(w.mallory))
    try:
        victim_id = ok(victim.client, "GET", "/api/endpoints/victim")["id"]
        mallory_id = ok(mallory, "GET", "/api/endpoints/mallory")["id"]
        wait_until(lambda: victim.of("hello"), 10, "the victim's hello")
        before = metrics(w.admin).get("ztm_hub_endpoint_events_total", 0.0)

        async def churn() -> None:
            for i in range(500):
                body = f'{{"add": ["churn-{i}"], "delete": ["churn-{i - 1}"]}}'.encode()
                status, _h, raw = await mallory.conn.request(
                    "POST", f"/api/endpoints/{mallory_id}/labels", body=body,
                    headers=[("content-type", "application/json")],
                )  # fmt: skip
                assert status == 200, raw

        mallory.run(churn(), 120)
        own_mark(victim, victim_id, "after-churn")
        got = victim.about(mallory_id)
        assert got == [], f"mallory's label churn reached a session that never dealt with it: {len(got)} events"
        sent = metrics(w.admin)["ztm_hub_endpoint_events_total"] - before
        # the only session that wants mallory's events is root's agent's (it keeps nothing: watched too) ... and
        # the victim's own mark: at most one per change to each session that keeps the whole list (none here)
        assert sent <= 2, f"the hub queued {sent:.0f} endpoint events for 500 changes nobody watches"
    finally:
        victim.close()
        mallory.close()


def test_a_member_asking_for_everything_gets_what_an_old_agent_gets_and_nothing_of_others(
    world: World, as_root: HubClient
) -> None:
    w = world
    victim = EventWatch(w.hub, w.dir(w.victim), WATCHED)
    greedy = EventWatch(w.hub, w.dir(w.mallory), [("ztm-events", "all")])
    try:
        victim_id = ok(victim.client, "GET", "/api/endpoints/victim")["id"]
        mallory_id = ok(greedy.client, "GET", "/api/endpoints/mallory")["id"]
        root_id = ok(greedy.client, "GET", "/api/endpoints/root-ep")["id"]
        wait_until(lambda: victim.of("hello") and greedy.of("hello"), 10, "both hellos")
        view_before = ok(greedy.client, "GET", f"/api/endpoints/{victim_id}")

        # the victim watches root; nothing of that shows in what mallory can read about the victim
        ok(victim.client, "GET", f"/api/endpoints/{root_id}")
        view_after = ok(greedy.client, "GET", f"/api/endpoints/{victim_id}")
        assert set(view_after) == set(view_before), (view_before, view_after)  # its times move with its beats
        assert not [k for k in view_after if "watch" in k or "interest" in k], view_after

        # mallory widens (its own session only) and names the victim as the caller: refused
        assert ok(greedy.client, "POST", "/api/events/interest", {"events": "all"}) == {"events": "all"}
        status, body = greedy.client.request(
            "POST", "/api/events/interest", b'{"events": "all"}',
            [("content-type", "application/json"), ("ztm-caller", f'{{"ep": "{victim_id}"}}')],
        )  # fmt: skip
        assert status == 403, (status, body)

        # one change of an endpoint neither watches: mallory gets it once, the victim not at all
        for i in range(20):
            ok(as_root, "POST", f"/api/endpoints/{root_id}/labels", {"add": [f"r{i}"]})
        ok(greedy.client, "POST", f"/api/endpoints/{mallory_id}/labels", {"add": ["greedy-mark"]})
        wait_until(lambda: any("greedy-mark" in v["labels"] for v in greedy.about(mallory_id)), 10, "greedy mark")
        assert 1 <= len(greedy.about(root_id)) <= 20, len(greedy.about(root_id))  # coalesced: never more than today
        own_mark(victim, victim_id, "victim-mark")
        # the victim watches root (it looked it up), so it hears of root: its interest is its own, not mallory's
        assert victim.about(root_id), "the victim's own watch was lost"
        assert victim.about(mallory_id) == [], victim.about(mallory_id)
    finally:
        victim.close()
        greedy.close()


def _enrol_many(w: World, count: int) -> list[str]:
    """`count` more endpoints of root's user (enrolled with its user certificate, as an agent does)."""
    ids: list[str] = []
    with HubClient(w.hub.address, w.dir(w.root), user_cert=True) as client:
        for i in range(count):
            key = pki.new_key()
            ep_id = str(uuid.uuid4())
            csr = pki.csr_to_pem(pki.make_csr(key, name=ep_id))
            ok(client, "POST", "/api/enroll", {"ep_id": ep_id, "name": f"spare-{i}", "csr": csr})
            ids.append(ep_id)
    return ids


@pytest.mark.timeout(600)
def test_the_watch_set_is_bounded_against_100000_lookups(world: World) -> None:
    w = world
    spares = _enrol_many(w, EXTRA_ENDPOINTS)
    watch = EventWatch(w.hub, w.dir(w.mallory), WATCHED)
    try:
        mallory_id = ok(watch.client, "GET", "/api/endpoints/mallory")["id"]
        wait_until(lambda: watch.of("hello"), 10, "the hello")
        rss_before = rss_kib(w.hub.proc.pid)
        asked = [spares[i // 10 % len(spares)] if i % 10 == 0 else str(uuid.uuid4()) for i in range(100_000)]

        async def lookups() -> dict[int, int]:
            counts: dict[int, int] = {}
            for start in range(0, len(asked), 500):
                answers = await asyncio.gather(
                    *(watch.client.conn.request("GET", f"/api/endpoints/{ep}") for ep in asked[start : start + 500])
                )
                for status, _h, _raw in answers:
                    counts[status] = counts.get(status, 0) + 1
            return counts

        counts = watch.client.run(lookups(), 540)
        assert counts == {200: 10_000, 404: 90_000}, counts
        watched = metrics(w.admin)["ztm_hub_watched_endpoints"]
        assert watched <= WATCH_MAX + 2, f"the hub holds {watched:.0f} watched ids for mallory's session"
        growth = (rss_kib(w.hub.proc.pid) - rss_before) / 1024
        assert growth < 64, f"the hub grew by {growth:.1f} MiB for 100,000 lookups"
        # forgotten ids were told, so the agent drops its stale copies
        own_mark(watch, mallory_id, "bounded")
        assert len(watch.of("unwatch")) >= EXTRA_ENDPOINTS - WATCH_MAX, len(watch.of("unwatch"))
        print(f"\n100,000 lookups: {counts}; watched ids {watched:.0f}; hub RSS +{growth:.1f} MiB")
    finally:
        watch.close()
