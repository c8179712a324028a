"""`ztm start|stop app NAME`, `ztm publish|unpublish|download|uninstall app NAME`, `ztm get app --available` (also
spelled `ztm apps ...`, see `ztm.cli.verbs`), and `ztm APP ARGS...` for an installed third-party app (its `MeshApp.cli`
hook, reached through the agent's local API; a built-in command of the same name wins)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ztm.cli import output
from ztm.cli.args import UsageError, ZtmArgumentParser, add_global_options
from ztm.cli.client import segment
from ztm.cli.context import Command, Context, expect_obj
from ztm.errors import ZtmError
from ztm.validate import APP_NAME

DOWNLOAD_TIMEOUT = 150.0
SHA256_HEX = "0123456789abcdef"


def _name(ctx: Context) -> str:
    name = getattr(ctx.args, "name", None)
    if not name:
        raise UsageError(f"ztm {ctx.args.command} app: the app's NAME is required; see 'ztm get app'")
    return str(name)


def _line(view: dict[str, Any]) -> str:
    return (
        f"app {output.cell(view.get('name'))} {output.cell(view.get('state'))} in mesh {output.cell(view.get('mesh'))}"
    )


# ---- start and stop (targets of `ztm start` / `ztm stop`) ----


def add_start_target(p: argparse.ArgumentParser) -> None:
    """`ztm start app NAME`, next to `ztm start hub|agent`."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.metavar = "hub|agent|app"
            app = action.add_parser(
                "app",
                help="start an installed app in a mesh",
                usage="ztm start app NAME [--mesh MESH]",
                description="Start an installed app in the mesh (--mesh, or the agent's only mesh). It keeps running "
                "across agent restarts until 'ztm stop app NAME'.",
                epilog="examples:\n  ztm start app chat\n  ztm start app tunnel --mesh office",
            )
            configure_name(app)


def configure_name(p: argparse.ArgumentParser) -> None:
    """NAME of `ztm start|stop app NAME` and `ztm apps start|stop NAME`."""
    p.add_argument("name", metavar="NAME", help="an installed app (see 'ztm get app')")


def cmd_start_app(ctx: Context) -> int:
    view = expect_obj(ctx.client().post(ctx.mesh_path("apps", _name(ctx), "start")), "start app")
    ctx.print_json(view) if ctx.json else ctx.print(_line(view))
    return 0


def cmd_stop_app(ctx: Context) -> int:
    view = expect_obj(ctx.client().post(ctx.mesh_path("apps", _name(ctx), "stop")), "stop app")
    ctx.print_json(view) if ctx.json else ctx.print(_line(view))
    return 0


# ---- publish and download ----


def configure_publish_app(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="an installed directory app (DATA/apps/NAME)")


def cmd_publish_app(ctx: Context) -> int:
    entry = expect_obj(ctx.client().post(ctx.mesh_path("apps", _name(ctx), "publish")), "publish app")
    if ctx.json:
        ctx.print_json(entry)
    else:
        ctx.print(
            f"published app {output.cell(entry.get('name'))} {output.cell(entry.get('version'))} to mesh "
            f"{output.clean(ctx.mesh())}: {output.human_bytes(entry.get('size'))}, "
            f"sha256 {output.cell(entry.get('sha256'))}"
        )
    return 0


def _sha256(text: str) -> str:
    value = text.strip().lower()
    if len(value) != 64 or any(c not in SHA256_HEX for c in value):
        raise argparse.ArgumentTypeError(f"expected 64 hex digits (a SHA-256), got {text!r}")
    return value


_sha256.__name__ = "sha256"


def configure_download_app(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="app to download (see 'ztm get app --available')")
    p.add_argument("--from", dest="source", metavar="EP", help="download from this endpoint (name or id)")
    p.add_argument("--sha256", metavar="HEX", type=_sha256, help="install only a package with this SHA-256")


def cmd_download_app(ctx: Context) -> int:
    body = {k: v for k, v in (("from", ctx.args.source), ("sha256", ctx.args.sha256)) if v is not None}
    path = ctx.mesh_path("apps", _name(ctx), "download")
    got = expect_obj(ctx.client().post(path, body, timeout=max(ctx.timeout, DOWNLOAD_TIMEOUT)), "download app")
    if ctx.json:
        ctx.print_json(got)
    else:
        ctx.print(
            f"installed app {output.cell(got.get('name'))} {output.cell(got.get('version'))} from "
            f"{output.cell(got.get('from'))} (sha256 {output.cell(got.get('sha256'))} verified); start it with "
            f"'ztm start app {output.cell(got.get('name'))}'"
        )
    return 0


