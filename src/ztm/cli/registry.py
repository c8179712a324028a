"""The command table. Adding a command, or an app's `ztm APP ...` CLI, is adding one `Command` to `COMMANDS`:
its options (`configure`), its handler, and the help texts. `build_parser` turns the table into parsers.
"""

from __future__ import annotations

import argparse

from ztm.cli import args as a
from ztm.cli import cloud as cl
from ztm.cli import commands as c
from ztm.cli import daemons as d
from ztm.cli import files as f
from ztm.cli import local as loc
from ztm.cli import policy as pol
from ztm.cli import proxy as px
from ztm.cli import routes as rt
from ztm.cli import terminal as term
from ztm.cli import tunnel as t
from ztm.cli import verbs as v
from ztm.cli.context import Command
from ztm.gui import cli as gui_cli

PROCESSES = "Run hub and agent"
MESHES = "Join meshes"
INSPECT = "Look at a mesh"
MANAGE = "Manage endpoints and users"
APPS = "Apps"
SETUP = "The command line itself"

COMMANDS: list[Command] = [
    Command(
        "run",
        PROCESSES,
        "run hub|agent [options]",
        "run a hub or an agent in the foreground (for supervisors and containers)",
        a.configure_run,
        d.cmd_run,
        "Run a hub or an agent in the foreground until Ctrl-C or SIGTERM.",
        (
            "ztm run hub --listen 0.0.0.0:8888 --names 1.2.3.4:8888 --permit root.json",
            "ztm run agent --listen 127.0.0.1:7777 --data /var/lib/ztm",
        ),
    ),
    Command(
        "start",
        PROCESSES,
        "start hub|agent [options] | start app NAME",
        "start a hub or an agent in the background (systemd service if available), or an app",
        a.configure_start,
        d.cmd_start,
        "Start a hub or an agent and wait until it is ready. As root where systemd runs, it is installed as an "
        "enabled systemd unit\n(ztm-hub.service / ztm-agent.service) that restarts on failure and after reboots; "
        "elsewhere it runs as a background\nprocess with its pid in DATA/hub.pid or DATA/agent.pid and its output in "
        "DATA/hub.out or DATA/agent.out.",
        (
            "ztm start hub --listen 0.0.0.0:8888 --names 1.2.3.4:8888 --permit root.json",
            "ztm start agent",
            "ztm start app chat",
        ),
    ),
    Command(
        "hub",
        PROCESSES,
        "hub migrate --from DATA_DIR --to URL",
        "move a single hub's mesh from SQLite into PostgreSQL (for a hub cluster)",
        a.configure_hub,
        d.cmd_hub,
        "Move the mesh of a stopped hub from its SQLite store (DATA_DIR/ztm-hub.db) into an empty PostgreSQL\n"
        "database, then start the hub with --store: permits and joined agents keep working, and more hubs can join.",
        (
            "ztm hub migrate --from /var/lib/ztm-hub --to postgresql://ztm@db.internal/ztm",
            "PGPASSWORD=... ztm hub migrate --from ~/.ztm --to postgresql://ztm@127.0.0.1:5432/mesh",
        ),
    ),
    Command(
        "stop",
        PROCESSES,
        "stop hub|agent [--data DIR] | stop app NAME",
        "stop a hub or an agent started with 'ztm start', or an app",
        a.configure_stop,
        d.cmd_stop,
        "Stop (and disable) what 'ztm start' started with the same --data: SIGTERM, then SIGKILL after 10 s.",
        ("ztm stop agent", "ztm stop hub --data /var/lib/ztm-hub", "ztm stop app chat"),
    ),
    Command(
        "join",
        MESHES,
        "join MESH --as NAME --permit FILE",
        "join a mesh with a permit",
        a.configure_join,
        c.cmd_join,
        "Join a mesh: MESH is a local name of your choice, NAME the endpoint name others see, FILE a permit from\n"
        "'ztm start hub --permit FILE' (root) or 'ztm invite' (other users).",
        (
            "ztm join my-mesh --as home --permit root.json",
            "ztm join work --as laptop --permit bob.json --label site=paris",
        ),
    ),
    Command(
        "leave",
        MESHES,
        "leave MESH",
        "leave a mesh",
        a.configure_leave,
        c.cmd_leave,
        "Leave a mesh: this agent disconnects from its hubs and forgets it.",
        ("ztm leave my-mesh",),
    ),
    Command(
        "get",
        INSPECT,
        "get mesh|hub|ep|app|file [NAME] | get audit [--since T] [--user U]",
        "list meshes, hubs, endpoints, apps, or the hub's audit log",
        a.configure_get,
        c.cmd_get,
        "List meshes, the mesh's hubs, its endpoints or the installed apps as a table (or the API's JSON with\n"
        "-o json). Kinds also accept plurals and aliases: meshes, hubs, endpoint(s), eps, apps. 'audit' lists the\n"
        "hub's audit log, oldest first (root and policy admins only): --since T (unix seconds, an ISO time, or a\n"
        "duration ago such as 1h or 2d) and --user USER narrow it.",
        ("ztm get ep", "ztm get ep bob -o json", "ztm get mesh", "ztm get audit --since 1h --user bob"),
    ),
    Command(
        "describe",
        INSPECT,
        "describe mesh|hub|ep|file [NAME]",
        "every field of a mesh, hub or endpoint (and a ping for endpoints)",
        a.configure_describe,
        c.cmd_describe,
        "Show every field of one mesh, hub or endpoint. Without NAME: the current mesh, its only hub, or this\n"
        "endpoint. For an endpoint, a ping through the hub is added.",
        ("ztm describe ep bob", "ztm describe mesh"),
    ),
    Command(
        "ping",
        INSPECT,
        "ping ep NAME [--count N]",
        "round trip to an endpoint (agent -> hub -> endpoint -> back)",
        a.configure_ping,
        c.cmd_ping,
        "Measure round trips to an endpoint through the hub. Exit status 1 if none answered.",
        ("ztm ping ep bob", "ztm ping ep bob -c 10"),
    ),
    Command(
        "stats",
        INSPECT,
        "stats ep [NAME]",
        "traffic with each peer: bytes, rates, streams",
        a.configure_stats,
        c.cmd_stats,
        "Traffic of this endpoint with each peer (the 'hub' row is control traffic): totals, rates over the last 5 s,\n"
        "open streams.",
        ("ztm stats ep", "ztm stats ep bob"),
    ),
    Command(
        "log",
        INSPECT,
        "log hub|ep|agent [NAME]",
        "the last lines of the hub's, an endpoint's or this agent's log",
        a.configure_log,
        c.cmd_log,
        "Show the last lines of a log: the hub's (root only), an endpoint's (its owner or root; default: this\n"
        "endpoint), or this agent's own.",
        ("ztm log agent", "ztm log ep bob --lines 20", "ztm log hub"),
    ),
    Command(
        "label",
        MANAGE,
        "label [ep NAME] --add L --delete L",
        "add or remove labels of an endpoint (default: this one)",
        a.configure_label,
        c.cmd_label,
        "Add or remove labels of an endpoint (default: this endpoint) and print the result; with neither option,\n"
        "print the labels. A label is key=value or a word: 1-63 characters from A-Z a-z 0-9 _ . = : / -",
        ("ztm label --add site=paris gpu", "ztm label ep bob --delete gpu"),
    ),
    Command(
        "identity",
        MANAGE,
        "identity",
        "print this agent's public key, to be invited with",
        a.configure_identity,
        c.cmd_identity,
        "Print this agent's public key (PEM) on stdout. Send it to the mesh's root user, who runs 'ztm invite'.",
        ("ztm identity > alice.pem",),
    ),
    Command(
        "invite",
        MANAGE,
        "invite USER --identity FILE",
        "make a permit for a user from their public key (root only)",
        a.configure_invite,
        c.cmd_invite,
        "Make a permit for USER from their public key (from 'ztm identity'). The permit holds no private key; it is\n"
        "written to --permit OUT (mode 0600) or printed on stdout.",
        (
            "ztm invite alice --identity alice.pem --permit alice.json",
            "ztm invite bob --identity bob.pem --days 30 > bob.json",
        ),
    ),
    Command(
        "evict",
        MANAGE,
        "evict USER",
        "refuse a user's certificates and close their sessions (root only)",
        a.configure_evict,
        c.cmd_evict,
        "Evict USER from the mesh: their certificates are refused from now on and their live sessions closed.",
        ("ztm evict alice",),
    ),
    Command(
        "policy",
        MANAGE,
        "policy get|set|test|diff|history|rollback|check|help ...",
        "the mesh's access policy: view, test, set, roll back, and ask why",
        pol.configure_policy,
        pol.cmd_policy,
        pol.DESCRIPTION,
        pol.EXAMPLES,
    ),
    Command(
        "root-admin",
        MANAGE,
        "root-admin [on|off]",
        "let root configure this endpoint's tunnels and proxy from afar (off by default)",
        a.configure_root_admin,
        c.cmd_root_admin,
        "Show, or turn on or off, whether root may configure this endpoint's tunnels and proxy from another\n"
        "endpoint ('ztm ep NAME tunnel|proxy ...'), in this mesh (--mesh). Off by default: whoever runs the mesh's\n"
        "hub holds its CA and can pose as root. The owner's own remote configuration is always allowed. Only this\n"
        "endpoint's own agent can change it; terminal sessions have their own switch ('ztm terminal enable').",
        ("ztm root-admin", "ztm root-admin on", "ztm root-admin off --mesh office"),
    ),
    Command(
        "route",
        MANAGE,
        "route approve|unapprove|help EP CIDR...",
        "approve the subnet routes an endpoint advertises (root only)",
        rt.configure_route,
        rt.cmd_route,
        rt.OVERVIEW + "\nApprove or unapprove routes one endpoint advertises ('ztm get route' lists them).",
        rt.EXAMPLES[2:4],
    ),
    Command(
        "delete",
        MANAGE,
        "delete ep NAME",
        "remove an endpoint's record, freeing its name (root only)",
        a.configure_delete,
        c.cmd_delete,
        "Remove the endpoint NAME from the mesh: its name and its user's endpoint quota slot are free again, its\n"
        "certificates are refused from now on and its connections closed (its agent has to join again).",
        ("ztm delete ep old-laptop",),
    ),
    Command(
        "publish",
        APPS,
        v.synopsis("publish"),
        "publish a local file in the mesh file space, or an installed app",
        v.configure("publish"),
        v.dispatch,
        "Publish something in the mesh. 'file PATH -i LOCAL' makes LOCAL the mesh file PATH: /users/YOU/... is\n"
        "private to you, /shared/YOU/... readable by every member (see 'ztm help publish file'). 'app NAME' offers\n"
        "the directory app DATA/apps/NAME to the mesh (see 'ztm help publish app').",
        ("ztm publish file /shared/alice/report.pdf -i report.pdf", "ztm publish app chat"),
    ),
    Command(
        "download",
        APPS,
        v.synopsis("download"),
        "download a mesh file from every endpoint that holds it, or install a published app",
        v.configure("download"),
        v.dispatch,
        "Download something from the mesh. 'file PATH -o OUT' fetches the file's 1 MiB chunks in parallel from\n"
        "every endpoint that holds it, checks each against its SHA-256, and resumes where an interrupted try stopped.\n"
        "'app NAME' installs an app another endpoint published, once its SHA-256 checks (see 'ztm help download app').",
        ("ztm download file /shared/alice/report.pdf -o report.pdf", "ztm download app chat"),
    ),
    Command(
        "unpublish",
        APPS,
        v.synopsis("unpublish"),
        "remove a file from the mesh, or withdraw an app this endpoint offers",
        v.configure("unpublish"),
        v.dispatch,
        "Remove something from the mesh: 'file PATH' deletes the mesh file's entry; no endpoint serves it any more.\n"
        "'app NAME' withdraws this endpoint's offer of the app; endpoints that installed it keep their copy.",
        ("ztm unpublish file /shared/alice/old.txt", "ztm unpublish app chat"),
    ),
    Command(
        "erase",
        APPS,
        v.synopsis("erase"),
        "delete this endpoint's copy of a mesh file",
        v.configure("erase"),
        v.dispatch,
        "Delete this endpoint's local copy (whole or partly downloaded); the file stays in the mesh if others hold it.",
        ("ztm erase file /shared/alice/big.iso",),
    ),
    Command(
        "uninstall",
        APPS,
        v.synopsis("uninstall"),
        "remove an installed app",
        v.configure("uninstall"),
        v.dispatch,
        "Remove an installed app: 'app NAME' stops the directory app DATA/apps/NAME in every mesh, deletes it, and\n"
        "withdraws it from the meshes this endpoint published it in (see 'ztm help uninstall app'). Built-ins are\n"
        "stopped, not uninstalled ('ztm stop app NAME'); an app installed as a Python package is removed with pip.",
        ("ztm uninstall app chat",),
    ),
    Command(
        "acl",
        APPS,
        "acl file PATH [--readonly USER,..] [--block USER,..] [--clear]",
        "show or set who else may read a mesh file",
        f.configure_acl,
        f.cmd_acl,
        "Show a mesh file's ACL, or replace it (its owner or root): --readonly USER lets USER read a private\n"
        "/users/ file, --block USER keeps USER from reading it anywhere. Every serving endpoint enforces it.",
        ("ztm acl file /users/alice/notes.txt --readonly bob", "ztm acl file /shared/alice/a.txt --block eve"),
    ),
    Command(
        "files",
        APPS,
        v.app_synopsis("files"),
        "share files in the mesh: list, publish, download, set ACLs (the files app)",
        v.configure_app("files"),
        v.dispatch_app,
        v.app_overview("files"),
        v.app_examples("files"),
    ),
    Command(
        "apps",
        APPS,
        v.app_synopsis("apps"),
        "list, start, stop, publish, install and remove apps (the apps app)",
        v.configure_app("apps"),
        v.dispatch_app,
        v.app_overview("apps"),
        v.app_examples("apps"),
    ),
    Command(
        "cloud",
        APPS,
        "cloud config|ls|upload|download|mirror|status|help ...",
        "your private cloud drive: a local directory synced with /users/YOU/ (the cloud app)",
        cl.configure_cloud,
        cl.cmd_cloud,
        cl.OVERVIEW,
        cl.EXAMPLES,
    ),
    Command(
        "tunnel",
        APPS,
        "tunnel open|get|describe|close|help ...",
        "forward TCP and UDP ports between endpoints (the tunnel app)",
        t.configure_tunnel,
        t.cmd_tunnel,
        t.OVERVIEW,
        t.EXAMPLES,
    ),
    Command(
        "ep",
        APPS,
        "ep NAME tunnel|proxy|route ...",
        "the same tunnel or proxy commands on another endpoint you own; its subnet routes",
        t.configure_ep,
        t.cmd_tunnel,
        "Run an app's commands on endpoint NAME instead of this one: the hub relays them, and NAME obeys only its\n"
        "owner (and root, if the owner ran 'ztm root-admin on' there). Apps: tunnel and proxy; see\n"
        "'ztm help ep tunnel', 'ztm help ep proxy'. 'ztm ep NAME route advertise|withdraw CIDR...' changes the\n"
        "subnet routes NAME advertises (its owner or root; see 'ztm help ep route').",
        (
            "ztm ep office tunnel open outbound tcp/web --targets 127.0.0.1:8080",
            "ztm ep office tunnel get outbound",
            "ztm ep office tunnel close outbound tcp/web",
            "ztm ep office proxy config --add-target '*.corp.example'",
            "ztm ep office route advertise 10.20.0.0/16",
        ),
    ),
    Command(
        "terminal",
        APPS,
        "terminal open|exec|enable|disable|config|help ...",
        "remote shells and commands on endpoints (the terminal app)",
        term.configure_terminal,
        term.cmd_terminal,
        term.DESCRIPTION,
        term.EXAMPLES,
    ),
    Command(
        "proxy",
        APPS,
        "proxy config|rules|get|help ...",
        "SOCKS5 and HTTP proxy through exits of the mesh (the proxy app)",
        px.configure_proxy,
        px.cmd_proxy,
        px.OVERVIEW,
        px.EXAMPLES,
    ),
    Command(
        "config",
        SETUP,
        "config [--agent ADDR] [--mesh NAME]",
        "show or save the defaults for --agent and --mesh",
        a.configure_config,
        loc.cmd_config,
        "Without options: show the effective agent, mesh and API token and where each comes from. With --agent or\n"
        "--mesh: save them as defaults in ~/.ztm/cli.json (flags and ZTM_AGENT / ZTM_MESH still take precedence).",
        ("ztm config", "ztm config --agent 127.0.0.1:7778 --mesh my-mesh", "ztm config --unset mesh"),
    ),
    Command(
        "completion",
        SETUP,
        "completion bash|zsh",
        "print a shell completion script",
        a.configure_completion,
        loc.cmd_completion,
        "Print a completion script for bash or zsh.",
        ("source <(ztm completion bash)", "ztm completion zsh > ~/.zsh/completions/_ztm"),
    ),
    Command(
        "gui",
        INSPECT,
        "gui",
        "print a one-time sign-in link for the agent's web GUI",
        gui_cli.configure_gui,
        gui_cli.cmd_gui,
        gui_cli.DESCRIPTION,
        ("ztm gui", "ztm gui --agent 127.0.0.1:7778"),
    ),
    Command(
        "version",
        SETUP,
        "version",
        "the command line's version, and the agent's if it answers",
        a.configure_version,
        c.cmd_version,
        "Print the command line's version and, if the agent answers within 1 s, the agent's.",
        ("ztm version",),
    ),
    Command(
        "help",
        SETUP,
        "help [COMMAND]",
        "this overview, or a command's options and examples",
        a.configure_help,
        loc.cmd_help,
        "Show all commands, or the usage, options and examples of one command.",
        ("ztm help", "ztm help run hub"),
    ),
]


def build_parser(commands: list[Command]) -> a.ZtmArgumentParser:
    root = a.ZtmArgumentParser(prog="ztm", add_help=False)
    sub = root.add_subparsers(dest="command", metavar="COMMAND", prog="ztm", parser_class=a.ZtmArgumentParser)
    for command in commands:
        epilog = "examples:\n" + "\n".join(f"  {e}" for e in command.examples) if command.examples else None
        parser = sub.add_parser(
            command.name,
            aliases=list(command.aliases),
            prog=f"ztm {command.name}",
            usage=f"ztm {command.synopsis} [global options]",
            description=command.description or command.summary,
            epilog=epilog,
            help=command.summary,
        )
        command.configure(parser)
        parser.set_defaults(handler=command.handler)
    _add_globals(root)
    return root


def _add_globals(parser: argparse.ArgumentParser) -> None:
    a.add_global_options(parser)
    for child in {id(p): p for p in a.subcommands(parser).values()}.values():
        _add_globals(child)


def find(commands: list[Command], name: str) -> Command | None:
    for command in commands:
        if name == command.name or name in command.aliases:
            return command
    return None
