"""The mesh file space end to end: real hub and agent processes on 127.0.0.1 with real TLS, files published and
downloaded through the `ztm` command line (and the agents' local API where a test must watch a transfer as it runs).

Covered: publish on one endpoint and download on two others (byte-exact, several 1 MiB chunks, the second download
using both earlier holders), a source killed mid-download (the transfer finishes from the other), resume after the
downloading agent is killed (verified chunks are reused), a damaged chunk on one source (refused there, fetched
from another; a clear failure when no intact source is left), a hostile source sending wrong bytes under a valid
certificate (every such chunk rejected by the downloader), and ACLs: the hub hides what a user may not read, and
the serving endpoint itself refuses chunk requests that a hostile client crafts with a valid certificate; the
index surviving a hub restart; partial holders (endpoints still downloading a file) serving the chunks they have
to a third endpoint; and an agent restarted mid-download resuming by itself, a cancelled download staying
cancelled, and an unfinished download of a file published again being abandoned. Direct channels: chunks from a
source started with `--direct` come over them (byte-exact, counted, the hub relaying nothing), a source announcing a
dead direct address is fetched through the relay, and the serving endpoint's ACL check holds on the direct path for
a hostile client with a valid certificate. Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from support import ZTM, Agent, Hub, free_port, invite, join_all, one_line_error, restart_agent, restart_hub, wait_until

MESH = "m"
MiB = 1 << 20
Make = Callable[..., Any]


def mesh(make_mesh: Make, *names: str) -> tuple[Hub, list[Agent]]:
    hub, started = make_mesh(names)
    agents = [started[name] for name in names]
    join_all(MESH, [(agent, agent.name) for agent in agents], hub.permit)
    return hub, agents


def publish(agent: Agent, path: str, data: bytes, tmp: Path, *extra: str) -> dict[str, Any]:
    local = tmp / f"upload-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
    local.write_bytes(data)
    view = agent.cli_json("publish", "file", path, "-i", local, *extra)
    assert view["path"] == path and view["size"] == len(data), view
    assert view["hash"] == hashlib.sha256(data).hexdigest(), view
    return dict(view)


def download_json(agent: Agent, path: str, out: Path | str) -> dict[str, Any]:
    """`ztm download file PATH -o OUT --output json` (here `-o` names the file)."""
    cp = agent.cli("download", "file", path, "-o", out, "--output", "json")
    return dict(json.loads(cp.stdout))


def describe(agent: Agent, path: str) -> dict[str, Any]:
    return dict(agent.cli_json("describe", "file", path))


def source_names(agent: Agent, path: str) -> set[str]:
    return {s["name"] for s in describe(agent, path)["sources"]}


def start_download(agent: Agent, path: str, rate: int | None = None, output: Path | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"path": path}
    if rate is not None:
        body["rate"] = rate
    if output is not None:
        body["output"] = str(output)
    status, job = agent.api("POST", f"/api/meshes/{MESH}/apps/files/downloads", body)
    assert status == 202, (status, job)
    return dict(job)


def job_of(agent: Agent, path: str) -> dict[str, Any]:
    status, jobs = agent.api("GET", f"/api/meshes/{MESH}/apps/files/downloads?" + urlencode({"path": path}))
    assert status == 200 and jobs, (status, jobs)
    return dict(jobs[-1])


def finished(agent: Agent, path: str) -> dict[str, Any] | None:
    agent.proc.assert_alive()
    job = job_of(agent, path)
    return job if job["state"] != "running" else None


def chunk_files(agent: Agent) -> list[Path]:
    root = agent.data / "meshes" / MESH / "files" / "chunks"
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


# -------------------------------------------------------------------------------------------------------- tests


def test_publish_on_one_download_on_two_others(make_mesh: Make, tmp_path: Path) -> None:
    _hub, (a, b, c) = mesh(make_mesh, "a", "b", "c")
    data = os.urandom(3 * MiB + 123_457)  # 4 chunks, the last one short
    path = "/shared/root/data/report.bin"
    view = publish(a, path, data, tmp_path)
    assert view["chunks"] == 4 and view["local"] == "complete" and view["publisher"] == "root"

    listed = b.cli_json("get", "file")
    assert [(f["path"], f["size"], f["sources"], f["local"]) for f in listed] == [(path, len(data), 1, "none")]
    assert "report.bin" in b.cli("get", "file", "/shared/root/").stdout
    assert "no files under /users/" in b.cli("get", "file", "/users/").stdout

    out_b = tmp_path / "b.bin"
    cp = b.cli("download", "file", path, "-o", out_b)
    assert out_b.read_bytes() == data
    assert "4 fetched (a: 4)" in cp.stdout, cp.stdout
    assert source_names(c, path) == {"a", "b"}

    out_c = tmp_path / "c.bin"
    job = download_json(c, path, out_c)
    assert out_c.read_bytes() == data
    assert job["state"] == "done" and job["fetched"] == 4 and sum(job["by_source"].values()) == 4
    assert set(job["by_source"]) <= {"a", "b"}, job

    info = describe(a, path)
    assert info["hash"] == hashlib.sha256(data).hexdigest() and info["size"] == len(data)
    assert {(s["name"], s["online"]) for s in info["sources"]} == {("a", True), ("b", True), ("c", True)}
    text = a.cli("describe", "file", path).stdout
    for word in ("size:", "hash:", info["hash"], "sources:", "a (online)", "b (online)", "c (online)"):
        assert word in text, text

    # Downloading again reuses what is on disk.
    again = download_json(c, path, tmp_path / "again.bin")
    assert again["reused"] == 4 and again["fetched"] == 0
    assert (tmp_path / "again.bin").read_bytes() == data

    # Erase: c stops being a source, the mesh keeps the file. Unpublish: gone for everyone.
    c.cli("erase", "file", path)
    assert source_names(a, path) == {"a", "b"}
    assert describe(c, path)["local"] == "none"
    line = one_line_error(c.cli("erase", "file", path, check=False))
    assert "holds no copy" in line, line
    a.cli("unpublish", "file", path)
    assert a.cli_json("get", "file") == []
    line = one_line_error(b.cli("download", "file", path, "-o", tmp_path / "gone.bin", check=False))
    assert f"no file {path}" in line, line


def test_a_source_that_dies_mid_download_is_replaced(make_mesh: Make, tmp_path: Path) -> None:
    _hub, (a, b, c) = mesh(make_mesh, "a", "b", "c")
    data = os.urandom(8 * MiB)
    path = "/shared/root/big.bin"
    publish(a, path, data, tmp_path)
    b.cli("download", "file", path, "-o", tmp_path / "b.bin")
    assert source_names(c, path) == {"a", "b"}

    start_download(c, path, rate=2 * MiB)  # ~4 s: time to kill a source in the middle
    wait_until(lambda: job_of(c, path)["chunks_done"] >= 2, 30, "c to fetch its first chunks")
    a.proc.kill9()
    job = wait_until(lambda: finished(c, path), 60, "c's download to end")
    assert job["state"] == "done", job
    assert 2 <= job["chunks_done"] == job["chunks"] == 8
    assert "a" in job["problems"], job  # a failed c at least once...
    assert job["by_source"].get("b", 0) >= 1, job  # ...and b served the rest
    assert job_of(c, path)["chunks_done"] == 8
    out = tmp_path / "c.bin"
    assert download_json(c, path, out)["reused"] == 8
    assert out.read_bytes() == data


def test_an_interrupted_download_resumes(make_mesh: Make, tmp_path: Path) -> None:
    _hub, (a, b) = mesh(make_mesh, "a", "b")
    data = os.urandom(6 * MiB + 5)
    path = "/shared/root/resume.bin"
    publish(a, path, data, tmp_path)

    start_download(b, path, rate=1 * MiB)
    wait_until(lambda: job_of(b, path)["chunks_done"] >= 2, 30, "b to fetch two chunks")
    b.proc.kill9()  # the downloading agent crashes
    restart_agent(b)
    wait_until(lambda: describe(b, path)["local"] == "partial", 30, "b to list its partial copy")

    out = tmp_path / "b.bin"
    job = download_json(b, path, out)
    assert out.read_bytes() == data
    assert job["chunks"] == 7 and job["reused"] >= 2 and job["fetched"] == 7 - job["reused"], job
    assert describe(b, path)["local"] == "complete"


def test_ctrl_c_stops_the_agents_download_too_and_the_same_command_resumes(make_mesh: Make, tmp_path: Path) -> None:
    _hub, (a, b) = mesh(make_mesh, "a", "b")
    data = os.urandom(6 * MiB + 5)
    path = "/shared/root/interrupted.bin"
    publish(a, path, data, tmp_path)
    out = tmp_path / "b.bin"
    # 512 KiB/s: 12 s for the whole file, so a Ctrl-C after two chunks (about 4 s) comes with room to spare even
    # when each `job_of` poll (a CLI call) is slow on a loaded machine (at 1 MiB/s a CI run finished first)
    argv = [*ZTM, "--agent", b.api_address, "download", "file", path, "-o", str(out), "--rate", str(MiB // 2)]
    # As from a terminal: Ctrl-C's default disposition even when this suite was started in the background of a
    # non-interactive shell (which ignores SIGINT, and children inherit that: then the download ran to its end)
    cli = subprocess.Popen(
        argv, env=b.env, cwd=b.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    seen: list[str] = []  # what each poll saw, for the failure message

    def started() -> bool:
        job = job_of(b, path)
        seen.append(f"{time.monotonic() - t0:.2f}s {job['state']} {job['chunks_done']}/{job['chunks']}")
        return bool(job["chunks_done"] >= 1)

    t0 = time.monotonic()
    try:
        wait_until(started, 30, "b to fetch a chunk")
        cli.send_signal(signal.SIGINT)  # Ctrl-C
        _out, err = cli.communicate(timeout=15)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert cli.returncode == 130, f"{err!r}; polls: {seen[:3]} ... {seen[-3:]} ({len(seen)})"
    assert "stopped the download" in err and "run the same command to resume" in err, err
    assert job_of(b, path)["state"] == "cancelled"  # the agent stopped fetching as well
    assert not out.exists()

    job = download_json(b, path, out)  # the same command again: only the missing chunks are fetched
    assert out.read_bytes() == data
    assert job["reused"] >= 1 and job["fetched"] == job["chunks"] - job["reused"], job


def test_a_damaged_chunk_is_refused_and_fetched_elsewhere(make_mesh: Make, tmp_path: Path) -> None:
    _hub, (a, b, c) = mesh(make_mesh, "a", "b", "c")
    data = os.urandom(4 * MiB)
    path = "/shared/root/fragile.bin"
    publish(a, path, data, tmp_path)
    b.cli("download", "file", path, "-o", tmp_path / "b.bin")
    for chunk in chunk_files(a):  # a's disk is damaged (or tampered with): one byte in every chunk
        raw = bytearray(chunk.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        chunk.write_bytes(bytes(raw))

    out = tmp_path / "c.bin"
    job = download_json(c, path, out)
    assert out.read_bytes() == data
    assert set(job["by_source"]) == {"b"}, job
    assert "damaged" in job["problems"].get("a", ""), job
    a.proc.wait_for_output(r"local copy of /shared/root/fragile.bin is damaged")
    wait_until(lambda: source_names(c, path) == {"b", "c"}, 10, "a to stop offering its damaged copy")
    assert describe(a, path)["local"] == "partial"

    # With no intact source left, a download fails with one clear line.
    lonely = "/shared/root/lonely.bin"
    publish(a, lonely, os.urandom(2 * MiB), tmp_path)
    for chunk in chunk_files(a):
        chunk.write_bytes(b"tampered" + chunk.read_bytes()[8:])
    cp = c.cli("download", "file", lonely, "-o", tmp_path / "lonely.bin", check=False)
    line = one_line_error(cp)
    assert f"download of {lonely} failed" in line and "a: refused" in line and "damaged" in line, line
    assert not (tmp_path / "lonely.bin").exists()


# ------------------------------------------------------------------------------------------------------- ACLs


async def fetch_one(stream: Any, request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Send one chunk request on a `fetch` stream; the header the serving endpoint answered and the bytes."""
    from ztm.apps.files.channel import StreamReader

    await stream.write(json.dumps(request).encode() + b"\n")
    reader = StreamReader(stream)
    line = await asyncio.wait_for(reader.line(), 10)
    header = json.loads(line) if line else {}
    data = await asyncio.wait_for(reader.exactly(header["size"]), 10) if "size" in header else b""
    return header, data


