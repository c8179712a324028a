"""Commands whose first word is a kind of object: `ztm publish file PATH ...`, `ztm download app NAME ...`.

Each verb (`publish`, `download`, `unpublish`, `erase`, `uninstall`) has a table of `KindCommand`s; `configure(verb)`
turns the table into one subparser per kind (with its own options), and `dispatch` runs the chosen kind's handler.
Adding a kind to a verb is adding one `KindCommand` to its list in `VERBS`.

The same commands app-style (`ztm files publish PATH ...`, `ztm apps start NAME`): `APP_COMMANDS`, built by
`configure_app(APP)` and run by `dispatch_app`, reuse these entries' options and handlers.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from ztm.cli import apps as a
from ztm.cli import commands as c
from ztm.cli import files as f
from ztm.cli.appcli import add_help, add_sub, show_help
from ztm.cli.args import ZtmArgumentParser
from ztm.cli.context import Context


@dataclass(frozen=True)
class KindCommand:
    kind: str
    synopsis: str
    """What follows `ztm VERB`: `file PATH -i LOCAL`."""
    summary: str
    configure: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[Context], int]
    examples: tuple[str, ...] = ()


VERBS: dict[str, list[KindCommand]] = {
    "publish": [
        KindCommand(
            "file",
            "file PATH -i LOCAL [--readonly USER,..] [--block USER,..]",
            "publish a local file as mesh file PATH",
            f.configure_publish,
            f.cmd_publish,
            (
                "ztm publish file /shared/alice/report.pdf -i report.pdf",
                "ztm publish file /users/alice/notes.txt -i notes.txt --readonly bob",
                "ztm publish file /shared/alice/video.mp4 -i video.mp4 --block eve",
            ),
        ),
        KindCommand(
            "app",
            "app NAME",
            "package an installed directory app and offer it to the mesh",
            a.configure_publish_app,
            a.cmd_publish_app,
            ("ztm publish app chat",),
        ),
    ],
    "download": [
        KindCommand(
            "file",
            "file PATH -o OUT|- [--rate BYTES/S]",
            "download mesh file PATH from every endpoint that holds it",
            f.configure_download,
            f.cmd_download,
            ("ztm download file /shared/alice/report.pdf -o report.pdf", "ztm download file /shared/bob/x.iso -o -"),
        ),
        KindCommand(
            "app",
            "app NAME [--from EP] [--sha256 HEX]",
            "install an app another endpoint published (hash-verified)",
            a.configure_download_app,
            a.cmd_download_app,
            ("ztm download app chat", "ztm download app chat --from office"),
        ),
    ],
    "unpublish": [
        KindCommand(
            "file",
            "file PATH",
            "remove mesh file PATH from the mesh (its owner or root)",
            f.configure_path,
            f.cmd_unpublish,
            ("ztm unpublish file /shared/alice/old.txt",),
        ),
        KindCommand(
            "app",
            "app NAME",
            "withdraw this endpoint's offer of an app (others keep their copy)",
            a.configure_unpublish_app,
            a.cmd_unpublish_app,
            ("ztm unpublish app chat",),
        ),
    ],
    "erase": [
        KindCommand(
            "file",
            "file PATH",
            "delete this endpoint's copy of mesh file PATH (it stops serving it)",
            f.configure_path,
            f.cmd_erase,
            ("ztm erase file /shared/alice/big.iso",),
        )
    ],
    "uninstall": [
        KindCommand(
            "app",
            "app NAME",
            "remove an installed directory app, in every mesh",
            a.configure_uninstall_app,
            a.cmd_uninstall_app,
            ("ztm uninstall app chat",),
        )
    ],
}


def synopsis(verb: str) -> str:
    return f"{verb} " + "|".join(k.kind for k in VERBS[verb]) + " ..."


def configure(verb: str) -> Callable[[argparse.ArgumentParser], None]:
    def build(p: argparse.ArgumentParser) -> None:
        kinds = VERBS[verb]
        sub = p.add_subparsers(
            dest="kind",
            metavar="|".join(k.kind for k in kinds),
            required=True,
            prog=p.prog,
            parser_class=ZtmArgumentParser,
        )
        for kind in kinds:
            child = sub.add_parser(
                kind.kind,
                help=kind.summary,
                usage=f"ztm {verb} {kind.synopsis} [global options]",
                description=kind.summary[0].upper() + kind.summary[1:] + ".",
                epilog="examples:\n" + "\n".join(f"  {e}" for e in kind.examples) if kind.examples else None,
            )
            kind.configure(child)
            child.set_defaults(kind_handler=kind.handler)

    return build


def dispatch(ctx: Context) -> int:
    handler: Callable[[Context], int] = ctx.args.kind_handler
    return handler(ctx)


# ---- the same commands app-style: `ztm files publish PATH ...`, `ztm apps start NAME` ----
#
# `ztm files ...` and `ztm apps ...` are the CLIs of the built-in files and apps apps, shaped as `ztm tunnel ...`
# is. Each of their commands is a verb form above (or of `ztm get|describe|start|stop|acl`) under another name:
# the same options (the same `configure`), the same handler, so the same output.


@dataclass(frozen=True)
class AppCommand:
    name: str
    synopsis: str
    """What follows `ztm APP`: `publish PATH -i LOCAL ...`."""
    summary: str
    description: str
    configure: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[Context], int]
    examples: tuple[str, ...] = ()
    defaults: tuple[tuple[str, str], ...] = ()
    """Namespace values the reused handler reads, which the verb form's words set (`kind=file` for `get file`)."""


