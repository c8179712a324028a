"""Subnet routes on the command line (issue 17): `ztm ep NAME route advertise|withdraw CIDR...` (the endpoint's owner
or root), `ztm get route` (every route of the mesh, approved or pending) and `ztm route approve|unapprove EP CIDR...`
(root only). The hub checks every CIDR and who may; these commands only shape the requests and print the results.
"""

from __future__ import annotations

import argparse
from typing import Any

from ztm.cli import output
from ztm.cli.appcli import add_help, add_sub, show_parser_help
from ztm.cli.args import ZtmArgumentParser
from ztm.cli.context import Context, expect_obj
from ztm.errors import NotFound

APP = "route"
OVERVIEW = (
    "Subnet routes: an endpoint advertises networks it can reach (a LAN behind it); root approves them; then\n"
    "endpoints in network mode with --accept-routes reach those networks through it (docs/mesh-addresses.md)."
)
EXAMPLES = (
    "ztm ep office route advertise 10.20.0.0/16",
    "ztm get route",
    "ztm route approve office 10.20.0.0/16",
    "ztm route unapprove office 10.20.0.0/16",
    "ztm ep office route withdraw 10.20.0.0/16",
)
EP_EXAMPLES = (
    "ztm ep office route advertise 10.20.0.0/16 192.168.5.0/24",
    "ztm ep office route withdraw 192.168.5.0/24",
)


def _cidrs(p: argparse.ArgumentParser) -> None:
    p.add_argument("cidrs", metavar="CIDR", nargs="+", help="networks, e.g. 10.20.0.0/16 (up to 64 per endpoint)")


# ---- ztm ep NAME route advertise|withdraw CIDR... ----


def ep_route_tree(p: ZtmArgumentParser, prefix: str) -> None:
    """`advertise|withdraw|help` under `ztm ep NAME route`."""
    sub = p.add_subparsers(
        dest="route_action", metavar="advertise|withdraw|help", required=True, prog=prefix,
        parser_class=ZtmArgumentParser,
    )  # fmt: skip
    advertise = add_sub(
        sub,
        "advertise",
        prefix,
        "advertise CIDR...",
        "advertise networks this endpoint routes to (pending until root approves)",
        "Advertise networks endpoint NAME can reach, for the other endpoints to route through it. Each is a\n"
        "network address with its prefix (10.20.0.0/16, not 10.20.0.5/16), outside the mesh's ranges, not\n"
        "loopback, link-local, multicast nor a default route (exit nodes are a later issue). They stay pending\n"
        "until root approves them ('ztm route approve'). Only NAME's owner and root may.",
        EP_EXAMPLES[:1],
    )
    _cidrs(advertise)
    withdraw = add_sub(
        sub,
        "withdraw",
        prefix,
        "withdraw CIDR...",
        "stop advertising networks (an approved one is removed too)",
        "Withdraw networks endpoint NAME advertised; approved ones are removed as well (advertising one again\n"
        "needs root's approval again).",
        EP_EXAMPLES[1:],
    )
    _cidrs(withdraw)
    add_help(sub, prefix, "explain subnet routes and their commands", "subnet routes")


def cmd_ep_route(ctx: Context, parser: argparse.ArgumentParser) -> int:
    """`ztm ep NAME route ...`; `parser` is that tree (for `help`)."""
    action: str = ctx.args.route_action
    if action == "help":
        return show_parser_help(ctx, parser)
    name: str = ctx.args.ep_name
    cidrs: list[str] = list(dict.fromkeys(ctx.args.cidrs))
    try:
        res = ctx.client().post(ctx.mesh_path("endpoints", name, "routes"), {action: cidrs})
    except NotFound as exc:
        if "no endpoint" in exc.message:
            raise ctx.endpoint_not_found(name) from None
        raise
    ep = expect_obj(res, "routes")
    if ctx.json:
        ctx.print_json(ep)
        return 0
    shown = output.clean(str(ep.get("name") or name))
    done = "advertised" if action == "advertise" else "withdrew"
    ctx.print(f"{shown}: {done} {', '.join(output.clean(c) for c in cidrs)}")
    ctx.print(_summary(ep))
    return 0