def raw_chunk_requests(requester: Agent, target: str, requests: list[dict[str, Any]], hub: Hub) -> list[Any]:
    """Act as a hostile agent holding `requester`'s endpoint certificate: open a `fetch` stream to `target` through
    the hub (end-to-end sealed, as every app stream must be) and send each request; returns, per request, the header
    the serving endpoint answered and the bytes."""
    from e2eclient import layer_of, open_e2e
    from ztm import h2
    from ztm.agent.tls import MeshFiles

    host, port = hub.address.rsplit(":", 1)
    files = MeshFiles(requester.data / "meshes" / MESH)
    target_id = next(e["id"] for e in requester.endpoints() if e["name"] == target)

    async def one(request: dict[str, Any]) -> Any:
        conn = await h2.connect(host, int(port), files.ep_context(), timeout=10)
        try:
            return await fetch_one(await open_e2e(conn, layer_of(files), target_id, "files", "fetch"), request)
        finally:
            conn.close()
            await asyncio.wait_for(conn.wait_closed(), 10)

    async def all_of() -> list[Any]:
        return [await one(r) for r in requests]

    return asyncio.run(all_of())


def test_acls_are_enforced_by_hub_and_serving_endpoint(make_mesh: Make, make_agent: Make, tmp_path: Path) -> None:
    hub, (root,) = mesh(make_mesh, "r")
    bob = make_agent("bob")
    bob.join(MESH, "bob", invite(root, bob, "bob", tmp_path / "bob.json"))

    secret, blocked, lent = os.urandom(MiB + 1), os.urandom(1000), os.urandom(2 * MiB)
    publish(root, "/users/root/secret.bin", secret, tmp_path)
    publish(root, "/shared/root/no-bob.bin", blocked, tmp_path, "--block", "bob")
    publish(root, "/users/root/lent.bin", lent, tmp_path, "--readonly", "bob")

    # The hub shows bob only what he may read, and refuses the rest as absent.
    assert [f["path"] for f in bob.cli_json("get", "file")] == ["/users/root/lent.bin"]
    for path in ("/users/root/secret.bin", "/shared/root/no-bob.bin"):
        line = one_line_error(bob.cli("download", "file", path, "-o", tmp_path / "x", check=False))
        assert f"no file {path}" in line, line
    bob.cli("download", "file", "/users/root/lent.bin", "-o", tmp_path / "lent.bin")
    assert (tmp_path / "lent.bin").read_bytes() == lent

    # Only the owner (or root) writes a namespace.
    (tmp_path / "mine.txt").write_text("bob's")
    line = one_line_error(bob.cli("publish", "file", "/shared/root/x.txt", "-i", tmp_path / "mine.txt", check=False))
    assert "may not publish /shared/root/x.txt: only root may" in line, line
    bob.cli("publish", "file", "/shared/bob/x.txt", "-i", tmp_path / "mine.txt")
    line = one_line_error(bob.cli("unpublish", "file", "/users/root/lent.bin", check=False))
    assert "may unpublish" in line, line
    assert [f["path"] for f in root.cli_json("get", "file", "/shared/bob/")] == ["/shared/bob/x.txt"]
    assert root.cli("download", "file", "/shared/bob/x.txt", "-o", "-").stdout == "bob's"

    # A hostile bob skips the hub's index and asks root's endpoint for chunks directly: refused there.
    contents = {"/users/root/secret.bin": secret, "/shared/root/no-bob.bin": blocked, "/users/root/lent.bin": lent}
    sha = {p: hashlib.sha256(d).hexdigest() for p, d in contents.items()}
    answers = raw_chunk_requests(bob, "r", [{"path": p, "hash": h, "index": 0} for p, h in sha.items()], hub)
    (secret_hdr, _), (blocked_hdr, _), (lent_hdr, lent_data) = answers
    assert secret_hdr["code"] == "forbidden" and "private to 'root'" in secret_hdr["error"], secret_hdr
    assert blocked_hdr["code"] == "forbidden" and "'bob' is blocked" in blocked_hdr["error"], blocked_hdr
    assert lent_hdr["size"] == MiB and lent_data == lent[:MiB], lent_hdr  # the positive control
    root.proc.wait_for_output(r"refused /users/root/secret\.bin to bob \(user bob\)")

    # Root takes the loan back: root's endpoint refuses bob's next chunk request (ACL checked on every read).
    root.cli("acl", "file", "/users/root/lent.bin", "--block", "bob")
    assert "bob" in root.cli("acl", "file", "/users/root/lent.bin").stdout

    def refused() -> bool:
        request = {"path": "/users/root/lent.bin", "hash": sha["/users/root/lent.bin"], "index": 1}
        [(header, _)] = raw_chunk_requests(bob, "r", [request], hub)
        return header.get("code") == "forbidden"

    wait_until(refused, 10, "root's endpoint to refuse bob after the ACL change")
    assert source_names(root, "/users/root/lent.bin") == {"r"}, "bob's copy is no source once bob may not read it"


