"""Local API routes of the mesh's access policy and audit log: a pass-through to the hub (`agent.hub_call`).

The hub decides everything (who may set or roll back the policy, who may read the audit log) from the verified
certificate of this endpoint's connection. These routes only check the shape of what the local caller sends, so that
a malformed request gets a one-line error here and never leaves the machine: the policy text is a string of at most
`MAX_POLICY_BYTES` UTF-8 bytes, a note is one line, `from`/`to`/`target` of a check parse as the policy language's
subject, endpoint name and app target, and query values are numbers or user names before they are rebuilt into the
hub's query string (nothing the caller sends is pasted into a hub path).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from ztm import validate
from ztm.agent.service import Agent
from ztm.errors import BadInput
from ztm.policy import MAX_POLICY_BYTES, parse_app_target, parse_subject
from ztm.policy.who import TAG

Json = Callable[[Any, int], web.Response]

MAX_VERSION = 2**31 - 1
MAX_AUDIT_LIMIT = 10_000
MAX_POLICY_BODY = 6 * MAX_POLICY_BYTES + 64 * 1024
"""A policy body may be larger than the API's usual 1 MiB: JSON escapes a character in up to 6 bytes."""


def add_routes(app: web.Application, agent: Agent, reply: Json) -> None:
    base = "/api/meshes/{mesh}"

    def mesh(request: web.Request) -> str:
        return request.match_info["mesh"]

    async def get_policy(request: web.Request) -> web.Response:
        version = query_int(request.query, "version", 1, MAX_VERSION)
        path = "/api/policy" + (f"?version={version}" if version is not None else "")
        return reply(await agent.hub_call(mesh(request), "GET", path), 200)

    async def set_policy(request: web.Request) -> web.Response:
        body = await policy_body(request)
        return reply(await agent.hub_call(mesh(request), "POST", "/api/policy", set_request(body)), 200)

    async def history(request: web.Request) -> web.Response:
        return reply(await agent.hub_call(mesh(request), "GET", "/api/policy/history"), 200)

    async def rollback(request: web.Request) -> web.Response:
        body = validate.json_object(await request.read())
        only(body, {"version"}, '{"version": N}')
        version = validate.int_range(body.get("version"), "version", 1, MAX_VERSION)
        return reply(await agent.hub_call(mesh(request), "POST", "/api/policy/rollback", {"version": version}), 200)

    async def check(request: web.Request) -> web.Response:
        body = await policy_body(request)
        return reply(await agent.hub_call(mesh(request), "POST", "/api/policy/check", check_request(body)), 200)

    async def audit(request: web.Request) -> web.Response:
        return reply(await agent.hub_call(mesh(request), "GET", audit_path(request.query)), 200)

    r = app.router
    r.add_get(base + "/policy", get_policy)
    r.add_post(base + "/policy", set_policy)
    r.add_get(base + "/policy/history", history)
    r.add_post(base + "/policy/rollback", rollback)
    r.add_post(base + "/policy/check", check)
    r.add_get(base + "/audit", audit)


async def policy_body(request: web.Request) -> dict[str, Any]:
    """The JSON object of a request that may carry a whole policy text (larger than the API's usual body limit)."""
    too_large = f"request body larger than {MAX_POLICY_BODY} bytes: a policy text is at most {MAX_POLICY_BYTES}"
    if request.content_length is not None and request.content_length > MAX_POLICY_BODY:
        raise BadInput(too_large)
    raw = bytearray()
    while chunk := await request.content.read(64 * 1024):
        raw += chunk
        if len(raw) > MAX_POLICY_BODY:
            raise BadInput(too_large)
    return validate.json_object(bytes(raw))


def only(body: Mapping[str, Any], known: set[str], shape: str) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadInput(f"unknown field {unknown[0]!r} in the request body: send {shape}")


def policy_text(value: object, what: str = "text") -> str:
    if not isinstance(value, str):
        raise BadInput(f"field {what!r} must be the policy's text (a string), got {type(value).__name__}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_POLICY_BYTES:
        raise BadInput(f"the policy text is {size} bytes; at most {MAX_POLICY_BYTES} are accepted")
    return value


note = validate.note


def set_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The hub's `POST /api/policy` body from the local caller's: `{"text", "dry_run", "note"}`, checked."""
    only(body, {"text", "dry_run", "note"}, '{"text": POLICY, "dry_run": false, "note": ""}')
    if "text" not in body:
        raise BadInput('missing field \'text\': send {"text": POLICY, "dry_run": false, "note": ""}')
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadInput(f"field 'dry_run' must be true or false, got {dry_run!r}")
    return {"text": policy_text(body["text"]), "dry_run": dry_run, "note": note(body.get("note"))}


def check_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The hub's `POST /api/policy/check` body: `from` USER[@EP], `to` an endpoint name or tag, `target` an app target,
    and an optional draft `text` to decide with instead of the policy in force."""
    only(body, {"from", "to", "target", "text"}, '{"from": "USER[@EP]", "to": EP, "target": "tunnel/tcp/NAME"}')
    who = validate.field(body, "from", str)
    parse_subject(who)
    to = place(validate.field(body, "to", str))
    target = validate.field(body, "target", str)
    parse_app_target(target)
    out: dict[str, Any] = {"from": who, "to": to, "target": target}
    if body.get("text") is not None:
        out["text"] = policy_text(body["text"])
    return out


def place(text: str) -> str:
    """The `to` of a check: an endpoint name, or `tag:NAME` for any endpoint with that tag."""
    if text.startswith("tag:"):
        if not TAG.fullmatch(text):
            raise BadInput(f"invalid tag {text[:70]!r}: tag:NAME, NAME of letters, digits, '.', '_' or '-'")
        return text
    return validate.endpoint_name(text, "'to' endpoint name")


def query_int(query: Mapping[str, str], key: str, lo: int, hi: int) -> int | None:
    raw = query.get(key)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12 or not lo <= int(raw) <= hi:
        raise BadInput(f"query parameter {key!r} must be a whole number from {lo} to {hi}, got {raw[:40]!r}")
    return int(raw)


def audit_path(query: Mapping[str, str]) -> str:
    """`/api/audit?...` from the local query, each value checked and encoded again."""
    unknown = sorted(set(query) - {"since", "user", "limit"})
    if unknown:
        raise BadInput(f"unknown query parameter {unknown[0]!r}: use since (unix seconds), user and limit")
    params: dict[str, str] = {}
    raw_since = query.get("since")
    if raw_since is not None:
        try:
            since = float(raw_since)
        except ValueError:
            since = math.nan
        if not (math.isfinite(since) and 0 <= since < 1e11):
            raise BadInput(f"query parameter 'since' must be unix seconds such as 1733580000, got {raw_since[:40]!r}")
        params["since"] = str(math.floor(since))
    if "user" in query:
        params["user"] = validate.user_name(query["user"])
    limit = query_int(query, "limit", 1, MAX_AUDIT_LIMIT)
    if limit is not None:
        params["limit"] = str(limit)
    return "/api/audit" + (f"?{urlencode(params)}" if params else "")
