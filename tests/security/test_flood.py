"""A member floods or exhausts the hub (issue 12, items 9 and 10), against a real hub and real agents on loopback.

`mallory`, an invited user who joined normally, uses its agent's certificate files directly (raw HTTP/2 frames, and
tests/reliability/hubclient.py) to:

* flood another user's endpoint with 5,000 CONNECTs or 5,000 relayed calls, sent at once, while that endpoint reads
  its event stream slowly (it returns no flow-control credit, as over a slow link): the hub must refuse mallory
  (503) rather than end the target's session, which is checked by the target's `online_since` staying the same;
* queue 256 KiB call params for an endpoint of its own that never reads its events: refused (400), and calls at the
  largest allowed params stop at the queue's byte budget (503) with the hub's RSS bounded;
* publish file entries of 64 Ki chunk hashes (8 MiB requests) until its per-user quota refuses them, with the hub's
  RSS bounded; unpublishing gives the quota back; and small entries until the per-user count refuses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hpack
import pytest
from bench.common import rss_kib

from reliability.conftest import figures  # noqa: F401 (the reliability suite's fixture: measured figures)
from reliability.hubclient import HubClient
from reliability.traffic import Record, time_until
from support import Agent, Hub, invite, split_hostport, start_hub_and_agents
from ztm import filespec, h2, pki
from ztm.agent.tls import MeshFiles
from ztm.h2 import fields
from ztm.h2 import frames as f
from ztm.hub import limits

pytestmark = pytest.mark.slow

MESH = "m"
FLOOD = 5000
REFUSED = -7
"""A stream refused by the hub's HTTP/2 layer (RST_STREAM REFUSED_STREAM: past SETTINGS_MAX_CONCURRENT_STREAMS)."""


@dataclass
class World:
    hub: Hub
    root: Agent
    mallory: Agent
    root_dir: Path
    mallory_dir: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("flood")
    hub, agents = start_hub_and_agents(tmp, ("root", "mallory"))
    root, mallory = agents["root"], agents["mallory"]
    try:
        root.join(MESH, "root", hub.permit)
        mallory.join(MESH, "mallory", invite(root, mallory, "mallory", tmp / "mallory.json"))
        yield World(hub, root, mallory, root.data / "meshes" / MESH, mallory.data / "meshes" / MESH)
    finally:
        for p in (mallory, root):
            p.proc.stop()
        hub.proc.stop()


def _endpoint(client: HubClient, ref: str) -> dict[str, Any]:
    status, ep = client.json("GET", f"/api/endpoints/{ref}")
    assert status == 200, (status, ep)
    assert isinstance(ep, dict)
    return ep


class PeakRss:
    """The hub's largest RSS (KiB) while the `with` block runs, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = self.peak = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_kib(self.pid))

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / 1024

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_kib(self.pid))


# ---------------------------------------------------------------------------------------------------- item 9


async def _raw_flood(
    w: World, requests: list[tuple[list[tuple[str, str]], bytes | None]], wait: float = 60.0
) -> dict[int, int]:
    """Send every request at once, on one TLS connection with mallory's endpoint certificate, as raw HTTP/2 frames
    written in one go (the way an attacker would, not paced by a client library; a None body leaves the stream
    open); returns {status: count}, REFUSED for a stream the hub refused with REFUSED_STREAM, -1 for one it reset
    otherwise or did not answer within `wait` seconds."""
    host, port = split_hostport(w.hub.address)
    reader, writer = await asyncio.open_connection(host, port, ssl=MeshFiles(w.mallory_dir).ep_context())
    out = [f.PREFACE, f.settings({f.INITIAL_WINDOW_SIZE: 1 << 20, f.MAX_FRAME_SIZE: 1 << 20}),
           f.window_update(0, 1 << 30)]  # fmt: skip
    for i, (headers, body) in enumerate(requests):
        sid = 2 * i + 1
        out.append(f.frame(f.HEADERS, f.END_HEADERS | (f.END_STREAM if body == b"" else 0), sid,
                           fields.encode(headers)))  # fmt: skip
        if body:
            out.append(f.frame(f.DATA, f.END_STREAM, sid, body))
    writer.write(b"".join(out))
    decoder = hpack.Decoder()
    statuses: dict[int, int] = {}
    buf = b""
    deadline = time.monotonic() + wait
    try:
        while len(statuses) < len(requests) and time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 20), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                length, kind, flags, sid = (
                    int.from_bytes(buf[:3], "big"),
                    buf[3],
                    buf[4],
                    int.from_bytes(buf[5:9], "big"),
                )
                payload, buf = buf[9 : 9 + length], buf[9 + length :]
                if kind == f.SETTINGS and not flags & f.ACK:
                    writer.write(f.settings_ack())
                elif kind == f.HEADERS and sid not in statuses:
                    headers = dict(decoder.decode(payload))
                    statuses[sid] = int(headers[":status"])
                elif kind == f.RST_STREAM and sid not in statuses:
                    statuses[sid] = REFUSED if int.from_bytes(payload[:4], "big") == f.REFUSED_STREAM else -1
                elif kind == f.PING and not flags & f.ACK:
                    writer.write(f.ping(payload, ack=True))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    codes = [*statuses.values(), *[-1] * (len(requests) - len(statuses))]
    return {s: codes.count(s) for s in sorted(set(codes))}


async def _heartbeats(conn: h2.Connection) -> None:
    """Heartbeat every second, as an agent does, so that the hub keeps a raw endpoint's session while it waits."""
    while True:
        await conn.request("POST", "/api/heartbeat", body=b"{}", headers=[("content-type", "application/json")])
        await asyncio.sleep(1)  # the protocol's heartbeat interval, not a wait for state


