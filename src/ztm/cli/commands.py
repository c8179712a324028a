"""Commands that talk to the agent API: one function per command, `(Context) -> exit code`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ztm.cli import files, output, policy, routes
from ztm.cli.args import EP_KINDS, UsageError
from ztm.cli.client import AgentClient, segment
from ztm.cli.context import Context, UnexpectedAnswer, expect_obj
from ztm.errors import BadInput, Conflict, NotFound, PermitError, ZtmError
from ztm.version import __version__

JOIN_TIMEOUT = 30.0

MESH_FIELDS = (
    "name",
    "mesh_id",
    "ep_id",
    "ep_name",
    "user",
    "hubs",
    "status",
    "error",
    "joined_at",
    "connected_since",
    "cert_expires",
    "zone",
    "mesh_range",
    "mesh_range6",
)
HUB_FIELDS = (
    "id",
    "zone",
    "addresses",
    "online",
    "endpoints",
    "address",
    "connected",
    "status",
    "error",
    "rtt_ms",
    "connect_ms",
    "since",
    "version",
    "started",
    "last_seen",
    "bytes_sent",
    "bytes_received",
)
EP_FIELDS = (
    "id",
    "name",
    "user",
    "online",
    "labels",
    "version",
    "hostname",
    "ip",
    "port",
    "mesh_ip",
    "mesh_ip6",
    "routes",
    "routes_pending",
    "first_seen",
    "last_seen",
    "heartbeat",
    "is_local",
    "path",
    "path_via",
    "path_rtt_ms",
)
TIME_FIELDS = {
    "joined_at",
    "connected_since",
    "cert_expires",
    "since",
    "first_seen",
    "last_seen",
    "heartbeat",
    "created",
    "evicted_at",
    "started",
}


# ---- formatting of API objects ----


def _status(obj: dict[str, Any]) -> str:
    status = output.cell(obj.get("status"))
    error = obj.get("error")
    return f"{status}: {output.cell(error)}" if error else status


def _field(key: str, value: object) -> str:
    if key in TIME_FIELDS:
        return output.time_with_ago(value)
    if key.startswith("bytes_") and isinstance(value, int) and not isinstance(value, bool):
        return f"{output.human_bytes(value)} ({value} bytes)"
    if key in ("rtt_ms", "connect_ms"):
        return output.milliseconds(value)
    if isinstance(value, list):
        return ", ".join(output.cell(v) for v in value) or output.MISSING
    return output.cell(value)


def _describe(obj: dict[str, Any], fields: tuple[str, ...]) -> str:
    keys = [k for k in fields if k in obj] + sorted(k for k in obj if k not in fields)
    return output.key_values((k, _field(k, obj[k])) for k in keys)


def _ep_name(ep: dict[str, Any]) -> str:
    name = output.cell(ep.get("name") or ep.get("id"))
    return f"{name} (local)" if ep.get("is_local") is True else name


def _sort(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: str(r.get(key) or "").lower())


# ---- get ----


def cmd_get(ctx: Context) -> int:
    kind: str = ctx.args.kind
    name: str | None = ctx.args.name
    getters = {"mesh": _get_mesh, "hub": _get_hub, "ep": _get_ep, "app": _get_app, "file": files.get_files}
    {**getters, "audit": policy.get_audit, "route": routes.get_routes}[kind](ctx, name)
    return 0


def _show(ctx: Context, value: object, headers: tuple[str, ...], rows: list[list[str]], empty: str) -> None:
    if ctx.json:
        ctx.print_json(value)
    elif rows:
        ctx.print(output.table(headers, rows))
    else:
        ctx.print(empty)


def _mesh_obj(ctx: Context, name: str) -> dict[str, Any]:
    try:
        return ctx.get_obj(f"/api/meshes/{segment(name)}")
    except NotFound:
        raise NotFound(f"this agent has not joined a mesh named {output.clean(name)}; see 'ztm get mesh'") from None


def _get_mesh(ctx: Context, name: str | None) -> None:
    value: object
    if name:
        value = _mesh_obj(ctx, name)
        meshes = [value]
    else:
        meshes = ctx.get_list("/api/meshes")
        value = meshes
    rows = [
        [
            output.cell(m.get("name")),
            output.cell(m.get("user")),
            output.cell(m.get("ep_name")),
            output.cell(m.get("hubs")),
            _status(m),
        ]
        for m in _sort(meshes, "name")
    ]
    empty = "this agent has not joined any mesh yet: join one with 'ztm join MESH --as NAME --permit FILE'"
    _show(ctx, value, ("NAME", "USER", "ENDPOINT", "HUBS", "STATUS"), rows, empty)


def _hubs(ctx: Context) -> list[dict[str, Any]]:
    return ctx.get_list(ctx.mesh_path("hubs"))


def _find_hub(ctx: Context, hubs: list[dict[str, Any]], name: str | None) -> dict[str, Any]:
    """The hub `name` (its id, or one of its addresses); without a name the only hub, else the one connected to."""
    if name is None:
        connected = [h for h in hubs if h.get("connected") is True]
        if len(hubs) == 1 or len(connected) == 1:
            return hubs[0] if len(hubs) == 1 else connected[0]
        listed = ", ".join(output.cell(h.get("id") or h.get("address")) for h in hubs) or "none"
        raise BadInput(f"mesh {output.clean(ctx.mesh())} has several hubs ({listed}): name one")
    for hub in hubs:
        addresses = hub.get("addresses")
        if name in (hub.get("id"), hub.get("address")) or (isinstance(addresses, list) and name in addresses):
            return hub
    raise NotFound(f"no hub {output.clean(name)} in mesh {output.clean(ctx.mesh())}; see 'ztm get hub'")


def _hub_rtt(hub: dict[str, Any]) -> str:
    """The live RTT of the hub connected to; for the others the last connect time (TCP + TLS + HTTP/2), as `~N ms`."""
    if hub.get("rtt_ms") is not None:
        return output.milliseconds(hub.get("rtt_ms"))
    if hub.get("connect_ms") is not None:
        return "~" + output.milliseconds(hub.get("connect_ms"))
    return output.MISSING


def _get_hub(ctx: Context, name: str | None) -> None:
    hubs = _hubs(ctx)
    value: object = hubs
    if name:
        value = _find_hub(ctx, hubs, name)
        hubs = [value]
    rows = [
        [
            output.cell(h.get("id")),
            output.cell(h.get("zone")),
            output.cell(h.get("addresses")),
            output.cell(h.get("online")),
            output.cell(h.get("endpoints")),
            "*" if h.get("connected") is True else output.MISSING,
            _hub_rtt(h),
            _status(h),
            output.ago(h.get("since")),
        ]
        for h in hubs
    ]
    headers = ("ID", "ZONE", "ADDRESSES", "ONLINE", "ENDPOINTS", "CONNECTED", "RTT", "STATUS", "SINCE")
    _show(ctx, value, headers, rows, f"mesh {output.clean(ctx.mesh())} lists no hubs")


def _endpoint(ctx: Context, name: str) -> dict[str, Any]:
    try:
        return ctx.get_obj(ctx.mesh_path("endpoints", name))
    except NotFound:
        raise ctx.endpoint_not_found(name) from None


def _get_ep(ctx: Context, name: str | None) -> None:
    value: object
    if name:
        value = _endpoint(ctx, name)
        eps = [value]
    else:
        eps = ctx.get_list(ctx.mesh_path("endpoints"))
        value = eps
    rows = [
        [
            _ep_name(ep),
            output.cell(ep.get("user")),
            "online" if ep.get("online") is True else "offline",
            output.cell(ep.get("ip")),
            output.cell(ep.get("mesh_ip")),
            output.cell(ep.get("labels")),
            output.ago(ep.get("heartbeat")),
            _path_cell(ep),
        ]
        for ep in _sort(eps, "name")
    ]
    headers = ("NAME", "USER", "STATUS", "IP", "MESH IP", "LABELS", "HEARTBEAT", "PATH")
    _show(ctx, value, headers, rows, f"no endpoints in mesh {output.clean(ctx.mesh())}")


def _path_cell(ep: dict[str, Any]) -> str:
    """`punched 0.4ms`, `lan 0.1ms`, `direct`, `relay via HUB`, `-` (this endpoint, or a hub too old to say)."""
    path = ep.get("path")
    if not isinstance(path, str):
        return "-"
    if path == "relay":
        via = ep.get("path_via")
        return output.clean(f"relay via {via}" if isinstance(via, str) and via else "relay")
    rtt = ep.get("path_rtt_ms")
    return output.clean(f"{path} {rtt:g}ms" if isinstance(rtt, (int, float)) else path)


def _get_app(ctx: Context, name: str | None) -> None:
    if getattr(ctx.args, "available", False):
        from ztm.cli.apps import get_available

        get_available(ctx, name)
        return
    mesh = ctx.explicit_mesh()
    apps = ctx.get_list("/api/apps", query={"mesh": mesh} if mesh else None)
    value: object = apps
    if name:
        found = [a for a in apps if a.get("name") == name]
        if not found:
            raise NotFound(f"no app named {output.clean(name)}; see 'ztm get app'")
        value = found[0]
        apps = found[:1]
    rows = [
        [
            output.cell(a.get("name")),
            output.cell(a.get("provider")),
            output.cell(a.get("version")),
            output.cell(a.get("state") or ("running" if a.get("running") is True else "stopped")),
            output.cell(a.get("source")),
            output.cell(a.get("mesh")),
        ]
        for a in _sort(apps, "name")
    ]
    _show(ctx, value, ("NAME", "PROVIDER", "VERSION", "STATE", "SOURCE", "MESH"), rows, "no apps installed")


# ---- describe ----


def cmd_describe(ctx: Context) -> int:
    kind: str = ctx.args.kind
    name: str | None = ctx.args.name
    if kind == "file":
        files.describe_file(ctx, name)
    elif kind == "mesh":
        _print_described(ctx, _mesh_obj(ctx, name or ctx.mesh()), MESH_FIELDS)
    elif kind == "hub":
        _print_described(ctx, _find_hub(ctx, _hubs(ctx), name), HUB_FIELDS)
    else:
        ep = _endpoint(ctx, name) if name else _endpoint(ctx, _local_ep_id(ctx))
        if ctx.json:
            ctx.print_json(ep)
            return 0
        ctx.print(_describe(ep, EP_FIELDS))
        ctx.print(output.key_values([("ping", _ping_once(ctx, str(ep.get("id") or name)))]))
    return 0


def _print_described(ctx: Context, obj: dict[str, Any], fields: tuple[str, ...]) -> None:
    if ctx.json:
        ctx.print_json(obj)
    else:
        ctx.print(_describe(obj, fields))


def _ping_once(ctx: Context, ep: str) -> str:
    try:
        res = expect_obj(
            ctx.client().post(ctx.mesh_path("endpoints", ep, "ping"), {"count": 1}, timeout=min(ctx.timeout, 5.0)),
            "ping",
        )
    except ZtmError as exc:
        return f"failed: {exc.message}"
    rtts = _rtts(res)
    return output.milliseconds(rtts[0]) if rtts else "no reply"


def _local_ep_id(ctx: Context) -> str:
    ep_id = ctx.local_mesh().get("ep_id")
    if not isinstance(ep_id, str) or not ep_id:
        raise UnexpectedAnswer(f"the agent did not say which endpoint it is in mesh {output.clean(ctx.mesh())}")
    return ep_id


# ---- ping ----


def _rtts(res: dict[str, Any]) -> list[float]:
    raw = res.get("rtt_ms")
    if not isinstance(raw, list):
        raise UnexpectedAnswer("unexpected answer to ping: no rtt_ms list; see 'ztm version'")
    return [float(r) for r in raw if isinstance(r, int | float) and not isinstance(r, bool)]


def cmd_ping(ctx: Context) -> int:
    name: str = ctx.args.name
    count: int = ctx.args.count
    try:
        res = ctx.client().post(
            ctx.mesh_path("endpoints", name, "ping"), {"count": count}, timeout=ctx.timeout + 2 * count
        )
    except NotFound:
        raise ctx.endpoint_not_found(name) from None
    obj = expect_obj(res, "ping")
    rtts = _rtts(obj)
    shown = output.clean(name)
    if ctx.json:
        ctx.print_json(obj)
    else:
        for rtt in rtts:
            ctx.print(f"reply from {shown}: time={rtt:.2f} ms")
        loss = 100.0 * (count - min(len(rtts), count)) / count
        summary = f"--- {shown}: {count} sent, {len(rtts)} received, {loss:.0f}% loss"
        if rtts:
            avg = sum(rtts) / len(rtts)
            summary += f", rtt min/avg/max = {min(rtts):.2f}/{avg:.2f}/{max(rtts):.2f} ms"
        ctx.print(summary)
    if not rtts:
        raise ZtmError(f"no reply from {shown} in mesh {output.clean(ctx.mesh())}")
    return 0


# ---- label ----


def _target_ep(ctx: Context, words: list[str]) -> str | None:
    """`[]` -> this endpoint (None); `[NAME]` or `[ep, NAME]` -> NAME."""
    ep_words = {"ep", *EP_KINDS["ep"]}
    if not words:
        return None
    if len(words) == 1 and words[0] not in ep_words:
        return words[0]
    if len(words) == 2 and words[0].lower() in ep_words:
        return words[1]
    raise UsageError("ztm label: expected 'ztm label [ep NAME] --add LABEL ... --delete LABEL ...'")


def _flat(values: list[Any]) -> list[str]:
    out: list[str] = []
    for v in values:
        out.extend(_flat(v) if isinstance(v, list) else [str(v)])
    return list(dict.fromkeys(out))


def cmd_label(ctx: Context) -> int:
    add = _flat(ctx.args.add)
    delete = _flat(ctx.args.delete)
    both = set(add) & set(delete)
    if both:
        raise UsageError(f"ztm label: {', '.join(sorted(both))} both added and deleted; pick one")
    name = _target_ep(ctx, ctx.args.target) or _local_ep_id(ctx)
    if add or delete:
        try:
            res = ctx.client().post(ctx.mesh_path("endpoints", name, "labels"), {"add": add, "delete": delete})
        except NotFound:
            raise ctx.endpoint_not_found(name) from None
        ep = expect_obj(res, "labels")
    else:
        ep = _endpoint(ctx, name)
    if ctx.json:
        ctx.print_json(ep)
        return 0
    labels = ep.get("labels")
    shown = output.cell(ep.get("name") or name)
    if isinstance(labels, list) and labels:
        ctx.print(f"labels of {shown}: {', '.join(output.cell(v) for v in labels)}")
    else:
        ctx.print(f"{shown} has no labels")
    return 0


# ---- log ----


def cmd_log(ctx: Context) -> int:
    kind: str = ctx.args.kind
    query = {"lines": ctx.args.lines}
    if ctx.args.name and kind != "ep":
        raise UsageError(f"ztm log: NAME is only for 'ztm log ep NAME', not for {kind}")
    if kind == "agent":
        res = ctx.get_obj("/api/log", query=query)
    elif kind == "hub":
        res = ctx.get_obj(ctx.mesh_path("hub", "log"), query=query)
    else:
        name = ctx.args.name or _local_ep_id(ctx)
        try:
            res = ctx.get_obj(ctx.mesh_path("endpoints", name, "log"), query=query)
        except NotFound:
            raise ctx.endpoint_not_found(name) from None
    lines = res.get("lines")
    if not isinstance(lines, list):
        raise UnexpectedAnswer("unexpected answer to the log request: no lines list; see 'ztm version'")
    if ctx.json:
        ctx.print_json(res)
    elif not lines:
        ctx.note("the log is empty")
    else:
        ctx.print("\n".join(output.clean(str(line)) for line in lines))
    return 0


# ---- stats ----


def cmd_stats(ctx: Context) -> int:
    name: str | None = ctx.args.name
    stats = ctx.get_list(ctx.mesh_path("stats"))
    if name:
        stats = [s for s in stats if name in (s.get("ep_name"), s.get("ep_id"))]
        if not stats:
            raise NotFound(
                f"no traffic with {output.clean(name)} in mesh {output.clean(ctx.mesh())}; see 'ztm stats ep'"
            )
    rows = [
        [
            output.cell(s.get("ep_name") or s.get("ep_id")),
            output.human_bytes(s.get("bytes_sent")),
            output.human_bytes(s.get("bytes_received")),
            output.human_rate(s.get("send_rate")),
            output.human_rate(s.get("receive_rate")),
            output.cell(s.get("streams")),
            output.cell(s.get("encryption") or "-"),
        ]
        for s in stats
    ]
    headers = ("PEER", "SENT", "RECEIVED", "SEND RATE", "RECV RATE", "STREAMS", "ENCRYPTION")
    _show(ctx, stats, headers, rows, f"no traffic yet in mesh {output.clean(ctx.mesh())}")
    return 0


# ---- join / leave ----


def read_json_file(path: Path, what: str) -> Any:
    """The JSON content of a file the user named; every failure names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise BadInput(f"{what} {path} is a directory, not a file") from None
    except PermissionError:
        raise BadInput(f"cannot read {what} {path}: permission denied") from None
    except UnicodeDecodeError:
        raise BadInput(f"{what} {path} is not a text file") from None
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{what} {path} is not JSON (line {exc.lineno}: {exc.msg})") from None


