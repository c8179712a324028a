"""Local API routes of the files app, under `/api/meshes/{mesh}/apps/files` (guarded like every agent route).

File paths travel in the query string (`?path=/shared/alice/a.txt`), since they contain slashes. File content goes
up as the raw body of `POST .../content` (`Content-Type: application/octet-stream`, streamed, any size) and comes
down as the raw answer of `GET .../content`. `POST .../downloads` starts a download (optional `rate`, and `output`:
an absolute path the agent writes the file to once complete), `GET .../downloads` lists them (including the ones the
agent resumed after a restart, `resumed: true`), `DELETE .../downloads?path=P` cancels one for good.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ztm import filespec, validate
from ztm.agent.service import Agent
from ztm.apps.files.app import FilesApp
from ztm.errors import BadInput
from ztm.filespec import Acl

Json = Callable[[Any, int], web.Response]
BLOCK = 1 << 20
MAX_RATE = 1 << 40


def files_app(agent: Agent, mesh: str) -> FilesApp:
    return agent.app(mesh, "files", FilesApp, running=True)


def query_path(request: web.Request) -> str:
    value = request.query.get("path")
    if value is None:
        raise BadInput("missing query parameter 'path' (the mesh file, e.g. ?path=/shared/alice/notes.txt)")
    return filespec.check_path(value)


def query_users(request: web.Request, name: str) -> list[str]:
    users: list[str] = []
    for value in request.query.getall(name, []):
        users += filespec.parse_user_list(value)
    return users


def parse_rate(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= MAX_RATE:
        raise BadInput(f"rate must be bytes per second, a whole number from 1024 to {MAX_RATE}, got {value!r}")
    return float(value)


def parse_output(value: object) -> Path | None:
    """Where the agent itself writes the file once downloaded (kept with an unfinished download, so a download
    the agent resumes after a restart still lands there): an absolute local path, or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 4096 or "\0" in value:
        raise BadInput(f"output must be an absolute path of at most 4096 characters, got {str(value)[:80]!r}")
    target = Path(value)
    if not target.is_absolute() or target.name in ("", ".", ".."):
        raise BadInput(f"output must be an absolute path to a file, got {value[:80]!r}")
    return target


def add_routes(app: web.Application, agent: Agent, reply: Json) -> None:
    base = "/api/meshes/{mesh}/apps/files"

    def files(request: web.Request) -> FilesApp:
        return files_app(agent, request.match_info["mesh"])

    async def listing(request: web.Request) -> web.Response:
        return reply(await files(request).list(filespec.check_prefix(request.query.get("prefix", "/"))), 200)

    async def describe(request: web.Request) -> web.Response:
        return reply(await files(request).describe(query_path(request)), 200)

    async def unpublish(request: web.Request) -> web.Response:
        await files(request).unpublish(query_path(request))
        return web.Response(status=204)

    async def upload(request: web.Request) -> web.Response:
        app = files(request)
        if request.content_type != "application/octet-stream":
            raise BadInput("send the file's bytes as the body with Content-Type: application/octet-stream")
        path = query_path(request)
        acl = Acl.from_lists(query_users(request, "readonly"), query_users(request, "block"))
        raw_time = request.query.get("time")
        mtime: float | None = None
        if raw_time is not None:
            try:
                mtime = float(raw_time)
            except ValueError:
                raise BadInput("query parameter 'time' must be seconds since 1970") from None
            if not 0 <= mtime < 1e11:
                raise BadInput("query parameter 'time' must be seconds since 1970")

        async def blocks() -> AsyncIterator[bytes]:
            async for block in request.content.iter_chunked(BLOCK):
                yield block

        return reply(await app.publish(path, blocks(), mtime=mtime, acl=acl), 201)

    async def content(request: web.Request) -> web.StreamResponse:
        app = files(request)
        entry = app.held_entry(query_path(request))
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = entry.size
        await response.prepare(request)
        async for block in app.content(entry.path):
            await response.write(block)
        await response.write_eof()
        return response

    async def erase(request: web.Request) -> web.Response:
        await files(request).erase(query_path(request))
        return web.Response(status=204)

    async def set_acl(request: web.Request) -> web.Response:
        body = validate.json_object(await request.read())
        path = filespec.check_path(body.get("path"))
        acl = Acl.parse({"readonly": body.get("readonly"), "block": body.get("block")})
        return reply(await files(request).set_acl(path, acl), 200)

    async def start_download(request: web.Request) -> web.Response:
        body = validate.json_object(await request.read())
        path = filespec.check_path(body.get("path"))
        rate = parse_rate(body.get("rate"))
        target = parse_output(body.get("output"))
        return reply(files(request).download(path, target, rate=rate).view(), 202)

    async def cancel_download(request: web.Request) -> web.Response:
        return reply((await files(request).cancel(query_path(request))).view(), 200)

    async def downloads(request: web.Request) -> web.Response:
        app = files(request)
        wanted = request.query.get("path")
        jobs = [d.view() for d in app.downloads.values() if wanted is None or d.path == wanted]
        return reply(jobs, 200)

    handlers: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
        ("GET", base, listing),
        ("GET", base + "/file", describe),
        ("DELETE", base + "/file", unpublish),
        ("POST", base + "/content", upload),
        ("GET", base + "/content", content),
        ("DELETE", base + "/content", erase),
        ("POST", base + "/acl", set_acl),
        ("POST", base + "/downloads", start_download),
        ("GET", base + "/downloads", downloads),
        ("DELETE", base + "/downloads", cancel_download),
    ]
    for method, path, handler in handlers:
        app.router.add_route(method, path, handler)