def _flood_requests(kind: str, target: str) -> list[tuple[list[tuple[str, str]], bytes | None]]:
    if kind == "streams":
        connect = [(":method", "CONNECT"), (":authority", target), ("ztm-app", "tunnel"), ("ztm-service", "tcp/x")]
        return [(connect, None)] * FLOOD
    post = [(":method", "POST"), (":scheme", "https"), (":path", f"/api/endpoints/{target}/call"),
            (":authority", "hub"), ("content-type", "application/json")]  # fmt: skip
    return [(post, json.dumps({"method": "ping", "timeout": 2}).encode())] * FLOOD


def _enrol(w: World, agent_dir: Path, name: str, tmp: Path) -> tuple[Path, str]:
    """Enrol one more endpoint of the user of `agent_dir` (with its user certificate, as an agent does) and give it
    its own certificate files; returns (mesh dir, endpoint id)."""
    key = pki.new_key()
    csr = pki.csr_to_pem(pki.make_csr(key, name="x"))
    ep_id = str(uuid.uuid4())
    with HubClient(w.hub.address, agent_dir, user_cert=True) as client:
        status, body = client.json("POST", "/api/enroll", {"ep_id": ep_id, "name": name, "csr": csr})
    assert status == 200, (status, body)
    mesh = tmp / name
    mesh.mkdir()
    for part in ("ca.pem", "user.crt", "user.key"):
        (mesh / part).write_bytes((agent_dir / part).read_bytes())
    (mesh / "ep.crt").write_text(body["certificate"])
    pki.write_private(mesh / "ep.key", pki.key_to_pem(key))
    return mesh, ep_id


@pytest.mark.parametrize("kind", ["streams", "calls"])
def test_a_flood_at_an_endpoint_refuses_the_caller_and_keeps_the_target_online(
    world: World,
    kind: str,
    tmp_path: Path,
    figures: Record,  # noqa: F811
) -> None:
    w = world
    victim_dir, victim_id = _enrol(w, w.root_dir, f"victim-{kind}", tmp_path)
    host, port = split_hostport(w.hub.address)

    async def attack() -> tuple[dict[str, Any], dict[str, Any], dict[int, int], float]:
        # root's endpoint on a slow link: it takes its events but returns flow-control credit for none of them.
        beats: asyncio.Future[None] | None = None
        victim = await h2.connect(host, port, MeshFiles(victim_dir).ep_context(), keepalive=None,
                                  settings=h2.H2Settings(stream_window=65535))  # fmt: skip
        spy = await h2.connect(host, port, MeshFiles(w.mallory_dir).ep_context(), keepalive=None)
        try:
            events = await victim.open_stream("GET", "/api/events")
            assert (await asyncio.wait_for(events.response(), 10))[0] == 200
            beats = asyncio.ensure_future(_heartbeats(victim))

            async def view() -> dict[str, Any]:
                status, _, body = await spy.request("GET", f"/api/endpoints/{victim_id}", timeout=30)
                assert status == 200, (status, body)
                ep: dict[str, Any] = json.loads(body)
                return ep

            before = await view()
            start = time.monotonic()
            counts = await _raw_flood(w, _flood_requests(kind, victim_id))
            seconds = time.monotonic() - start
            return before, await view(), counts, seconds
        finally:
            if beats is not None:
                beats.cancel()
            for conn in (victim, spy):
                conn.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conn.wait_closed(), 5)
            await asyncio.sleep(0)  # let the transports' close callbacks run

    before, after, counts, seconds = asyncio.run(attack())
    assert before["online"], before
    # The target was never knocked off: the same session (online since the same moment) before and after.
    assert after["online"] and after["online_since"] == before["online_since"], (
        f"the flood of {kind} ended the target's session: online since {before['online_since']} -> "
        f"{after['online_since']}, online {after['online']} ({counts})"
    )
    assert set(counts) <= {503, 504, REFUSED}, counts  # the victim answers nothing: refused or timed out
    assert counts.get(503, 0) > 0, f"the flooding caller was never told to back off: {counts}"
    w.hub.proc.assert_alive()
    figures(f"{FLOOD} {kind} from mallory to a slow endpoint", seconds, f"s; statuses {counts}; its session kept")


