"""`ztm tunnel ...` (the tunnel app on this endpoint) and `ztm ep NAME tunnel ...` (on another endpoint you own).

The same parser tree serves both: `configure_tunnel` builds it under `ztm tunnel`, `configure_ep` under
`ztm ep NAME tunnel`. Locally the commands call the tunnel app's routes (`/api/meshes/MESH/apps/tunnel/...`); on
another endpoint they become relayed calls (`POST /api/meshes/MESH/endpoints/EP/apps/tunnel/call` with
`{"method": "open_inbound"|"open_outbound"|"close"|"list", "params": {...}}`), which that endpoint answers only for
its owner (and root where the owner ran `ztm root-admin on`).

This module stays light (no asyncio, no agent code): names and addresses are checked here with the same rules as
the agent's, so a typo fails at once with exit status 2, and the agent checks everything again.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

from ztm import validate
from ztm.addr import Address
from ztm.apps import paths
from ztm.apps.tunnel.spec import PortTarget
from ztm.cli import output
from ztm.cli import proxy as px
from ztm.cli import routes as rt
from ztm.cli.appcli import add_sub, call_app, examples_epilog, remote_ep, show_parser_help
from ztm.cli.args import (
    GLOBAL_VALUE_OPTIONS,
    Kind,
    UsageError,
    ZtmArgumentParser,
    add_global_options,
    help_children,
    subcommands,
)
from ztm.cli.context import Context, UnexpectedAnswer, expect_list, expect_obj
from ztm.errors import BadInput, NotFound

APP = "tunnel"

_TUNNEL = re.compile(r"(tcp|udp)/[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_EP_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

SIDE_KINDS = {"inbound": ("in", "entrance", "entrances"), "outbound": ("out", "exit", "exits")}
GET_KINDS = {"tunnel": ("tunnels",), **SIDE_KINDS}

CONCEPTS = """\
Forward TCP connections and UDP datagrams between endpoints of the mesh, through the hub.

A tunnel has a name like tcp/web or udp/dns. Its exit (outbound) is on the endpoint that can reach the real
service: it connects to --targets (round-robin over several). Its entrance (inbound) is on the endpoint where
clients are: it listens on local addresses and carries each connection (or each UDP client) to an exit that
offers the same tunnel name (failing over to the next exit when one is down or refuses). Each side is
opened on its own endpoint; an endpoint may be both. --entrances and --users restrict who may use an exit: a
refused connection is closed at once at the entrance and logged at the exit. The configuration is kept by the
agent and survives restarts.

Any member may offer any tunnel name, so an entrance uses only exits of its own user or of root, unless you name
others: --exit-users USER ... (their exits too) or --exits EP ... (exactly these endpoints, in this order).
Endpoint names given to --exits and --entrances are resolved to endpoint ids when the tunnel is opened.

An entrance may also go straight to a port of an endpoint with --target EP:PORT (TCP or UDP): no exit is opened
there; EP must run network mode (--tun) or --expose-ports, and with a mesh policy an ip/tcp:PORT (ip/udp:PORT)
rule must allow you (docs/dns.md, "Names without TUN")."""

COMMANDS = """\
commands:
  open outbound tcp/NAME --targets HOST:PORT [...] [--entrances EP ...] [--users USER ...]
  open inbound tcp/NAME --listen [IP:]PORT [...] [--exits EP ... | --exit-users USER ...]
  open inbound tcp/NAME --listen [IP:]PORT [...] --target EP:PORT   straight to a port of endpoint EP
  get tunnel|inbound|outbound [tcp/NAME]     tunnels of the mesh, or the endpoint's entrances/exits
  describe inbound|outbound tcp/NAME          every field, with connection and byte counters
  close inbound|outbound tcp/NAME             stop listening / stop offering the exit
  help [open|get|describe|close ...]          this text, or one command's options

