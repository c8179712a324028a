"""Commands that need no agent: `help`, `config`, `completion`."""

from __future__ import annotations

from ztm.cli import output, settings
from ztm.cli.args import UsageError, help_children
from ztm.cli.client import env_token, socket_files
from ztm.cli.context import Command, Context
from ztm.errors import BadInput

GLOBAL_HELP = (
    ("--agent HOST:PORT", "agent API address (env ZTM_AGENT, 'ztm config', default 127.0.0.1:7777)"),
    ("--mesh NAME", "mesh to act on (env ZTM_MESH, 'ztm config', default: the agent's only mesh)"),
    ("-o, --output table|json", "tables for people (default) or the API's JSON for scripts"),
    ("--timeout SECONDS", "give up on the agent after this long (default 10)"),
)


def overview(commands: list[Command]) -> str:
    """`ztm help`: every command on one line, grouped, then the global options."""
    width = max(len(c.synopsis) for c in commands) + 2
    lines = [
        "ztm: the zero-trust mesh command line",
        "",
        "usage: ztm COMMAND [ARGS] [--agent HOST:PORT] [--mesh NAME] [-o table|json] [--timeout SECONDS]",
    ]
    groups: dict[str, list[Command]] = {}
    for command in commands:
        groups.setdefault(command.group, []).append(command)
    for group, members in groups.items():
        lines += ["", f"{group}:"]
        lines += [f"  {c.synopsis.ljust(width)}{c.summary}" for c in members]
    gwidth = max(len(k) for k, _ in GLOBAL_HELP) + 2
    lines += ["", "global options (before or after the command):"]
    lines += [f"  {k.ljust(gwidth)}{v}" for k, v in GLOBAL_HELP]
    lines += [
        "",
        "Run 'ztm help COMMAND' (or 'ztm COMMAND --help') for a command's options and examples.",
        "Exit status: 0 success, 1 error, 2 bad command line, 130 interrupted.",
    ]
    return "\n".join(lines)


def cmd_help(ctx: Context) -> int:
    topic: list[str] = ctx.args.topic
    if not topic:
        ctx.print(overview(list(ctx.commands)))
        return 0
    parser = ctx.parser
    for i, word in enumerate(topic):
        children = help_children(parser)
        if word not in children:
            if i == 0:
                raise UsageError(f"ztm: unknown command '{word}'; run 'ztm help' to see the commands")
            raise UsageError(
                f"ztm: '{' '.join(topic[:i])}' has no subcommand '{word}'; run 'ztm help {' '.join(topic[:i])}'"
            )
        parser = children[word]
    ctx.print(parser.format_help().rstrip("\n"))
    return 0


def cmd_completion(ctx: Context) -> int:
    from ztm.cli.completion import script

    ctx.print(script(ctx.args.shell, ctx.parser).rstrip("\n"))
    return 0


def cmd_config(ctx: Context) -> int:
    updates: dict[str, str | None] = {}
    agent = getattr(ctx.args, "agent", None)
    mesh = getattr(ctx.args, "mesh", None)
    if agent is not None:
        updates["agent"] = str(settings.parse_agent(agent, "--agent"))
    if mesh is not None:
        if not mesh.strip():
            raise BadInput("--mesh: empty name; use --unset mesh to forget the saved mesh")
        updates["mesh"] = mesh.strip()
    for key in ctx.args.unset or ():
        if key in updates:
            raise UsageError(f"ztm config: --{key} and --unset {key} contradict each other")
        updates[key] = None
    if updates:
        path = settings.save(updates)
        for key, value in updates.items():
            ctx.note(f"saved {key} = {value}" if value is not None else f"forgot the saved {key}")
        ctx.note(f"in {path}")
        if ctx.json:
            ctx.print_json(settings.load_saved())
        return 0
    return _show_config(ctx)


def _show_config(ctx: Context) -> int:
    address, agent_source = settings.resolve_agent(None)
    mesh = settings.resolve_mesh(None)
    token = env_token()
    path = settings.config_path()
    local = next((p for p in socket_files(address) if p.is_socket()), None)
    if local is not None:
        via = f"local socket {local}"
    elif token is not None:
        via = f"TCP with the token in {token.source}"
    else:
        via = "none found (no local socket: looked for " + ", ".join(map(str, socket_files(address))) + ")"
    if ctx.json:
        ctx.print_json(
            {
                "agent": {"value": str(address), "source": agent_source},
                "mesh": {"value": mesh.value, "source": mesh.source},
                "via": str(local) if local is not None else (token.source if token else None),
                "file": str(path),
            }
        )
        return 0
    rows = [
        ("agent", f"{address}  ({agent_source})"),
        ("mesh", f"{output.clean(mesh.value)}  ({mesh.source})" if mesh.value else f"-  ({mesh.source})"),
        ("via", via),
        ("file", str(path) + ("" if path.exists() else " (not written yet)")),
    ]
    ctx.print(output.key_values(rows))
    return 0