def cmd_join(ctx: Context) -> int:
    mesh: str = ctx.args.mesh_name
    name: str = ctx.args.join_as
    permit = read_json_file(ctx.args.permit, "permit file")
    if not isinstance(permit, dict):
        raise PermitError(
            f"permit file {ctx.args.permit} is not a permit (expected a JSON object as written by "
            "'ztm start hub --permit' or 'ztm invite')"
        )
    body = {"as": name, "permit": permit, "labels": _flat(ctx.args.label)}
    res = ctx.client().post(f"/api/meshes/{segment(mesh)}", body, timeout=max(ctx.timeout, JOIN_TIMEOUT))
    joined = expect_obj(res, "join")
    if ctx.json:
        ctx.print_json(joined)
        return 0
    hubs = joined.get("hubs")
    via = ", ".join(output.cell(h) for h in hubs) if isinstance(hubs, list) and hubs else "its hub"
    ep_id = output.cell(joined.get("ep_id"))
    ctx.print(f"joined {output.clean(mesh)} as {output.clean(name)} (endpoint {ep_id}) via {via}")
    return 0


def cmd_leave(ctx: Context) -> int:
    mesh: str = ctx.args.mesh_name
    try:
        res = ctx.client().delete(f"/api/meshes/{segment(mesh)}")
    except NotFound:
        raise NotFound(f"this agent has not joined a mesh named {output.clean(mesh)}; see 'ztm get mesh'") from None
    if ctx.json and res is not None:
        ctx.print_json(res)
    ctx.note(f"left mesh {output.clean(mesh)}")
    return 0


