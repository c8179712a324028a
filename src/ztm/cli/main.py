"""Entry point of the `ztm` command: parse, dispatch, and turn every failure into one line and an exit code.

Exit codes: 0 success, 1 error (a `ZtmError`, or an internal error), 2 bad command line, 130 interrupted.
No Python traceback ever reaches the user.
"""

from __future__ import annotations

import contextlib
import os
import sys
from argparse import ArgumentParser, Namespace
from collections.abc import Sequence

from ztm.cli.args import HelpShown, UsageError, chosen_child, find_command, help_children, subcommands
from ztm.cli.output import clean
from ztm.errors import ZtmError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run `ztm` with `argv` (default: `sys.argv[1:]`); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # a name a terminal cannot encode must not become an error
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    try:
        return _dispatch(args)
    except HelpShown as shown:
        return shown.code
    except UsageError as exc:
        _error(exc.message)
        return EXIT_USAGE
    except ZtmError as exc:
        _error(f"ztm: {exc.message}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("ztm: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        _error(f"ztm: {exc.code}")
        return EXIT_ERROR
    except BaseException as exc:  # the last line of defence: never a traceback
        detail = " ".join(str(exc).split())
        _error(f"ztm: internal error: {type(exc).__name__}: {detail} (please report)")
        return EXIT_ERROR


def _dispatch(args: list[str]) -> int:
    from ztm.cli.context import Context
    from ztm.cli.registry import COMMANDS, build_parser, find

    index = find_command(args)
    if index is None:
        if not args or any(a in ("-h", "--help") for a in args):
            from ztm.cli.local import overview

            sys.stdout.write(overview(COMMANDS) + "\n")
            return 0
        if any(a in ("-V", "--version") for a in args):
            args = ["version", *(a for a in args if a not in ("-V", "--version"))]
        else:
            raise UsageError("ztm: no command given; run 'ztm help' to see the commands")
    else:
        name = args[index]
        if find(COMMANDS, name) is None:  # an installed app's command line, or an unknown command
            from ztm.cli.apps import app_command

            return app_command(args[:index], name, args[index + 1 :], COMMANDS)
        before = args[:index]
        if any(a in ("-h", "--help") for a in before):
            args = [a for a in before if a not in ("-h", "--help")] + [*args[index:], "--help"]
    parser = build_parser(COMMANDS)
    namespace, extras = parser.parse_known_args(args)
    if extras:
        topic = _topic(parser, namespace)
        raise UsageError(
            f"ztm {topic}: unrecognized arguments: {clean(' '.join(extras))}; run 'ztm help {topic}' for usage"
        )
    code = namespace.handler(Context(namespace, parser, COMMANDS))
    sys.stdout.flush()
    return int(code)


def _topic(parser: ArgumentParser, namespace: Namespace) -> str:
    """`get`, or `run hub` / `tunnel open inbound` for a command with subcommands: what the user asked for, to
    point at its help (`ztm help TOPIC`)."""
    words = [str(namespace.command)]
    current = subcommands(parser).get(words[0])
    while current is not None and (chosen := chosen_child(current, namespace)) is not None:
        words.append(chosen)
        current = help_children(current)[chosen]
    return " ".join(words)


def _error(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(clean(message, keep_newlines=True) + "\n")
        sys.stderr.flush()


def _silence_stdout() -> None:
    """After a closed pipe (`ztm get ep | head`), keep the interpreter from complaining at exit."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