def _from_verb(app: str, verb: str, kind: str, details: str = "") -> AppCommand:
    """`ztm APP VERB ...` from the `ztm VERB KIND ...` entry of `VERBS`."""
    found = next(k for k in VERBS[verb] if k.kind == kind)
    rest = found.synopsis.removeprefix(kind).strip()
    description = found.summary[0].upper() + found.summary[1:] + "." + (f" {details}" if details else "")
    return AppCommand(
        verb,
        f"{verb} {rest}",
        found.summary,
        f"{description}\nThe same as 'ztm {verb} {found.synopsis}'.",
        found.configure,
        found.handler,
        tuple(e.replace(f"ztm {verb} {kind} ", f"ztm {app} {verb} ", 1) for e in found.examples),
    )


def _configure_file_prefix(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="PREFIX", nargs="?", help="only the files below this path (default: /)")


def _configure_file_path(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="PATH", type=f.mesh_path_type, help="mesh file, e.g. /shared/alice/notes.txt")


def _configure_app_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", nargs="?", help="show only this app")
    p.add_argument("--available", action="store_true", help="the apps published in the mesh, to 'ztm apps download'")


APP_COMMANDS: dict[str, list[AppCommand]] = {
    "files": [
        AppCommand(
            "ls",
            "ls [PREFIX]",
            "the mesh files you may read",
            "List the mesh files you may read (below PREFIX): size, modification time, publisher, the endpoints\n"
            "that serve it, and whether this endpoint has a copy.\nThe same as 'ztm get file [PREFIX]'.",
            _configure_file_prefix,
            c.cmd_get,
            ("ztm files ls", "ztm files ls /shared/alice/", "ztm files ls -o json"),
            (("kind", "file"),),
        ),
        AppCommand(
            "describe",
            "describe PATH",
            "every field of a mesh file, with its sources",
            "Show every field of a mesh file: size, time, SHA-256, chunks, publisher, ACL, the endpoints that serve\n"
            "it (online or not), and this endpoint's copy.\nThe same as 'ztm describe file PATH'.",
            _configure_file_path,
            c.cmd_describe,
            ("ztm files describe /shared/alice/report.pdf",),
            (("kind", "file"),),
        ),
        _from_verb(
            "files",
            "publish",
            "file",
            "/users/YOU/... is private to you (and the users\n--readonly names), /shared/YOU/... readable by "
            "every member but those --block names.",
        ),
        _from_verb(
            "files",
            "download",
            "file",
            "Its 1 MiB chunks come in parallel from every endpoint that\nholds it, each checked against its "
            "SHA-256; an interrupted download resumes where it stopped.",
        ),
        _from_verb("files", "unpublish", "file"),
        _from_verb("files", "erase", "file", "The file stays in the mesh if others hold it."),
        AppCommand(
            "acl",
            "acl PATH [--readonly USER,..] [--block USER,..] [--clear]",
            "show or set who else may read a mesh file",
            "Show a mesh file's ACL, or replace it (its owner or root): --readonly USER lets USER read a private\n"
            "/users/ file, --block USER keeps USER from reading it anywhere. Every serving endpoint enforces it.\n"
            "The same as 'ztm acl file PATH ...'.",
            f.configure_acl_path,
            f.cmd_acl,
            ("ztm files acl /users/alice/notes.txt --readonly bob", "ztm files acl /shared/alice/a.txt --clear"),
        ),
    ],
    "apps": [
        AppCommand(
            "ls",
            "ls [NAME] [--available]",
            "the installed apps, or those published in the mesh",
            "List the apps installed on this agent with their state in each mesh, or with --available the apps\n"
            "published in the mesh, to install with 'ztm apps download'.\nThe same as 'ztm get app [NAME] "
            "[--available]'.",
            _configure_app_list,
            c.cmd_get,
            ("ztm apps ls", "ztm apps ls --available", "ztm apps ls chat -o json"),
            (("kind", "app"),),
        ),
        AppCommand(
            "start",
            "start NAME",
            "start an installed app in the mesh",
            "Start an installed app in the mesh (--mesh, or the agent's only mesh). It keeps running across agent\n"
            "restarts until 'ztm apps stop NAME'.\nThe same as 'ztm start app NAME'.",
            a.configure_name,
            a.cmd_start_app,
            ("ztm apps start chat", "ztm apps start tunnel --mesh office"),
        ),
        AppCommand(
            "stop",
            "stop NAME",
            "stop an app in the mesh",
            "Stop an app in the mesh (--mesh, or the agent's only mesh); it stays stopped across agent restarts\n"
            "until 'ztm apps start NAME'.\nThe same as 'ztm stop app NAME'.",
            a.configure_name,
            a.cmd_stop_app,
            ("ztm apps stop chat",),
        ),
        _from_verb("apps", "publish", "app", "Others install it with 'ztm apps download NAME'."),
        _from_verb("apps", "unpublish", "app", "Only the endpoint that published an app can withdraw it."),
        _from_verb("apps", "download", "app", "Start it with 'ztm apps start NAME'."),
        _from_verb(
            "apps",
            "uninstall",
            "app",
            "Built-ins cannot be uninstalled (stop them), nor apps\ninstalled as Python packages (pip uninstall "
            "them). The app's own configuration is kept for a reinstall.",
        ),
    ],
}