The same with udp/NAME."""

OVERVIEW = f"{CONCEPTS}\n\n{COMMANDS} 'ztm ep NAME tunnel ...' does the same on another endpoint you own."
REMOTE_OVERVIEW = (
    f"{CONCEPTS}\n\nThese commands act on endpoint NAME: the hub relays them, and NAME obeys only its owner (and\n"
    f"root, if the owner ran 'ztm root-admin on' there).\n\n{COMMANDS}"
)

EXAMPLES = (
    "ztm tunnel open outbound tcp/web --targets 127.0.0.1:8080",
    "ztm tunnel open inbound tcp/web --listen 18080 --exits office",
    "ztm tunnel open inbound tcp/pg --listen 15432 --target db:5432",
    "ztm tunnel open outbound udp/dns --targets 10.0.0.53:53 --users alice bob",
    "ztm tunnel get tunnel",
    "ztm tunnel describe inbound tcp/web",
    "ztm tunnel close inbound tcp/web",
)


# ---- argument types: each raises ArgumentTypeError with a one-line reason, so a bad value exits 2 ----


def tunnel_type(text: str) -> str:
    if not _TUNNEL.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid tunnel {text!r}: expected tcp/NAME or udp/NAME, NAME of 1-63 letters, digits, '.', '_' or '-'"
        )
    return text


tunnel_type.__name__ = "tunnel"


def _split(text: str) -> list[str]:
    if _TUNNEL.fullmatch(text.strip()):  # `--targets HOST:PORT tcp/web`: the list option took the tunnel name
        raise argparse.ArgumentTypeError(f"{text.strip()!r} is a tunnel name: give it before the options")
    return [p.strip() for p in text.split(",") if p.strip()]


def ep_list_type(text: str) -> list[str]:
    """Endpoint names or ids, space- or comma-separated."""
    refs = _split(text)
    if not refs:
        raise argparse.ArgumentTypeError("empty endpoint name")
    for ref in refs:
        if not (validate.NAME.fullmatch(ref) or _EP_ID.fullmatch(ref)):
            raise argparse.ArgumentTypeError(
                f"invalid endpoint {ref!r}: an endpoint name (letters, digits, '.', '_', '-') or id"
            )
    return refs


ep_list_type.__name__ = "endpoint"


def user_list_type(text: str) -> list[str]:
    users = _split(text)
    if not users:
        raise argparse.ArgumentTypeError("empty user name")
    for user in users:
        if not validate.USER.fullmatch(user):
            raise argparse.ArgumentTypeError(f"invalid user {user!r}: 1-63 lowercase letters, digits, '.', '_' or '-'")
    return users


user_list_type.__name__ = "user"


def _addresses_type(default_host: str | None, example: str) -> Callable[[str], list[Address]]:
    def parse(text: str) -> list[Address]:
        parts = _split(text)
        if not parts:
            raise argparse.ArgumentTypeError(f"empty address; give {example}")
        try:
            return [Address.parse(p, default_host=default_host, what="address") for p in parts]
        except BadInput as exc:
            raise argparse.ArgumentTypeError(exc.message.removeprefix("address: ")) from None

    parse.__name__ = "address"
    return parse


listen_type = _addresses_type("127.0.0.1", "[IP:]PORT such as 8080 or 0.0.0.0:8080")


def port_target_type(text: str) -> str:
    """`--target EP:PORT` of an entrance (`ztm.apps.tunnel.spec.PortTarget`)."""
    try:
        return str(PortTarget.parse(text.strip()))
    except BadInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


port_target_type.__name__ = "target"
target_type = _addresses_type(None, "HOST:PORT such as 127.0.0.1:80")


# ---- the parser tree ----


def _tunnel_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("tunnel", metavar="tcp/NAME", type=tunnel_type, help="tunnel name: tcp/NAME or udp/NAME")


def _tree(p: argparse.ArgumentParser, prefix: str, cmd: str) -> None:
    """`open|get|describe|close|help` under `p`; `prefix` is the command line so far (`ztm tunnel`), `cmd` what
    the examples start with."""
    sub = p.add_subparsers(
        dest="target",
        metavar="open|get|describe|close|help",
        required=True,
        prog=prefix,
        parser_class=ZtmArgumentParser,
    )
    opener = add_sub(
        sub,
        "open",
        prefix,
        "open inbound|outbound tcp/NAME [options]",
        "open an entrance (inbound) or an exit (outbound) of a tunnel",
        "Open a side of a tunnel, or change it if it is open already. The exit (outbound) connects to the targets;\n"
        "the entrance (inbound) listens locally and forwards to an exit of the same tunnel name.",
        (f"{cmd} open outbound tcp/web --targets 127.0.0.1:8080", f"{cmd} open inbound tcp/web --listen 18080"),
    )
    sides = opener.add_subparsers(
        dest="side",
        metavar="inbound|outbound",
        required=True,
        prog=f"{prefix} open",
        parser_class=ZtmArgumentParser,
    )
    inbound = add_sub(
        sides,
        "inbound",
        f"{prefix} open",
        "inbound tcp/NAME --listen [IP:]PORT [...] [--exits EP ... | --exit-users USER ... | --target EP:PORT]",
        "listen locally and forward to an exit of the tunnel",
        "Open the entrance of a tunnel: listen on each --listen address (IP defaults to 127.0.0.1) and carry every\n"
        "TCP connection, or every UDP client, to an online exit of the same tunnel name: round-robin over the exits\n"
        "of this endpoint's user and of root (and of --exit-users), or exactly the endpoints of --exits, whoever's\n"
        "they are, in that order (the first that accepts wins). Names in --exits are resolved to endpoint ids now.\n"
        "Without a usable exit, a connection is closed at once. With --target EP:PORT each connection (or UDP\n"
        "client) goes straight to PORT on endpoint EP, which needs no exit (it runs --tun or --expose-ports).",
        (
            f"{cmd} open inbound tcp/web --listen 18080",
            f"{cmd} open inbound tcp/pg --listen 15432 --target db:5432",
            f"{cmd} open inbound tcp/db --listen 127.0.0.1:15432 --exits db-1 db-2",
            f"{cmd} open inbound tcp/web --listen 18080 --exit-users bob",
            f"{cmd} open inbound udp/dns --listen 0.0.0.0:5353",
            f"{cmd} open inbound udp/game --listen 27015 --target host-1:27015",
        ),
    )
    _tunnel_arg(inbound)
    inbound.add_argument(
        "--listen",
        metavar="[IP:]PORT",
        type=listen_type,
        nargs="+",
        action="extend",
        required=True,
        help="local address(es) to listen on (IP default 127.0.0.1)",
    )
    inbound.add_argument(
        "--exits",
        metavar="EP",
        type=ep_list_type,
        nargs="+",
        action="extend",
        default=[],
        help="use only these exits, of any user, in this order (default: exits of your user and root's)",
    )
    inbound.add_argument(
        "--exit-users",
        metavar="USER",
        type=user_list_type,
        nargs="+",
        action="extend",
        default=[],
        help="also use exits of these users (default: only your user's and root's)",
    )
    inbound.add_argument(
        "--target",
        dest="port_target",
        metavar="EP:PORT",
        type=port_target_type,
        help="carry each connection (or UDP client) straight to PORT of endpoint EP (a name or id): no exit needed",
    )
    outbound = add_sub(
        sides,
        "outbound",
        f"{prefix} open",
        "outbound tcp/NAME --targets HOST:PORT [...] [--entrances EP ...] [--users USER ...]",
        "offer an exit of the tunnel that connects to targets",
        "Open the exit of a tunnel: for each connection an entrance forwards, connect to a target (round-robin over\n"
        "several, trying the next when one fails). With --entrances or --users, only those endpoints or users may\n"
        "use it: any other is refused, closed at once on its side and logged here.",
        (
            f"{cmd} open outbound tcp/web --targets 127.0.0.1:8080",
            f"{cmd} open outbound tcp/web --targets 10.0.0.1:80 10.0.0.2:80 --entrances laptop",
            f"{cmd} open outbound udp/dns --targets 10.0.0.53:53 --users alice",
        ),
    )
    _tunnel_arg(outbound)
    outbound.add_argument(
        "--targets",
        metavar="HOST:PORT",
        type=target_type,
        nargs="+",
        action="extend",
        required=True,
        help="where to connect, as seen from this endpoint (round-robin over several)",
    )
    outbound.add_argument(
        "--entrances",
        metavar="EP",
        type=ep_list_type,
        nargs="+",
        action="extend",
        default=[],
        help="accept only these entrance endpoints (default: any)",
    )
    outbound.add_argument(
        "--users",
        metavar="USER",
        type=user_list_type,
        nargs="+",
        action="extend",
        default=[],
        help="accept only entrances of these users (default: any)",
    )

    getter = add_sub(
        sub,
        "get",
        prefix,
        "get tunnel|inbound|outbound [tcp/NAME]",
        "list the mesh's tunnels, or this endpoint's entrances or exits",
        "List the tunnels of the mesh with their entrances and exits (tunnel), or the entrances (inbound) or\n"
        "exits (outbound) open on this endpoint with their counters.",
        (f"{cmd} get tunnel", f"{cmd} get inbound", f"{cmd} get outbound tcp/web -o json"),
    )
    getter.add_argument(
        "kind", metavar="tunnel|inbound|outbound", type=Kind(GET_KINDS), help="what to list (plurals work too)"
    )
    getter.add_argument("tunnel", metavar="tcp/NAME", type=tunnel_type, nargs="?", help="show only this tunnel")

    describer = add_sub(
        sub,
        "describe",
        prefix,
        "describe inbound|outbound tcp/NAME",
        "every field of an entrance or exit, with counters",
        "Show every field of an entrance (inbound) or exit (outbound) on this endpoint: its configuration, whether it\n"
        "listens, and its counters (streams opened, active, refused, bytes each way).",
        (f"{cmd} describe inbound tcp/web", f"{cmd} describe outbound tcp/web -o json"),
    )
    describer.add_argument("kind", metavar="inbound|outbound", type=Kind(SIDE_KINDS), help="which side")
    _tunnel_arg(describer)

    closer = add_sub(
        sub,
        "close",
        prefix,
        "close inbound|outbound tcp/NAME",
        "close an entrance or exit",
        "Close an entrance (stop listening; open connections keep going) or an exit (refuse new connections) and\n"
        "forget its configuration.",
        (f"{cmd} close inbound tcp/web", f"{cmd} close outbound udp/dns"),
    )
    closer.add_argument("kind", metavar="inbound|outbound", type=Kind(SIDE_KINDS), help="which side")
    _tunnel_arg(closer)

    helper = add_sub(
        sub,
        "help",
        prefix,
        "help [COMMAND ...]",
        "what tunnels are, and the commands",
        "Explain tunnels and list the commands, or show one command's options and examples.",
        (f"{cmd} help", f"{cmd} help open outbound"),
    )
    helper.add_argument("topic", nargs="*", metavar="COMMAND", help="command (and subcommand) to explain")


def configure_tunnel(p: argparse.ArgumentParser) -> None:
    _tree(p, "ztm tunnel", "ztm tunnel")


EP_EXAMPLES = (
    "ztm ep office tunnel open outbound tcp/web --targets 127.0.0.1:8080",
    "ztm ep office tunnel get outbound",
    "ztm ep office tunnel close outbound tcp/web",
)


def configure_ep(p: argparse.ArgumentParser) -> None:
    """`ztm ep NAME APP ...`: NAME and APP are read here, the rest by APP's own parser tree (which is therefore not
    an argparse subcommand of `ep`: `ztm ep tunnel --help` would read `tunnel` as NAME)."""
    assert isinstance(p, ZtmArgumentParser)
    p.add_argument(
        "ep_name",
        metavar="NAME",
        help="endpoint name or id (one of yours; root: one whose owner ran 'ztm root-admin on')",
    )
    p.add_argument(
        "app", metavar="tunnel|proxy|route", type=Kind({APP: (), px.APP: (), rt.APP: ()}),
        help="the app to configure there, or its subnet routes",
    )  # fmt: skip
    p.add_argument("words", metavar="...", nargs="*", help="the app's command: see 'ztm help ep tunnel'")
    tree = ZtmArgumentParser(
        prog="ztm ep NAME tunnel",
        usage="ztm ep NAME tunnel open|get|describe|close|help ... [global options]",
        description=REMOTE_OVERVIEW,
        epilog=examples_epilog(EP_EXAMPLES),
    )
    tree.topic = "ep tunnel"
    _tree(tree, "ztm ep NAME tunnel", "ztm ep office tunnel")
    _add_globals(tree)
    proxy = ZtmArgumentParser(
        prog="ztm ep NAME proxy",
        usage="ztm ep NAME proxy config|rules|get|help ... [global options]",
        description=f"{px.OVERVIEW}\n\nThese commands act on endpoint NAME: it obeys only its owner (and root,\n"
        "if the owner ran 'ztm root-admin on' there).",
    )
    proxy.topic = "ep proxy"
    px.proxy_tree(proxy, "ztm ep NAME proxy", "ztm ep office proxy")
    _add_globals(proxy)
    route = ZtmArgumentParser(
        prog="ztm ep NAME route",
        usage="ztm ep NAME route advertise|withdraw|help ... [global options]",
        description=f"{rt.OVERVIEW}\n\nThese commands act on endpoint NAME: only its owner and root may.",
        epilog=examples_epilog(rt.EP_EXAMPLES),
    )
    route.topic = "ep route"
    rt.ep_route_tree(route, "ztm ep NAME route")
    _add_globals(route)
    p.nested = {APP: tree, px.APP: proxy, rt.APP: route}
    p.nested_dest = "app"
    p.nested_after = 1
    p.takeover = _parse_ep


def _add_globals(parser: argparse.ArgumentParser) -> None:
    add_global_options(parser)
    for child in {id(c): c for c in subcommands(parser).values()}.values():
        _add_globals(child)


def _parse_ep(parser: ZtmArgumentParser, args: list[str], namespace: Any) -> tuple[Any, list[str]]:
    """NAME and APP are the first two words that are not options (nor values of global options); everything
    else goes, in order, to APP's parser tree."""
    found: list[int] = []
    i = 0
    while i < len(args) and len(found) < 2:
        word = args[i]
        if word in ("-h", "--help"):
            parser.print_help()
            parser.exit()
        if word in GLOBAL_VALUE_OPTIONS:
            i += 2
            continue
        if not word.startswith("-"):
            found.append(i)
        i += 1
    if len(found) < 2:
        parser.error("the following arguments are required: " + ("NAME, tunnel" if not found else "tunnel"))
    name, app = args[found[0]], args[found[1]]
    nested = parser.nested.get(app.lower())
    if nested is None:
        parser.error(f"argument tunnel: unknown app {app!r}: expected {', '.join(parser.nested)}")
    ns = namespace if namespace is not None else argparse.Namespace()
    for key, value in parser._defaults.items():
        setattr(ns, key, value)
    ns.ep_name, ns.app = name, app.lower()
    return nested.parse_known_args([w for j, w in enumerate(args) if j not in found], ns)


