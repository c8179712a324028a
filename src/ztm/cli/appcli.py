"""What the CLI modules of the apps (`tunnel`, `proxy`, `terminal`, `cloud`, `files`, `apps`) share: their
sub-command parsers' shape, their `help` command, and the relayed call that configures an app on another endpoint
(`ztm ep NAME APP ...`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ztm.cli import output
from ztm.cli.args import UsageError, ZtmArgumentParser, subcommands
from ztm.cli.context import Context
from ztm.errors import NotFound

RELAY_EXTRA = 3.0
"""Seconds a relayed call may take beyond the CLI's own timeout: the hub and the other endpoint answer it."""


def examples_epilog(examples: Sequence[str]) -> str:
    return "examples:\n" + "\n".join(f"  {e}" for e in examples)


def help_topic(prog: str) -> str:
    """`ztm ep NAME tunnel open` -> `ep tunnel open`: what `ztm help` takes."""
    return prog.removeprefix("ztm ").replace("ep NAME ", "ep ")


def add_sub(
    sub: argparse._SubParsersAction[ZtmArgumentParser],
    name: str,
    prefix: str,
    synopsis: str,
    summary: str,
    description: str,
    examples: Sequence[str],
) -> ZtmArgumentParser:
    """One sub-command (`PREFIX NAME`) with the usage line, help and examples every app command shows."""
    parser = sub.add_parser(
        name,
        prog=f"{prefix} {name}",
        usage=f"{prefix} {synopsis} [global options]",
        help=summary,
        description=description,
        epilog=examples_epilog(examples),
    )
    parser.topic = help_topic(f"{prefix} {name}")
    return parser


def add_help(
    sub: argparse._SubParsersAction[ZtmArgumentParser], prefix: str, summary: str, what: str
) -> ZtmArgumentParser:
    """The `help [COMMAND ...]` sub-command of the app CLI `prefix` (`ztm cloud`); `what` completes "Explain ...".
    Its handler is `show_help`."""
    helper = add_sub(
        sub,
        "help",
        prefix,
        "help [COMMAND ...]",
        summary,
        f"Explain {what} and list the commands, or show one command's options and examples.",
        (f"{prefix} help", f"{prefix} help {next(iter(sub.choices))}"),
    )
    helper.add_argument("topic", nargs="*", metavar="COMMAND", help="command (and subcommand) to explain")
    return helper


def show_help(ctx: Context, app: str) -> int:
    """`ztm APP help [COMMAND ...]`: the help of the app's parser, or of one of its commands."""
    return show_parser_help(ctx, subcommands(ctx.parser)[app])


def show_parser_help(ctx: Context, parser: argparse.ArgumentParser) -> int:
    """The help of `parser` (an app's, or `ztm ep NAME APP`'s), or of the command `ctx.args.topic` names in it."""
    for word in ctx.args.topic:
        children = subcommands(parser)
        if word not in children:
            where = help_topic(parser.prog)
            raise UsageError(f"ztm: '{where}' has no subcommand '{output.clean(word)}'; run 'ztm help {where}'")
        parser = children[word]
    ctx.print(parser.format_help().rstrip("\n"))
    return 0


def remote_ep(ctx: Context) -> str | None:
    """The endpoint of `ztm ep NAME APP ...`, or None when the command acts on the local endpoint."""
    name = getattr(ctx.args, "ep_name", None)
    return name if isinstance(name, str) else None


def call_app(ctx: Context, app: str, ep: str, method: str, params: dict[str, Any]) -> Any:
    """Call `method` of `app` on endpoint `ep` through the hub (the endpoint's owner may; root only where the owner
    ran `ztm root-admin on`)."""
    path = ctx.mesh_path("endpoints", ep, "apps", app, "call")
    try:
        return ctx.client().post(path, {"method": method, "params": params}, timeout=ctx.timeout + RELAY_EXTRA)
    except NotFound as exc:
        if "no endpoint" in exc.message or "no mesh" in exc.message:
            raise ctx.endpoint_not_found(ep) from None
        raise