def _summary(ep: dict[str, Any]) -> str:
    approved, pending = ep.get("routes"), ep.get("routes_pending")
    approved = approved if isinstance(approved, list) else []
    pending = pending if isinstance(pending, list) else []
    return output.key_values(
        [
            ("routes", ", ".join(output.cell(c) for c in approved) or output.MISSING),
            ("pending", ", ".join(output.cell(c) for c in pending) or output.MISSING),
        ]
    )


# ---- ztm get route ----


def get_routes(ctx: Context, name: str | None) -> None:
    """`ztm get route [EP]`: the mesh's routes (of endpoint EP only, by name or id)."""
    routes = ctx.get_list(ctx.mesh_path("routes"))
    if name:
        routes = [r for r in routes if name in (r.get("name"), r.get("ep"))]
    rows = [
        [
            output.cell(r.get("name")),
            output.cell(r.get("cidr")),
            "approved" if r.get("approved") is True else "pending",
            output.cell(r.get("approved_by")),
            output.ago(r.get("advertised_at")),
        ]
        for r in routes
    ]
    if ctx.json:
        ctx.print_json(routes)
    elif rows:
        ctx.print(output.table(("EP", "CIDR", "STATE", "APPROVED BY", "ADVERTISED"), rows))
    else:
        where = f"endpoint {output.clean(name)}" if name else f"mesh {output.clean(ctx.mesh())}"
        ctx.print(f"no routes advertised in {where}: advertise one with 'ztm ep NAME route advertise CIDR'")


# ---- ztm route approve|unapprove EP CIDR... ----


def configure_route(p: argparse.ArgumentParser) -> None:
    assert isinstance(p, ZtmArgumentParser)
    sub = p.add_subparsers(
        dest="route_action", metavar="approve|unapprove|help", required=True, prog="ztm route",
        parser_class=ZtmArgumentParser,
    )  # fmt: skip
    for action, summary, text in (
        ("approve", "approve routes an endpoint advertises (root only)",
         "Approve networks endpoint EP advertises: endpoints with --accept-routes then route them through EP.\n"
         "Only EP's routes change, even when another endpoint advertises the same network."),
        ("unapprove", "take back the approval of routes (root only)",
         "Take back root's approval of networks EP advertises: they are pending again (EP still advertises them)."),
    ):  # fmt: skip
        q = add_sub(sub, action, "ztm route", f"{action} EP CIDR...", summary, text, (f"ztm route {action} office "
                    "10.20.0.0/16",))  # fmt: skip
        q.add_argument("ep", metavar="EP", help="the endpoint (name or id) that advertises them")
        _cidrs(q)
    add_help(sub, "ztm route", "explain subnet routes and their commands", "subnet routes")


def cmd_route(ctx: Context) -> int:
    action: str = ctx.args.route_action
    if action == "help":
        from ztm.cli.args import subcommands

        return show_parser_help(ctx, subcommands(ctx.parser)["route"])
    ep: str = ctx.args.ep
    cidrs: list[str] = list(dict.fromkeys(ctx.args.cidrs))
    body = {"ep": ep, "cidrs": cidrs, "approved": action == "approve"}
    try:
        res = ctx.client().post(ctx.mesh_path("routes", "approve"), body)
    except NotFound as exc:
        if "no endpoint" in exc.message:
            raise ctx.endpoint_not_found(ep) from None
        raise
    view = expect_obj(res, "routes")
    if ctx.json:
        ctx.print_json(view)
        return 0
    done = "approved" if action == "approve" else "unapproved"
    ctx.print(f"{output.clean(str(view.get('name') or ep))}: {done} {', '.join(output.clean(c) for c in cidrs)}")
    ctx.print(_summary(view))
    return 0