# ---- identity / invite / evict ----


def cmd_identity(ctx: Context) -> int:
    res = ctx.get_obj("/api/identity")
    pem = res.get("public_key")
    if not isinstance(pem, str) or "-----BEGIN" not in pem:
        raise UnexpectedAnswer("unexpected answer to GET /api/identity: no public_key PEM; see 'ztm version'")
    if ctx.json:
        ctx.print_json(res)
    else:
        ctx.print(output.clean(pem.strip(), keep_newlines=True))
    return 0


def _read_identity(path: Path) -> str:
    try:
        pem = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(
            f"identity file {path} does not exist (the invitee makes it with 'ztm identity > FILE')"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a text file"
        raise BadInput(f"cannot read identity file {path}: {reason}") from None
    if "PRIVATE KEY" in pem:
        raise BadInput(
            f"{path} holds a PRIVATE key: never share it; ask the invitee for the output of 'ztm identity' instead"
        )
    if "-----BEGIN PUBLIC KEY-----" not in pem:
        raise BadInput(f"{path} is not a PEM public key (the invitee makes one with 'ztm identity > FILE')")
    return pem


def write_secret_file(path: Path, text: str, *, force: bool) -> None:
    """Write `text` to `path` with mode 0600; refuses to replace an existing file unless `force`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    target = path
    if force and path.exists():
        target = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        raise Conflict(f"{path} already exists: pick another file or pass --force to overwrite it") from None
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    if target != path:
        target.replace(path)


def cmd_invite(ctx: Context) -> int:
    user: str = ctx.args.user
    out: Path | None = ctx.args.permit
    if out is not None and out.exists() and not ctx.args.force:
        raise Conflict(f"{out} already exists: pick another file or pass --force to overwrite it")
    body: dict[str, Any] = {"identity": _read_identity(ctx.args.identity)}
    if ctx.args.days is not None:
        body["days"] = ctx.args.days
    res = expect_obj(ctx.client().post(ctx.mesh_path("users", user, "invite"), body), "invite")
    permit = res.get("permit")
    if not isinstance(permit, dict):
        raise UnexpectedAnswer("unexpected answer to invite: no permit object; see 'ztm version'")
    mesh = output.clean(ctx.mesh())
    about = f"a permit for user {output.clean(user)} of mesh {mesh}"
    if out is None:
        ctx.print_json(res if ctx.json else permit)
        ctx.warn(
            f"above is {about}; it holds no private key. The invitee saves it to a file and joins with: "
            f"ztm join {mesh} --as NAME --permit FILE"
        )
        return 0
    write_secret_file(out, output.json_text(permit) + "\n", force=bool(ctx.args.force))
    if ctx.json:
        ctx.print_json(res)
    ctx.note(
        f"wrote {out} (mode 0600): {about}; it holds no private key. Send it to the invitee, who joins with: "
        f"ztm join {mesh} --as NAME --permit {out}"
    )
    return 0


def cmd_evict(ctx: Context) -> int:
    user: str = ctx.args.user
    try:
        res = ctx.client().post(ctx.mesh_path("users", user, "evict"))
    except NotFound:
        raise NotFound(
            f"no user named {output.clean(user)} in mesh {output.clean(ctx.mesh())}; see 'ztm get ep' for users"
        ) from None
    obj = expect_obj(res, "evict")
    if ctx.json:
        ctx.print_json(obj)
        return 0
    count = obj.get("endpoints")
    eps = f"{count} endpoint{'s' if count != 1 else ''}" if isinstance(count, int) else "all endpoints"
    ctx.print(
        f"evicted user {output.clean(user)} from mesh {output.clean(ctx.mesh())}: their certificates are refused "
        f"from now on and their sessions ({eps}) are closed"
    )
    return 0


def cmd_delete(ctx: Context) -> int:
    name: str = ctx.args.name
    try:
        res = ctx.client().delete(ctx.mesh_path("endpoints", name))
    except NotFound:
        raise ctx.endpoint_not_found(name) from None
    ep = expect_obj(res, "delete")
    if ctx.json:
        ctx.print_json(ep)
        return 0
    ctx.print(
        f"deleted endpoint {output.clean(name)} (user {output.cell(ep.get('user'))}) from mesh "
        f"{output.clean(ctx.mesh())}: its name is free and its certificates are refused from now on"
    )
    return 0


# ---- version ----


def cmd_version(ctx: Context) -> int:
    """Never fails: the agent's version is shown only if it answers within 1 s."""
    agent: dict[str, Any] | None = None
    problem: str | None = None
    where = "?"
    try:
        address = ctx.agent()[0]
        where = str(address)
        client = AgentClient(address, min(1.0, ctx.timeout))
        agent = expect_obj(client.get("/api/version"), "GET /api/version")
    except ZtmError as exc:
        problem = exc.message
    if ctx.json:
        ctx.print_json({"cli": __version__, "agent": agent, "agent_error": problem})
        return 0
    ctx.print(f"ztm {__version__} (command line)")
    if agent is not None:
        ctx.print(f"agent {output.cell(agent.get('ztm'))} (API {output.cell(agent.get('api'))}) at {where}")
    else:
        ctx.print(f"agent: unknown ({problem})")
    return 0


def cmd_root_admin(ctx: Context) -> int:
    """`ztm root-admin [on|off]`: may root configure this endpoint's tunnels and proxy from afar (`ztm ep NAME ...`)?"""
    path = ctx.mesh_path("root-admin")
    state: str | None = ctx.args.state
    client = ctx.client()
    value = client.get(path) if state is None else client.post(path, {"enabled": state == "on"})
    obj = expect_obj(value, "root-admin")
    if ctx.json:
        ctx.print_json(obj)
        return 0
    mesh, owner = output.clean(str(obj.get("mesh"))), output.cell(obj.get("owner"))
    if owner == "root":
        ctx.print(f"root owns this endpoint in mesh {mesh}: it configures it from afar whatever this setting says")
    elif obj.get("enabled"):
        ctx.print(
            f"root may configure this endpoint's tunnels and proxy from afar in mesh {mesh} ('ztm ep NAME tunnel|"
            "proxy ...'); 'ztm root-admin off' stops it"
        )
    else:
        ctx.print(
            f"only the owner ({owner}) may configure this endpoint's tunnels and proxy from afar in mesh {mesh}; "
            "'ztm root-admin on' lets root too"
        )
    return 0