@pytest.mark.timeout(300)
def test_a_flood_of_label_changes_does_not_knock_a_slow_endpoint_off(world: World, tmp_path: Path) -> None:
    """Every label change is an `endpoint` event to every online endpoint; mallory changing its own labels 20,000
    times must not fill a slow endpoint's event queue (the hub keeps one pending `endpoint` event per endpoint)."""
    w = world
    victim_dir, victim_id = _enrol(w, w.root_dir, "victim-labels", tmp_path)
    host, port = split_hostport(w.hub.address)
    changes = 20_000

    async def attack() -> tuple[dict[str, Any], dict[str, Any], dict[int, int]]:
        victim = await h2.connect(host, port, MeshFiles(victim_dir).ep_context(), keepalive=None,
                                  settings=h2.H2Settings(stream_window=65535))  # fmt: skip
        mallory = await h2.connect(host, port, MeshFiles(w.mallory_dir).ep_context(), keepalive=None)
        beats: asyncio.Future[None] | None = None
        try:
            events = await victim.open_stream("GET", "/api/events")
            assert (await asyncio.wait_for(events.response(), 10))[0] == 200
            beats = asyncio.ensure_future(_heartbeats(victim))

            async def view() -> dict[str, Any]:
                status, _, body = await mallory.request("GET", f"/api/endpoints/{victim_id}", timeout=30)
                assert status == 200, (status, body)
                ep: dict[str, Any] = json.loads(body)
                return ep

            gate = asyncio.Semaphore(256)

            async def change(i: int) -> int:
                body = json.dumps({"add": ["x"]} if i % 2 else {"delete": ["x"]}).encode()
                async with gate:
                    status, _, _ = await mallory.request(
                        "POST", "/api/endpoints/mallory/labels", body=body,
                        headers=[("content-type", "application/json")], timeout=60,
                    )  # fmt: skip
                    return status

            before = await view()
            statuses = await asyncio.gather(*(change(i) for i in range(changes)))
            return before, await view(), {s: statuses.count(s) for s in sorted(set(statuses))}
        finally:
            if beats is not None:
                beats.cancel()
            for conn in (victim, mallory):
                conn.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conn.wait_closed(), 5)
            await asyncio.sleep(0)  # let the transports' close callbacks run

    before, after, counts = asyncio.run(attack())
    assert counts == {200: changes}, counts
    assert after["online"] and after["online_since"] == before["online_since"], (
        f"{changes} label changes ended the slow endpoint's session: online since {before['online_since']} -> "
        f"{after['online_since']}, online {after['online']}"
    )
    w.hub.proc.assert_alive()


def test_the_hub_takes_a_bounded_number_of_streams_at_once_per_connection(world: World) -> None:
    """Requests whose bodies never end stay open at the hub; past MAX_CONCURRENT_STREAMS (16,384) on one connection
    they are refused by the HTTP/2 layer instead of each holding a handler (the hub used to allow 100,000)."""
    w = world
    post = [(":method", "POST"), (":scheme", "https"), (":path", "/api/heartbeat"), (":authority", "hub"),
            ("content-type", "application/json")]  # fmt: skip
    extra = 20
    counts = asyncio.run(_raw_flood(w, [(post, None)] * (limits.MAX_CONCURRENT_STREAMS + extra), wait=10))
    assert counts.get(REFUSED) == extra, counts
    w.hub.proc.assert_alive()


# ---------------------------------------------------------------------------------------------------- item 10


