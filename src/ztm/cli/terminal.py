"""`ztm terminal open|exec|enable|disable|config|help`: remote shells and commands on endpoints (the terminal app).

`config` calls the app's JSON routes (`/api/meshes/MESH/apps/terminal[/config]`); `open` and `exec` carry a session
over the agent's WebSocket route (`.../apps/terminal/endpoints/EP/session`) with `ztm.cli.terminal_session`, which
is imported only by them (it needs asyncio and aiohttp). Names are checked here with the agent's rules, so a typo
fails at once with exit status 2.
"""

from __future__ import annotations

import argparse
import re
import shlex
from typing import Any

from ztm import validate
from ztm.cli import output
from ztm.cli.appcli import add_sub, show_help
from ztm.cli.args import UsageError, ZtmArgumentParser, user_type
from ztm.cli.context import Context, expect_obj

APP = "terminal"
_TERM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")

OVERVIEW = """\
Open a shell on another endpoint, or run a command there, through the hub.

'open' starts the target's shell on a pseudo-terminal and connects it to this terminal in raw mode, as ssh does:
Ctrl-C, Ctrl-D, Ctrl-Z and window resizes go to the remote side, and the command exits with the remote shell's exit
status. 'exec' runs one command without a terminal: its stdout and stderr arrive on this command's stdout and stderr,
this command's stdin is its stdin, and its exit status becomes this command's (128+N if it was killed by signal N).
Sessions into an endpoint are off until its owner runs 'ztm terminal enable' on it (per mesh): whoever runs the
mesh's hub holds its CA and could pose as the owner. When on, an endpoint lets in only its owner (the user of its
certificate) and the users it lists with 'ztm terminal config --add-user USER' (run on that endpoint); others are
refused. Every session is logged there (who, from which endpoint, what, how it ended: 'ztm log ep NAME'). The
remote processes run as the OS user of that endpoint's agent, and are killed when the session ends."""

COMMANDS = """\
commands:
  open EP [--term TERM]                      interactive shell on endpoint EP
  exec EP -- COMMAND [ARG ...]               run a command on EP (no terminal)
  enable | disable                           allow or stop sessions into this endpoint (off by default)
  config [--set-shell CMD] [--reset-shell] [--add-user USER ...] [--del-user USER ...]
                                             this endpoint's shell and allowed users (no option: show them)
  help [open|exec|enable|disable|config]     this text, or one command's options"""

DESCRIPTION = f"{OVERVIEW}\n\n{COMMANDS}"

EXAMPLES = (
    "ztm terminal enable",
    "ztm terminal open office",
    "ztm terminal exec office -- uname -a",
    "ztm terminal exec office -- 'df -h | sort -k5'",
    "tar czf - dir | ztm terminal exec office -- tar xzf - -C /tmp",
    "ztm terminal config --add-user alice",
    "ztm terminal config --set-shell '/bin/bash --login'",
)


def ep_type(text: str) -> str:
    if not validate.NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid endpoint {text!r}: an endpoint name or id (letters, digits, '.', '_', '-')"
        )
    return text


ep_type.__name__ = "endpoint"


def term_type(text: str) -> str:
    if not _TERM.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid terminal type {text!r}: such as xterm-256color")
    return text


term_type.__name__ = "terminal type"


def shell_type(text: str) -> str:
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid shell {text!r}: {exc}") from None
    if not words:
        raise argparse.ArgumentTypeError("empty shell: give a command such as /bin/bash")
    return text


shell_type.__name__ = "shell"


