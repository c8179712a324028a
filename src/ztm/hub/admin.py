"""The hub's optional admin port (`--admin 127.0.0.1:9090`): Prometheus `/metrics`, `/healthz`, and the audit log
as JSON lines for log shippers (`/audit?after=SEQ`: every row after that sequence number, oldest first).

It is plain HTTP with no authentication, so it is meant for loopback only: `/metrics` serves only counters and
gauges, but `/audit` names users, endpoints and addresses (never keys). Kept apart from the mesh port so that
scraping never competes with agent traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from urllib.parse import parse_qs, urlsplit

from ztm.errors import ZtmError
from ztm.hub.audit import MAX_LIMIT, view
from ztm.hub.state import HubState

log = logging.getLogger("ztm.hub")


def render(state: HubState) -> str:
    """The Prometheus text exposition of the hub's gauges and counters."""
    gauges = {
        "ztm_hub_endpoints": ("endpoints known to the hub", len(state.endpoints)),
        "ztm_hub_endpoints_online": ("endpoints with a live session", len(state.sessions)),
        "ztm_hub_users": ("users of the mesh", len(state.users)),
        "ztm_hub_users_evicted": ("evicted users", sum(1 for u in state.users.values() if u.evicted_at)),
        "ztm_hub_uptime_seconds": ("seconds since the hub started", round(time.time() - state.started, 3)),
        "ztm_hub_endpoints_remote": ("endpoints online at other hubs of the cluster", len(state.remote)),
        "ztm_hub_hubs_online": ("hubs of the mesh online, this one included", _hubs_online(state)),
        "ztm_hub_store_available": ("1 while the store answers", int(state.store.available)),
        "ztm_hub_sessions_all_events": (
            "sessions that get every endpoint event (they keep the whole list, or are of an earlier release)",
            sum(1 for s in state.sessions.values() if s.interest.everything),
        ),
        "ztm_hub_watched_endpoints": (
            "endpoint ids watched by the other sessions, all together",
            sum(len(s.interest) for s in state.sessions.values()),
        ),
    }
    lines: list[str] = []
    for name, (help_text, value) in gauges.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
    for name, value in sorted(state.counters.items()):
        metric = f"ztm_hub_{name}_total"
        lines += [f"# HELP {metric} {name.replace('_', ' ')} since start", f"# TYPE {metric} counter"]
        lines.append(f"{metric} {value}")
    return "\n".join(lines) + "\n"


def _hubs_online(state: HubState) -> int:
    return len(state.cluster.online_hubs()) if state.cluster is not None else 1


def health(state: HubState) -> tuple[str, str, str]:
    """`/healthz`: 200 "ok", or 503 with the reason when the store cannot be reached (the hub still serves its
    live sessions and relayed streams, but refuses changes)."""
    if not state.store.available:
        problem = state.store.problem or "unreachable"
        return "503 Service Unavailable", f"store unavailable, retrying: {problem}\n", "text/plain"
    return "200 OK", "ok\n", "text/plain"


async def serve_admin(state: HubState, host: str, port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            path = line[1] if len(line) >= 2 else ""
            if line[:1] == ["GET"] and urlsplit(path).path == "/audit":
                await _export_audit(state, path, writer)
                return
            if line[:1] == ["GET"] and path == "/metrics":
                status, body, ctype = "200 OK", render(state), "text/plain; version=0.0.4"
            elif line[:1] == ["GET"] and path == "/healthz":
                status, body, ctype = health(state)
            else:
                status, body, ctype = (
                    "404 Not Found",
                    "only GET /metrics, /healthz and /audit are served\n",
                    "text/plain",
                )
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {len(data)}\r\n"
                "connection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port, limit=16384)
    log.info("admin metrics on http://%s:%d/metrics", host, port)
    return server


async def _export_audit(state: HubState, path: str, writer: asyncio.StreamWriter) -> None:
    """`GET /audit?after=SEQ`: the audit rows after SEQ (default 0: all), one JSON object per line, oldest first,
    read from the store a page at a time; the body ends with the connection."""
    after = parse_qs(urlsplit(path).query).get("after", ["0"])[0]
    if not after.isdecimal():
        body = b"after must be an audit sequence number (a non-negative integer), e.g. /audit?after=1200\n"
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n%s" % (len(body), body))  # fmt: skip
        await writer.drain()
        return
    seq = int(after)
    try:
        rows = await state.store.audit(seq, None, None, MAX_LIMIT)
    except ZtmError as exc:
        body = f"store unavailable, retrying: {exc.message}\n".encode()
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n%s" % (len(body), body))  # fmt: skip
        await writer.drain()
        return
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n")
    while rows:
        writer.write(b"".join(json.dumps(view(r), separators=(",", ":")).encode() + b"\n" for r in rows))
        await writer.drain()
        if len(rows) < MAX_LIMIT:
            break
        try:
            rows = await state.store.audit(rows[-1].seq, None, None, MAX_LIMIT)
        except ZtmError as exc:  # the shipper resumes after the last row it got
            log.warning("the audit export stopped: %s", exc.message)
            return