@pytest.mark.timeout(300)
def test_call_params_are_capped_and_a_non_reading_endpoint_cannot_grow_the_hub(
    world: World,
    tmp_path: Path,
    figures: Record,  # noqa: F811
) -> None:
    w = world
    sink_dir, sink_id = _enrol(w, w.mallory_dir, "mallory-sink", tmp_path)
    with HubClient(w.hub.address, sink_dir) as sink, HubClient(w.hub.address, w.mallory_dir) as client:
        # The sink opens its event stream and never reads it: the hub can only queue what is sent to it.
        events = sink.run(sink.conn.open_stream("GET", "/api/events"))
        status, _ = sink.run(asyncio.wait_for(events.response(), 10))
        assert status == 200
        time_until(lambda: _endpoint(client, sink_id)["online"], 10, "the sink to be online")
        beats = asyncio.run_coroutine_threadsafe(_heartbeats(sink.conn), sink.loop)

        def calls(params_bytes: int, count: int) -> dict[int, int]:
            body = json.dumps({"method": "ping", "timeout": 5, "params": "x" * params_bytes}).encode()

            async def one() -> int:
                try:
                    status, _, _ = await client.conn.request(
                        "POST", f"/api/endpoints/{sink_id}/call", body=body,
                        headers=[("content-type", "application/json")], timeout=60,
                    )  # fmt: skip
                    return status
                except h2.H2Error:
                    return -1

            async def flood() -> list[int]:
                return await asyncio.gather(*(one() for _ in range(count)))

            statuses = client.run(flood(), 240)
            return {s: statuses.count(s) for s in sorted(set(statuses))}

        big = 256 * 1024 - 100  # just under the hub's request body limit
        with PeakRss(w.hub.proc.pid) as rss_big:
            big_counts = calls(big, 2000)
        figures("2,000 calls with 256 KiB params to a non-reading endpoint: hub RSS growth", rss_big.growth_mib,
                f"MiB ({big_counts})")  # fmt: skip
        allowed = limits.MAX_CALL_PARAMS - 100
        with PeakRss(w.hub.proc.pid) as rss_allowed:
            allowed_counts = calls(allowed, 2000)
        figures("2,000 calls with the largest params to a non-reading endpoint: hub RSS growth",
                rss_allowed.growth_mib, f"MiB ({allowed_counts})")  # fmt: skip
        status, answer = client.json("POST", f"/api/endpoints/{sink_id}/call",
                                     {"method": "ping", "timeout": 1, "params": "x" * big})  # fmt: skip
        assert status == 400 and "params" in answer["error"], (status, answer)
        assert len(answer["error"].splitlines()) == 1
        assert set(big_counts) == {400}, big_counts
        assert 503 in allowed_counts, f"calls to a non-reading endpoint were never refused: {allowed_counts}"
        assert set(allowed_counts) <= {503, 504}, allowed_counts
        growth = max(rss_big.growth_mib, rss_allowed.growth_mib)
        assert growth < 128, f"the hub grew by {growth:.0f} MiB"
        beats.cancel()
        events.reset()
    w.hub.proc.assert_alive()


def _entry(path: str, chunks: int) -> bytes:
    """A publish body of a file with `chunks` distinct chunk hashes (the largest request the hub takes: 8 MiB)."""
    seed = os.urandom(8).hex()
    hashes = [f"{seed}{i:048x}" for i in range(chunks)]
    size = chunks * filespec.CHUNK_SIZE
    return json.dumps({"path": path, "size": size, "time": 0, "hash": hashes[0] if hashes else "0" * 64,
                       "chunks": hashes}).encode()  # fmt: skip


def _db_bytes(hub: Hub) -> int:
    """The hub database's size on disk, with its write-ahead log."""
    return sum(p.stat().st_size for p in hub.data.glob("ztm-hub.db*"))


def test_service_announcements_are_held_to_64_apps_per_endpoint(world: World) -> None:
    w = world
    services = [f"s{i}/{'x' * 100}" for i in range(256)]  # the most per app: 256 services of up to 128 characters
    with HubClient(w.hub.address, w.mallory_dir) as client:
        answers = []
        for i in range(limits.MAX_APPS_PER_ENDPOINT + 1):  # on top of the apps mallory's agent announced itself
            answers.append(client.json("POST", "/api/services", {"app": f"junk-{i}", "services": services}))
            if answers[-1][0] != 204:
                break
        accepted = sum(1 for status, _ in answers if status == 204)
        status, answer = answers[-1]
        assert status == 400 and "64 apps" in answer["error"], (accepted, status, answer)
        assert limits.MAX_APPS_PER_ENDPOINT - 16 <= accepted <= limits.MAX_APPS_PER_ENDPOINT, accepted
        # Replacing or withdrawing an app already announced still works, and a withdrawal makes room.
        assert client.json("POST", "/api/services", {"app": "junk-0", "services": ["one"]})[0] == 204
        assert client.json("POST", "/api/services", {"app": "junk-0", "services": []})[0] == 204
        assert client.json("POST", "/api/services", {"app": "junk-more", "services": ["one"]})[0] == 204
        for name in [f"junk-{i}" for i in range(accepted)] + ["junk-more"]:
            assert client.json("POST", "/api/services", {"app": name, "services": []})[0] == 204
    w.hub.proc.assert_alive()