def configure_terminal(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(
        dest="target",
        metavar="open|exec|enable|disable|config|help",
        required=True,
        prog="ztm terminal",
        parser_class=ZtmArgumentParser,
    )
    opener = add_sub(
        sub,
        "open",
        "ztm terminal",
        "open EP [--term TERM]",
        "interactive shell on an endpoint",
        "Open the configured shell of endpoint EP on a pseudo-terminal of this terminal's size, in raw mode: every\n"
        "key (Ctrl-C, Ctrl-D, Ctrl-Z included) goes to the remote side, and window resizes follow. The session ends\n"
        "when the remote shell exits; its exit status becomes this command's. Closing this terminal hangs it up.",
        ("ztm terminal open office", "ztm terminal open 0b8e6c8e-5b7a-4c39-9a0d-3c8f0e8e1d2a --term vt100"),
    )
    opener.add_argument("ep", metavar="EP", type=ep_type, help="endpoint name or id")
    opener.add_argument(
        "--term", metavar="TERM", type=term_type, default=None, help="TERM on the remote side (default: this $TERM)"
    )
    execer = add_sub(
        sub,
        "exec",
        "ztm terminal",
        "exec EP -- COMMAND [ARG ...]",
        "run a command on an endpoint, without a terminal",
        "Run COMMAND on endpoint EP through its shell ('SHELL -c'), without a terminal. One word is given to the\n"
        "shell as it is (so 'ls | wc -l' in quotes is a pipeline there); several words are quoted one by one. The\n"
        "command's stdout and stderr arrive on this command's stdout and stderr, this command's stdin is its stdin\n"
        "(end it with Ctrl-D, or redirect from /dev/null), Ctrl-C interrupts it, and its exit status is this\n"
        "command's (128+N if it was killed by signal N).",
        (
            "ztm terminal exec office -- uname -a",
            "ztm terminal exec office -- 'ps aux | grep ztm'",
            "ztm terminal exec office -- cat /etc/hostname < /dev/null",
        ),
    )
    execer.add_argument("ep", metavar="EP", type=ep_type, help="endpoint name or id")
    execer.add_argument("words", metavar="COMMAND", nargs="*", help="the command and its arguments, after --")
    for action, summary, description in (
        (
            "enable",
            "allow terminal sessions into this endpoint (in this mesh)",
            "Allow sessions into this endpoint, in this mesh (--mesh): its owner and the users listed with\n"
            "'ztm terminal config --add-user' may then open shells and run commands here as the agent's OS user.\n"
            "Off by default, because whoever runs the mesh's hub holds its CA and could pose as the owner: turn it on\n"
            "only where you trust the hub's operator with a shell. Only this endpoint's own agent can turn it on.",
        ),
        (
            "disable",
            "refuse terminal sessions into this endpoint (the default)",
            "Refuse every new session into this endpoint, in this mesh (sessions already open go on until they end).",
        ),
    ):
        add_sub(sub, action, "ztm terminal", action, summary, description, (f"ztm terminal {action}",))
    config = add_sub(
        sub,
        "config",
        "ztm terminal",
        "config [--set-shell CMD] [--reset-shell] [--add-user USER ...] [--del-user USER ...]",
        "this endpoint's shell and the users allowed in besides its owner",
        "Show or change the terminal settings of this endpoint: the shell sessions start (default: the login shell\n"
        "of the agent's OS user, else /bin/sh) and the users besides the owner who may open sessions here. Changes\n"
        "are kept by the agent and survive restarts; the sessions of this endpoint are listed with -o json.",
        (
            "ztm terminal config",
            "ztm terminal config --add-user alice bob",
            "ztm terminal config --del-user bob",
            "ztm terminal config --set-shell /bin/zsh",
        ),
    )
    config.add_argument("--set-shell", metavar="CMD", type=shell_type, help="shell command line, e.g. '/bin/bash -l'")
    config.add_argument("--reset-shell", action="store_true", help="back to the default shell")
    config.add_argument(
        "--add-user", metavar="USER", type=user_type, nargs="+", action="extend", default=[], help="allow users"
    )
    config.add_argument(
        "--del-user", metavar="USER", type=user_type, nargs="+", action="extend", default=[], help="disallow users"
    )
    helper = add_sub(
        sub,
        "help",
        "ztm terminal",
        "help [open|exec|enable|disable|config]",
        "what the terminal app does, and its commands",
        "Explain the terminal app and list its commands, or show one command's options and examples.",
        ("ztm terminal help", "ztm terminal help exec"),
    )
    helper.add_argument("topic", nargs="*", metavar="COMMAND", help="command to explain")


def cmd_terminal(ctx: Context) -> int:
    action: str = ctx.args.target
    if action == "help":
        return _help(ctx)
    if action == "config":
        return _config(ctx)
    if action in ("enable", "disable"):
        return _switch(ctx, action == "enable")
    from ztm.cli import terminal_session

    if action == "open":
        return terminal_session.open_shell(ctx, ctx.args.ep, ctx.args.term)
    command: list[str] = ctx.args.words
    if not command:
        raise UsageError("ztm terminal exec: no command given; usage: ztm terminal exec EP -- COMMAND [ARG ...]")
    return terminal_session.run_command(ctx, ctx.args.ep, command)


def _help(ctx: Context) -> int:
    return show_help(ctx, APP)


def _switch(ctx: Context, enabled: bool) -> int:
    value = ctx.client().post(ctx.mesh_path("apps", "terminal", "config"), {"enabled": enabled})
    view = expect_obj(value, "the terminal configuration")
    if ctx.json:
        ctx.print_json(view)
    elif enabled:
        ctx.print(
            f"terminal sessions into this endpoint are on: its owner ({output.cell(view.get('owner'))}) and the "
            "listed users may open them ('ztm terminal disable' turns them off)"
        )
    else:
        ctx.print("terminal sessions into this endpoint are off ('ztm terminal enable' turns them on)")
    return 0


def _config(ctx: Context) -> int:
    args = ctx.args
    if args.set_shell is not None and args.reset_shell:
        raise UsageError("ztm terminal config: --set-shell and --reset-shell exclude each other")
    body: dict[str, Any] = {}
    if args.set_shell is not None:
        body["shell"] = args.set_shell
    if args.reset_shell:
        body["shell"] = None
    if args.add_user:
        body["add_users"] = list(dict.fromkeys(args.add_user))
    if args.del_user:
        body["del_users"] = list(dict.fromkeys(args.del_user))
    if body:
        value = ctx.client().post(ctx.mesh_path("apps", "terminal", "config"), body)
    else:
        value = ctx.client().get(ctx.mesh_path("apps", "terminal"))
    view = expect_obj(value, "the terminal configuration")
    if ctx.json:
        ctx.print_json(view)
        return 0
    users = view.get("users")
    ctx.print(
        output.key_values(
            [
                ("sessions in", "on" if view.get("enabled") else "off ('ztm terminal enable' turns them on)"),
                ("shell", output.cell(view.get("effective_shell")) + ("" if view.get("shell") else " (default)")),
                ("owner", output.cell(view.get("owner"))),
                ("users", output.cell(users) if users else "(only the owner)"),
                ("sessions", f"{output.cell(view.get('sessions'))} ({output.cell(view.get('active'))} active)"),
                ("refused", output.cell(view.get("refused"))),
            ]
        )
    )
    return 0