APP_INTROS = {
    "files": "Share files in the mesh: a mesh file has a path, a publisher and an ACL, and every endpoint that holds "
    "a copy\nserves it. /users/USER/... is private to USER (and the users its ACL lets read it); /shared/USER/... "
    "is readable\nby every member but those its ACL blocks. Only USER writes either; root may read and write "
    "everything.",
    "apps": "Install, start, stop, share and remove apps. Every endpoint runs the built-in apps (apps, cloud, "
    "files,\nproxy, terminal, tunnel); third-party apps (Python packages, or directories DATA/apps/NAME) run once "
    "started.\nAn installed app's own command line is 'ztm APP ...' ('ztm APP help' for its commands).",
}
APP_SUMMARIES = {"files": "what the files app does, and its commands", "apps": "what apps are, and the commands"}
APP_VERBS = {
    "files": "'ztm files ls' is\n'ztm get file', 'ztm files publish' is 'ztm publish file'",
    "apps": "'ztm apps ls' is\n'ztm get app', 'ztm apps start' is 'ztm start app'",
}


def app_synopsis(app: str) -> str:
    return f"{app} " + "|".join([*(cmd.name for cmd in APP_COMMANDS[app]), "help"]) + " ..."


def app_overview(app: str) -> str:
    """The description of `ztm APP`: what the app does, then its commands, one a line."""
    rows = [(cmd.synopsis, cmd.summary) for cmd in APP_COMMANDS[app]]
    rows.append(("help [COMMAND]", "this text, or one command's options"))
    width = 44
    lines = [APP_INTROS[app], "", "commands:"]
    for synopsis, summary in rows:
        if len(synopsis) < width - 3:
            lines.append(f"  {synopsis.ljust(width - 2)}{summary}")
        else:
            lines += [f"  {synopsis}", f"  {'':{width - 2}}{summary}"]
    lines += ["", f"Each command also has a verb-first spelling: {APP_VERBS[app]}, and so on."]
    return "\n".join(lines)


def app_examples(app: str) -> tuple[str, ...]:
    return tuple(cmd.examples[0] for cmd in APP_COMMANDS[app] if cmd.examples)


def configure_app(app: str) -> Callable[[argparse.ArgumentParser], None]:
    """`ztm APP ...` (APP: files or apps): one sub-command per `AppCommand`, and `help`."""

    def build(p: argparse.ArgumentParser) -> None:
        prefix = f"ztm {app}"
        commands = APP_COMMANDS[app]
        sub = p.add_subparsers(
            dest="action",
            metavar="|".join([*(cmd.name for cmd in commands), "help"]),
            required=True,
            prog=prefix,
            parser_class=ZtmArgumentParser,
        )
        for cmd in commands:
            child = add_sub(sub, cmd.name, prefix, cmd.synopsis, cmd.summary, cmd.description, cmd.examples)
            cmd.configure(child)
            child.set_defaults(app_handler=cmd.handler, **dict(cmd.defaults))
        add_help(sub, prefix, APP_SUMMARIES[app], f"the {app} app").set_defaults(app_handler=_app_help)

    return build


def _app_help(ctx: Context) -> int:
    return show_help(ctx, str(ctx.args.command))


def dispatch_app(ctx: Context) -> int:
    handler: Callable[[Context], int] = ctx.args.app_handler
    return handler(ctx)