# ---- the handler ----


def _help(ctx: Context) -> int:
    return show_parser_help(ctx, _tunnel_parser(ctx))


def _tunnel_parser(ctx: Context) -> argparse.ArgumentParser:
    commands = subcommands(ctx.parser)
    if remote_ep(ctx) is not None:
        return help_children(commands["ep"])[APP]
    return commands["tunnel"]


def cmd_tunnel(ctx: Context) -> int:
    if getattr(ctx.args, "app", None) == px.APP:  # `ztm ep NAME proxy ...`
        return px.cmd_proxy(ctx)
    if getattr(ctx.args, "app", None) == rt.APP:  # `ztm ep NAME route ...`
        return rt.cmd_ep_route(ctx, help_children(subcommands(ctx.parser)["ep"])[rt.APP])
    action: str = ctx.args.target
    if action == "help":
        return _help(ctx)
    if action == "open":
        return _open(ctx)
    if action == "get":
        return _get(ctx)
    if action == "describe":
        return _describe(ctx)
    return _close(ctx)


def _flat(values: list[list[Any]]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        out.extend(value)
    return list(dict.fromkeys(out))


def _open(ctx: Context) -> int:
    side: str = ctx.args.side
    body: dict[str, Any] = {"tunnel": ctx.args.tunnel}
    if side == "inbound":
        body["listen"] = [str(a) for a in _flat(ctx.args.listen)]
        body["exits"] = _flat(ctx.args.exits)
        exit_users = _flat(ctx.args.exit_users)
        if exit_users:
            body["exit_users"] = exit_users
        if body["exits"] and exit_users:
            raise UsageError(
                "ztm tunnel open inbound: give --exits (exactly these endpoints) or --exit-users, not both"
            )
        if ctx.args.port_target is not None:
            if body["exits"] or exit_users:
                raise UsageError("ztm tunnel open inbound: --target EP:PORT needs no exit; drop --exits/--exit-users")
            body["target"] = ctx.args.port_target
    else:
        body["targets"] = [str(a) for a in _flat(ctx.args.targets)]
        body["entrances"] = _flat(ctx.args.entrances)
        body["users"] = _flat(ctx.args.users)
    remote = remote_ep(ctx)
    if remote is None:
        inbound = side == "inbound"
        path = ctx.mesh_path("apps", "tunnel", "inbound") if inbound else ctx.mesh_path("apps", "tunnel", "outbound")
        res: Any = ctx.client().post(path, body)
    else:
        res = call_app(ctx, APP, remote, f"open_{side}", body)
    view = expect_obj(res, f"open {side}")
    if ctx.json:
        ctx.print_json(view)
        return 0
    where = f" on {output.clean(remote)}" if remote else ""
    name = output.cell(view.get("tunnel"))
    if side == "inbound":
        listen = output.cell(view.get("listen"))
        ctx.print(f"inbound {name}{where}: listening on {listen}, forwarding to {_exit_choice(view)}")
    else:
        targets = output.cell(view.get("targets"))
        who = _any(_named(view, "entrances"), "any entrance")
        users = _any(view.get("users"), "any user")
        ctx.print(f"outbound {name}{where}: connecting to {targets} for {who} of {users}")
    return 0


def _exit_choice(view: dict[str, Any]) -> str:
    """Which exits an entrance uses, in words."""
    target = view.get("target")
    if isinstance(target, str):
        ep, _, port = target.rpartition(":")
        names = view.get("names")
        name = names.get(ep) if isinstance(names, dict) else None
        shown = f"{output.cell(name)} ({output.cell(ep)})" if isinstance(name, str) else output.cell(ep)
        return f"port {output.cell(port)} of {shown}"
    exits = _named(view, "exits")
    if exits:
        return ", ".join(exits)
    users = view.get("exit_users")
    extra = [output.cell(u) for u in users] if isinstance(users, list) else []
    return "exits of " + " or ".join(dict.fromkeys(["your user", "root", *extra]))


def _named(view: dict[str, Any], key: str) -> list[str]:
    """The endpoint references under `key`, each as `name (id)` when the view's `names` knows it."""
    refs = view.get(key)
    names = view.get("names")
    known = names if isinstance(names, dict) else {}
    if not isinstance(refs, list):
        return []
    shown = []
    for ref in refs:
        name = known.get(ref)
        shown.append(f"{output.cell(name)} ({output.cell(ref)})" if isinstance(name, str) else output.cell(ref))
    return shown


def _any(value: object, default: str) -> str:
    return ", ".join(output.cell(v) for v in value) if isinstance(value, list) and value else default


def _local_list(ctx: Context) -> dict[str, Any]:
    remote = remote_ep(ctx)
    if remote is None:
        res = ctx.client().get(ctx.mesh_path("apps", "tunnel"))
    else:
        res = call_app(ctx, APP, remote, "list", {})
    found = expect_obj(res, "the tunnel list")
    for side in ("inbound", "outbound"):
        expect_list(found.get(side), f"the tunnel list ({side})")
    return found


def _get(ctx: Context) -> int:
    kind: str = ctx.args.kind
    only: str | None = ctx.args.tunnel
    if kind == "tunnel":
        tunnels = ctx.get_list(ctx.mesh_path("apps", "tunnel", "tunnels"))
        if only:
            tunnels = [t for t in tunnels if t.get("tunnel") == only]
        rows = [[output.cell(t.get("tunnel")), _peers(t.get("inbound")), _peers(t.get("outbound"))] for t in tunnels]
        empty = f"no tunnels in mesh {output.clean(ctx.mesh())}: open one with 'ztm tunnel open outbound ...'"
        _show(ctx, tunnels, ("TUNNEL", "ENTRANCES (INBOUND)", "EXITS (OUTBOUND)"), rows, empty)
        return 0
    items = _local_list(ctx)[kind]
    if only:
        items = [i for i in items if i.get("tunnel") == only]
    where = output.clean(remote_ep(ctx) or "this endpoint")
    if kind == "inbound":
        headers: tuple[str, ...] = ("TUNNEL", "LISTEN", "EXITS", "STATE")
        rows = [
            [
                output.cell(i.get("tunnel")),
                output.cell(i.get("listen")),
                _any(_named(i, "exits"), "") or _exit_choice(i),
                "listening" if i.get("listening") is True else "not listening",
                *_counters(i),
            ]
            for i in items
        ]
    else:
        headers = ("TUNNEL", "TARGETS", "ENTRANCES", "USERS")
        rows = [
            [
                output.cell(i.get("tunnel")),
                output.cell(i.get("targets")),
                _any(_named(i, "entrances"), "any"),
                _any(i.get("users"), "any"),
                *_counters(i),
            ]
            for i in items
        ]
    headers += ("STREAMS", "ACTIVE", "REFUSED", "PATHS", "SENT", "RECEIVED")
    empty = f"no {kind} tunnels on {where}" + (f" named {only}" if only else "")
    _show(ctx, items, headers, rows, empty)
    return 0


def _counters(item: dict[str, Any]) -> list[str]:
    return [
        output.cell(item.get("streams")),
        output.cell(item.get("active")),
        output.cell(item.get("refused")),
        output.clean(paths.shown(item.get("paths"))),
        output.human_bytes(item.get("bytes_sent")),
        output.human_bytes(item.get("bytes_received")),
    ]


def _peers(value: object) -> str:
    if not isinstance(value, list) or not value:
        return output.MISSING
    shown = []
    for peer in value:
        if isinstance(peer, dict):
            name = output.cell(peer.get("name") or peer.get("ep"))
            shown.append(name if peer.get("online") is True else f"{name} (offline)")
    return ", ".join(shown) or output.MISSING


def _show(ctx: Context, value: object, headers: tuple[str, ...], rows: list[list[str]], empty: str) -> None:
    if ctx.json:
        ctx.print_json(value)
    elif rows:
        ctx.print(output.table(headers, rows))
    else:
        ctx.print(empty)


FIELDS = (
    "tunnel",
    "kind",
    "listen",
    "exits",
    "exit_users",
    "exit_endpoints",
    "targets",
    "entrances",
    "users",
    "listening",
    "streams",
    "active",
    "refused",
    "direct",
    "direct_fallbacks",
    "e2e",
    "paths",
    "encryption",
    "bytes_sent",
    "bytes_received",
    "credit_wait_ms",
    "waiting_for_credit",
)


def _describe(ctx: Context) -> int:
    kind: str = ctx.args.kind
    name: str = ctx.args.tunnel
    remote = remote_ep(ctx)
    if remote is None:
        proto, _, short = name.partition("/")
        view = ctx.get_obj(ctx.mesh_path("apps", "tunnel", kind, proto, short))
    else:
        found = [i for i in _local_list(ctx)[kind] if i.get("tunnel") == name]
        if not found:
            raise NotFound(
                f"no {kind} {name} on {output.clean(remote)}; see 'ztm ep {output.clean(remote)} tunnel get {kind}'"
            )
        view = found[0]
    if ctx.json:
        ctx.print_json(view)
        return 0
    keys = [k for k in FIELDS if k in view] + sorted(k for k in view if k not in FIELDS and k != "names")
    ctx.print(output.key_values((k, _value(k, view[k], view)) for k in keys))
    return 0


def _value(key: str, value: object, view: dict[str, Any]) -> str:
    if key.startswith("bytes_") and isinstance(value, int) and not isinstance(value, bool):
        return f"{output.human_bytes(value)} ({value} bytes)"
    if key == "exits" and value == []:
        return _exit_choice(view)
    if key in ("exits", "entrances") and isinstance(value, list):
        return ", ".join(_named(view, key))
    if key == "paths":
        return output.clean(paths.shown(value))
    if key == "exit_endpoints":
        if value is None:
            return "unknown (the hub cannot be asked)"
        if isinstance(value, list):
            shown = [f"{output.cell(e.get('name'))} ({output.cell(e.get('ep'))}, user {output.cell(e.get('user'))})"
                     for e in value if isinstance(e, dict)]  # fmt: skip
            if shown:
                return ", ".join(shown)
            if view.get("exits"):
                return "none of them online"
            return "none online of the users it uses (another user's exits need --exit-users or --exits)"
    if key in ("entrances", "users", "exit_users") and value == []:
        return "any" if key != "exit_users" else "none"
    if isinstance(value, list):
        return ", ".join(output.cell(v) for v in value) or output.MISSING
    return output.cell(value)


def _close(ctx: Context) -> int:
    kind: str = ctx.args.kind
    name: str = ctx.args.tunnel
    remote = remote_ep(ctx)
    if remote is None:
        proto, _, short = name.partition("/")
        ctx.client().delete(ctx.mesh_path("apps", "tunnel", kind, proto, short))
    else:
        res = call_app(ctx, APP, remote, "close", {"kind": kind, "tunnel": name})
        if not isinstance(res, dict):
            raise UnexpectedAnswer("unexpected answer to close: expected a JSON object; see 'ztm version'")
    where = f" on {output.clean(remote)}" if remote else ""
    if ctx.json:
        ctx.print_json({"closed": True, "kind": kind, "tunnel": name})
    else:
        ctx.print(f"closed {kind} {name}{where}")
    return 0