@pytest.mark.timeout(300)
def test_file_entries_are_held_to_a_per_user_quota(world: World, figures: Record) -> None:  # noqa: F811
    w = world
    per_file = filespec.MAX_CHUNKS
    fit = limits.MAX_FILE_CHUNKS_PER_USER // per_file
    tried = 40
    headers = [("content-type", "application/json")]
    with HubClient(w.hub.address, w.mallory_dir) as client:
        db0 = _db_bytes(w.hub)
        with PeakRss(w.hub.proc.pid) as rss:
            results = [
                client.request("POST", "/api/files/entry", _entry(f"/shared/mallory/big-{i}", per_file), headers)
                for i in range(tried)
            ]
        statuses = [s for s, _ in results]
        figures(f"{tried} file entries of {per_file} chunks from one user: hub RSS growth", rss.growth_mib,
                f"MiB ({statuses.count(200)} accepted, {statuses.count(403)} refused)")  # fmt: skip
        figures(f"{tried} file entries of {per_file} chunks from one user: hub database growth",
                (_db_bytes(w.hub) - db0) / (1 << 20), "MiB")  # fmt: skip
        assert rss.growth_mib < 128, f"the hub grew by {rss.growth_mib:.0f} MiB"
        assert statuses[:fit] == [200] * fit, statuses
        refused = results[fit]
        assert refused[0] == 403 and "quota" in refused[1]["error"], refused
        assert statuses[fit:] == [403] * (tried - fit), statuses
        assert len(refused[1]["error"].splitlines()) == 1
        # A refused publish changed nothing; unpublishing one entry gives its share back, and republishing a path
        # replaces its old share instead of adding to it.
        status, listed = client.json("GET", "/api/files?prefix=/shared/mallory/")
        assert status == 200 and len(listed) == fit, listed
        assert client.request("DELETE", "/api/files/entry?path=/shared/mallory/big-0")[0] == 204
        assert client.request("POST", "/api/files/entry", _entry("/shared/mallory/big-x", per_file), headers)[0] == 200
        for _ in range(2):
            status, answer = client.request("POST", "/api/files/entry", _entry("/shared/mallory/big-x", per_file),
                                            headers)  # fmt: skip
            assert status == 200, (status, answer)
        for i in range(1, fit):  # leave room for the next test
            assert client.request("DELETE", f"/api/files/entry?path=/shared/mallory/big-{i}")[0] == 204
    w.hub.proc.assert_alive()


@pytest.mark.timeout(300)
def test_small_file_entries_are_held_to_a_per_user_count(world: World) -> None:
    w = world
    quota = limits.MAX_FILES_PER_USER
    headers = [("content-type", "application/json")]
    with HubClient(w.hub.address, w.mallory_dir) as client:
        status, listed = client.json("GET", "/api/files?prefix=/shared/mallory/")
        assert status == 200
        have = len(listed)

        async def publish_all(paths: list[str]) -> list[int]:
            gate = asyncio.Semaphore(64)

            async def one(path: str) -> int:
                async with gate:
                    status, _, _ = await client.conn.request(
                        "POST", "/api/files/entry", body=_entry(path, 0), headers=headers, timeout=60
                    )
                    return status

            return await asyncio.gather(*(one(p) for p in paths))

        statuses = client.run(publish_all([f"/shared/mallory/small/{i}" for i in range(quota - have)]), 600)
        assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        status, answer = client.request("POST", "/api/files/entry", _entry("/shared/mallory/one-more", 0), headers)
        assert status == 403 and "quota" in answer["error"] and str(quota) in answer["error"], (status, answer)
        # Republishing an existing path is not a new entry.
        status, answer = client.request("POST", "/api/files/entry", _entry("/shared/mallory/small/0", 0), headers)
        assert status == 200, (status, answer)
    w.hub.proc.assert_alive()