def _app_name(text: str) -> str:
    if not APP_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid app name {output.clean(text)[:40]!r}: a lowercase letter, then up to 31 lowercase letters, "
            "digits or '-'"
        )
    return text


_app_name.__name__ = "app name"


def configure_unpublish_app(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", type=_app_name, help="an app this endpoint publishes (see 'ztm get app')")


def cmd_unpublish_app(ctx: Context) -> int:
    entry = expect_obj(ctx.client().post(ctx.mesh_path("apps", _name(ctx), "unpublish")), "unpublish app")
    if ctx.json:
        ctx.print_json(entry)
        return 0
    later = "" if entry.get("announced", True) else "; the hub is told when this endpoint is back online"
    ctx.print(
        f"withdrew app {output.cell(entry.get('name'))} {output.cell(entry.get('version'))} from mesh "
        f"{output.cell(entry.get('mesh'))}: no longer offered by this endpoint; endpoints that installed it keep "
        f"their copy{later}"
    )
    return 0


def configure_uninstall_app(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", type=_app_name, help="an installed directory app (see 'ztm get app')")


def cmd_uninstall_app(ctx: Context) -> int:
    path = "/".join(["/api/apps", segment(_name(ctx)), "uninstall"])
    got = expect_obj(ctx.client().post(path), "uninstall app")
    if ctx.json:
        ctx.print_json(got)
        return 0
    stopped = [output.cell(m) for m in got.get("stopped") or []]
    withdrawn = [output.cell(m) for m in got.get("withdrawn") or []]
    text = f"uninstalled app {output.cell(got.get('name'))} {output.cell(got.get('version'))}"
    if stopped:
        text += f"; stopped it in mesh {', '.join(stopped)}"
    if withdrawn:
        text += (
            f"; this endpoint published it: withdrew it from mesh {', '.join(withdrawn)} (endpoints that installed "
            "it keep their copy)"
        )
    ctx.print(text)
    return 0


# ---- get app --available ----


def get_available(ctx: Context, name: str | None) -> None:
    rows = ctx.get_list(ctx.mesh_path("app-packages"))
    if name:
        rows = [r for r in rows if r.get("name") == name]
    if ctx.json:
        ctx.print_json(rows)
        return
    table = [
        [
            output.cell(r.get("name")),
            output.cell(r.get("version")),
            output.cell(str(r.get("sha256", ""))[:16]),
            ", ".join(
                f"{output.cell(s.get('name'))} ({output.cell(s.get('user'))})" + ("" if s.get("online") else " offline")
                for s in r.get("sources", [])
                if isinstance(s, dict)
            ),
        ]
        for r in rows
    ]
    if table:
        ctx.print(output.table(("NAME", "VERSION", "SHA256", "PUBLISHED BY"), table))
    else:
        ctx.print(f"no apps are published in mesh {output.clean(ctx.mesh())}")


# ---- ztm APP ARGS... ----


def app_command(before: Sequence[str], name: str, argv: Sequence[str], commands: Sequence[Command]) -> int:
    """`ztm [global options] NAME ARGS...` where NAME is no ztm command: run it as an installed app's command line,
    or fail as an unknown command (also when no agent answers to say which apps are installed)."""
    unknown = UsageError(f"ztm: unknown command '{output.clean(name)}'; run 'ztm help' to see the commands")
    if not APP_NAME.fullmatch(name):
        raise unknown
    parser = ZtmArgumentParser(prog="ztm", add_help=False)
    add_global_options(parser)
    try:
        namespace, extras = parser.parse_known_args(list(before))
    except UsageError:
        raise unknown from None
    if extras:
        raise unknown
    ctx = Context(namespace, parser, commands)
    try:
        installed = {a.get("name") for a in ctx.get_list(ctx.mesh_path("apps"))}
    except ZtmError:
        raise unknown from None
    if name not in installed:
        raise unknown
    answer = expect_obj(ctx.client().post(ctx.mesh_path("apps", name, "cli"), {"argv": list(argv)}), f"{name} cli")
    if ctx.json:
        ctx.print_json(answer)
    else:
        text = answer.get("output")
        if isinstance(text, str) and text:
            ctx.print(output.clean(text.rstrip("\n"), keep_newlines=True))
    return 0