def test_the_index_survives_a_hub_restart(make_mesh: Make, tmp_path: Path) -> None:
    hub, (a, b) = mesh(make_mesh, "a", "b")
    data = os.urandom(MiB + 10)
    path = "/shared/root/kept.bin"
    publish(a, path, data, tmp_path, "--block", "nobody")
    restart_hub(hub)
    # Entries are durable; sources come back as the agents reconnect and announce what they hold.
    wait_until(lambda: source_names(b, path) == {"a"}, 60, "a to be a source again after the hub restart")
    assert describe(b, path)["acl"] == {"readonly": [], "block": ["nobody"]}
    b.cli("download", "file", path, "-o", tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == data


class LyingSource(threading.Thread):
    """Endpoint `agent` taken over by an attacker: with the endpoint's own certificate (its agent stopped), it opens
    the event stream, announces itself as a source of `path`, and answers every chunk request with bytes of the right
    size and a made-up hash."""

    def __init__(self, agent: Agent, hub: Hub, path: str, file_hash: str) -> None:
        super().__init__(daemon=True, name="lying-source")
        self.agent, self.hub, self.path, self.file_hash = agent, hub, path, file_hash
        self.ready = threading.Event()
        self.lies = 0
        self.layer: Any = None  # c's end-to-end layer (ztm.agent.e2e.MeshE2E), made on the thread's loop
        self.error: BaseException | None = None
        self.loop = asyncio.new_event_loop()
        self._quit: asyncio.Future[None] | None = None

    def run(self) -> None:
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()
        finally:
            self.loop.close()

    def stop(self) -> None:
        def done() -> None:
            if self._quit is not None and not self._quit.done():
                self._quit.set_result(None)

        self.loop.call_soon_threadsafe(done)
        self.join(20)

    async def _main(self) -> None:
        from e2eclient import layer_of
        from ztm import h2
        from ztm.agent.link import EventReader, request
        from ztm.agent.tls import MeshFiles
        from ztm.version import E2E_VERSION

        host, port = self.hub.address.rsplit(":", 1)
        files = MeshFiles(self.agent.data / "meshes" / MESH)
        self.layer = layer_of(files)
        conn = await h2.connect(host, int(port), files.ep_context(), timeout=10)
        self._quit = self.loop.create_future()
        tasks: set[asyncio.Task[None]] = set()
        try:
            events = await conn.open_stream("GET", "/api/events", [("ztm-e2e", E2E_VERSION)])
            status, _ = await asyncio.wait_for(events.response(), 10)
            assert status == 200, status
            reader = EventReader(events)
            hello = await asyncio.wait_for(reader.next(), 10)
            assert hello is not None and hello["type"] == "hello", hello
            hold = {"hold": [{"path": self.path, "hash": self.file_hash}], "replace": True}
            assert await request(conn, "POST", "/api/files/sources", hold) == {"accepted": [self.path], "stale": []}
            self.ready.set()

            async def events_loop() -> None:
                while (event := await reader.next()) is not None:
                    if event.get("type") == "stream":
                        first = base64.b64decode(event.get("first", ""))  # the opening's start, if the hub had it
                        task = asyncio.ensure_future(self._lie(conn, str(event["id"]), first))
                        tasks.add(task)

            listener = asyncio.ensure_future(events_loop())
            await asyncio.wait([listener, self._quit], return_when=asyncio.FIRST_COMPLETED)
            listener.cancel()
        finally:
            for task in tasks:
                task.cancel()
            conn.close()
            await asyncio.wait_for(conn.wait_closed(), 10)

    async def _lie(self, conn: Any, stream_id: str, first: bytes) -> None:
        from ztm import h2
        from ztm.apps.files.channel import StreamReader

        outer = await conn.open_stream("CONNECT", "hub", [("ztm-accept", stream_id)])
        stream: Any = outer
        try:
            await asyncio.wait_for(outer.response(), 10)
            # the attacker holds c's key: it completes the end-to-end opening like c's agent would
            stream, _app, _service = await self.layer.respond(outer, first)
            stream.accept()
            reader = StreamReader(stream)
            while (line := await reader.line()) is not None:
                index = json.loads(line)["index"]
                self.lies += 1
                size = min(MiB, len(LIE_DATA) - index * MiB)
                await stream.write(json.dumps({"size": size, "sha256": "0" * 64}).encode() + b"\n")
                await stream.write(os.urandom(size))
            await stream.end()
        except h2.H2Error:
            stream.reset()


LIE_DATA = os.urandom(4 * MiB)


def test_chunks_from_a_lying_source_are_rejected(make_mesh: Make, tmp_path: Path) -> None:
    hub, (a, b, c) = mesh(make_mesh, "a", "b", "c")
    path = "/shared/root/target.bin"
    view = publish(a, path, LIE_DATA, tmp_path)
    c.cli("download", "file", path, "-o", tmp_path / "c.bin")  # c legitimately holds the file...
    c.proc.stop()  # ...then an attacker runs c's endpoint identity instead of its agent
    liar = LyingSource(c, hub, path, view["hash"])
    liar.start()
    try:
        assert liar.ready.wait(20) and liar.error is None, liar.error
        wait_until(lambda: source_names(b, path) == {"a", "c"}, 10, "c to be listed as an online source")
        job = download_json(b, path, tmp_path / "b.bin")
    finally:
        liar.stop()
    assert (tmp_path / "b.bin").read_bytes() == LIE_DATA
    assert liar.lies >= 1, "the download never asked the lying source"
    assert "wrong content (tampered or damaged); rejected" in job["problems"]["c"], job
    assert job["by_source"] == {"a": 4}, job


# ----------------------------------------------------------------------------------- partial holders, auto-resume

STALLED = 1024
"""The lowest download rate: the first chunk goes at once, the next waits ~17 minutes in the pacer, so a download
started with it holds exactly one chunk and stays running (a partial holder, paused deterministically)."""


def partial_holders(agent: Agent, path: str) -> dict[str, int]:
    return {p["name"]: p["held"] for p in describe(agent, path).get("partial", [])}


def test_partial_holders_serve_the_chunks_they_have(make_mesh: Make, tmp_path: Path) -> None:
    _hub, (a, b, c, d) = mesh(make_mesh, "a", "b", "c", "d")
    data = os.urandom(8 * MiB)
    path = "/shared/root/popular.bin"
    publish(a, path, data, tmp_path)

    # b and c start downloading and stall after one chunk each: both are partial holders, downloads running.
    for agent in (b, c):
        start_download(agent, path, rate=STALLED)
        wait_until(lambda agent=agent: job_of(agent, path)["chunks_done"] == 1, 30, f"{agent.name}'s first chunk")
    wait_until(lambda: partial_holders(d, path) == {"b": 1, "c": 1}, 10, "the hub to list b and c as partial holders")
    assert source_names(d, path) == {"a"}, "a partial holder is no complete source"

    out = tmp_path / "d.bin"
    job = download_json(d, path, out)
    assert out.read_bytes() == data
    by_source = job["by_source"]
    # b's chunk comes from b (its workers start before any other can take it); c's from c unless it is b's chunk.
    assert by_source["b"] == 1 and by_source.get("c", 0) <= 1, job
    assert by_source["a"] == 8 - by_source["b"] - by_source.get("c", 0), job
    assert job_of(b, path)["state"] == "running" and job_of(c, path)["state"] == "running", "still downloading"
    assert source_names(b, path) == {"a", "d"}

    # Cancelled, b still serves its partial copy: the chunk it has, and `not_held` (stream kept open) for the rest.
    status, _ = b.api("DELETE", f"/api/meshes/{MESH}/apps/files/downloads?" + urlencode({"path": path}))
    assert status == 200
    b_hash = hashlib.sha256(data).hexdigest()
    answers = raw_chunk_requests(d, "b", [{"path": path, "hash": b_hash, "index": i} for i in range(8)], _hub)
    served = [
        i for i, (header, chunk) in enumerate(answers) if "size" in header and chunk == data[i * MiB : (i + 1) * MiB]
    ]
    lacking = [header for header, _ in answers if header.get("code") == "not_held"]
    assert len(served) == 1 and len(lacking) == 7, answers


def test_a_restarted_agent_finishes_its_download(make_mesh: Make, tmp_path: Path) -> None:
    _hub, (a, b) = mesh(make_mesh, "a", "b")
    data = os.urandom(6 * MiB + 5)
    path = "/shared/root/resume-by-itself.bin"
    publish(a, path, data, tmp_path)
    out = tmp_path / "out" / "b.bin"

    start_download(b, path, rate=1 * MiB, output=out)
    wait_until(lambda: job_of(b, path)["chunks_done"] >= 2, 30, "b to fetch two chunks")
    b.proc.kill9()  # the downloading agent crashes; nobody runs the download again
    restart_agent(b)
    job = wait_until(lambda: finished(b, path), 60, "b to finish the download by itself")
    assert job["state"] == "done" and job["resumed"], job
    assert job["chunks"] == 7 and job["reused"] >= 2 and job["fetched"] == 7 - job["reused"], job
    assert out.read_bytes() == data, "the output the download was started with is written"
    assert describe(b, path)["local"] == "complete"
    b.proc.wait_for_output(r"resuming the unfinished download of /shared/root/resume-by-itself\.bin")

    # A cancelled download stays cancelled; a file published again while the agent was down is abandoned.
    kept, changed = "/shared/root/cancelled.bin", "/shared/root/changed.bin"
    publish(a, kept, os.urandom(3 * MiB), tmp_path)
    publish(a, changed, os.urandom(3 * MiB), tmp_path)
    for p in (kept, changed):
        start_download(b, p, rate=STALLED)
        wait_until(lambda p=p: job_of(b, p)["chunks_done"] == 1, 30, f"b's first chunk of {p}")
    status, view = b.api("DELETE", f"/api/meshes/{MESH}/apps/files/downloads?" + urlencode({"path": kept}))
    assert status == 200 and view["state"] == "cancelled", view
    status, err = b.api("DELETE", f"/api/meshes/{MESH}/apps/files/downloads?" + urlencode({"path": kept}))
    assert status == 404 and "no download" in err["error"], err
    b.proc.stop()
    publish(a, changed, os.urandom(2 * MiB), tmp_path)
    restart_agent(b)
    b.proc.wait_for_output(r"abandoned the unfinished download of /shared/root/changed\.bin: .*published again", 30)
    assert job_of(b, changed)["state"] == "abandoned"
    wait_until(lambda: describe(b, changed)["local"] == "none", 10, "b to drop its copy of the old content")
    status, jobs = b.api("GET", f"/api/meshes/{MESH}/apps/files/downloads?" + urlencode({"path": kept}))
    assert status == 200 and jobs == [], "a cancelled download is not resumed"
    assert describe(b, kept)["local"] == "partial"


# ---------------------------------------------------------------------------------------------- direct channels


def hub_metric(admin: str, name: str) -> float:
    """One counter from the hub's Prometheus admin port (0 if absent)."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def agent_metric(agent: Agent, prefix: str) -> int:
    """The first line of the agent's /api/metrics starting with `prefix` (0 if none)."""
    status, body = agent.api("GET", "/api/metrics")
    assert status == 200, body
    for line in str(body).splitlines():
        if line.startswith(prefix):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


FETCH_DIRECT = 'ztm_agent_app_direct{mesh="m",app="files",name="fetch"}'
FETCH_FALLBACKS = 'ztm_agent_app_direct_fallbacks{mesh="m",app="files",name="fetch"}'
RELAYED = "ztm_hub_relayed_bytes_total"


def direct_agent(make_agent: Make, name: str, *, announce_dead: bool = False) -> Agent:
    """An agent taking direct channels on a free loopback port (announcing a port where nothing listens)."""
    extra = ["--direct", f"127.0.0.1:{free_port()}"]
    if announce_dead:
        extra += ["--direct-announce", f"127.0.0.1:{free_port()}"]
    return make_agent(name, extra=extra)


def test_chunks_from_a_direct_source_come_over_direct_channels(
    make_hub: Make, make_agent: Make, tmp_path: Path
) -> None:
    admin = f"127.0.0.1:{free_port()}"
    hub = make_hub(extra=["--admin", admin])
    a, natted, d = direct_agent(make_agent, "a"), direct_agent(make_agent, "n", announce_dead=True), make_agent("d")
    for agent in (a, natted, d):
        agent.join(MESH, agent.name, hub.permit)
    for agent in (a, natted):
        agent.proc.wait_for_output(r"direct channels announced at 127\.0\.0\.1:", 20)

    # a answers at its direct address: every chunk comes straight from a, the hub relays (almost) nothing.
    data = os.urandom(6 * MiB + 77)
    path = "/shared/root/direct.bin"
    publish(a, path, data, tmp_path)
    relayed = hub_metric(admin, RELAYED)
    job = download_json(d, path, tmp_path / "direct.bin")
    assert (tmp_path / "direct.bin").read_bytes() == data
    assert job["state"] == "done" and job["by_source"] == {"a": 7} and job["direct"] == {"a": 7}, job
    assert job["direct_fallbacks"] == 0, job
    assert hub_metric(admin, RELAYED) - relayed < 64 * 1024, "the hub relayed file data"
    assert agent_metric(d, FETCH_DIRECT) >= 1 and agent_metric(d, FETCH_FALLBACKS) == 0
    assert agent_metric(a, 'ztm_agent_app_direct_served{mesh="m",app="files"') >= 1
    assert agent_metric(d, 'ztm_agent_direct_opened_total{mesh="m"}') >= 1
    assert agent_metric(a, 'ztm_agent_direct_accepted_total{mesh="m"}') >= 1
    d.cli("erase", "file", path)  # the human summary says so too
    said = d.cli("download", "file", path, "-o", tmp_path / "again.bin").stdout
    assert "7 fetched (a: 7), 7 of them over direct channels" in said, said

    # n announces an address where nothing answers: its chunks come through the hub, the download finishes.
    other = os.urandom(3 * MiB + 5)
    path_n = "/shared/root/natted.bin"
    publish(natted, path_n, other, tmp_path)
    relayed = hub_metric(admin, RELAYED)
    job = download_json(d, path_n, tmp_path / "natted.bin")
    assert (tmp_path / "natted.bin").read_bytes() == other
    assert job["state"] == "done" and job["by_source"] == {"n": 4} and job["direct"] == {}, job
    assert job["direct_fallbacks"] >= 1, job
    assert hub_metric(admin, RELAYED) - relayed >= len(other), "the relay carried the data"
    assert agent_metric(d, FETCH_FALLBACKS) >= 1
    assert agent_metric(d, 'ztm_agent_direct_failures_total{mesh="m"}') >= 1


def raw_direct_requests(requester: Agent, address: str, target: str, requests: list[dict[str, Any]]) -> list[Any]:
    """Act as a hostile agent holding `requester`'s endpoint certificate: open a direct channel to endpoint `target`
    listening at `address` and, on it, a `fetch` stream sealed end to end (as every app stream must be; one per
    request, as a refusal ends the stream); returns, per request, the header the serving endpoint answered and the
    bytes."""
    from e2eclient import dial_direct, layer_of, open_direct
    from ztm.agent.tls import MeshFiles

    files = MeshFiles(requester.data / "meshes" / MESH)
    target_id = next(e["id"] for e in requester.endpoints() if e["name"] == target)

    async def one(request: dict[str, Any]) -> Any:
        conn = await dial_direct(files.dir, address)
        try:
            return await fetch_one(await open_direct(conn, layer_of(files), target_id, "files", "fetch"), request)
        finally:
            conn.abort()

    async def all_of() -> list[Any]:
        return [await one(r) for r in requests]

    return asyncio.run(all_of())


def test_acls_hold_on_the_direct_path(make_hub: Make, make_agent: Make, tmp_path: Path) -> None:
    hub = make_hub()
    direct = f"127.0.0.1:{free_port()}"
    root = make_agent("r", extra=["--direct", direct])
    root.join(MESH, "r", hub.permit)
    bob = make_agent("bob")
    bob.join(MESH, "bob", invite(root, bob, "bob", tmp_path / "bob.json"))
    root.proc.wait_for_output(r"direct channels announced at 127\.0\.0\.1:", 20)

    blocked, lent = os.urandom(1000), os.urandom(2 * MiB)
    publish(root, "/shared/root/no-bob.bin", blocked, tmp_path, "--block", "bob")
    publish(root, "/users/root/lent.bin", lent, tmp_path, "--readonly", "bob")

    # bob's downloader uses the direct channel for what he may read.
    job = download_json(bob, "/users/root/lent.bin", tmp_path / "lent.bin")
    assert (tmp_path / "lent.bin").read_bytes() == lent
    assert job["direct"] == {"r": 2}, job

    # A hostile bob asks root's endpoint for chunks over a direct channel: the same ACL check refuses him there,
    # with his identity taken from his client certificate.
    sha = {
        p: hashlib.sha256(d).hexdigest()
        for p, d in (("/shared/root/no-bob.bin", blocked), ("/users/root/lent.bin", lent))
    }
    answers = raw_direct_requests(bob, direct, "r", [{"path": p, "hash": h, "index": 0} for p, h in sha.items()])
    (blocked_hdr, blocked_data), (lent_hdr, lent_data) = answers
    assert blocked_hdr["code"] == "forbidden" and "'bob' is blocked" in blocked_hdr["error"], blocked_hdr
    assert blocked_data == b""
    assert lent_hdr["size"] == MiB and lent_data == lent[:MiB], lent_hdr  # the positive control
    root.proc.wait_for_output(r"refused /shared/root/no-bob\.bin to bob \(user bob\): user 'bob' is blocked")

    # Root takes the loan back: the next direct chunk request is refused too (ACL checked on every read).
    root.cli("acl", "file", "/users/root/lent.bin", "--block", "bob")

    def refused() -> bool:
        request = {"path": "/users/root/lent.bin", "hash": sha["/users/root/lent.bin"], "index": 1}
        [(header, _)] = raw_direct_requests(bob, direct, "r", [request])
        return header.get("code") == "forbidden"

    wait_until(refused, 10, "root's endpoint to refuse bob's direct request after the ACL change")
