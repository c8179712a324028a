"""`ztm proxy ...`: the proxy app on this endpoint (and, with `proxy_tree` + `cmd_proxy`, on another you own).

Locally the commands call the proxy app's routes (`/api/meshes/MESH/apps/proxy/...`); when the namespace carries an
endpoint (`ep_name`, as `ztm ep NAME ...` sets it) they become relayed calls (`POST .../endpoints/EP/apps/proxy/call`
with `{"method": "get"|"config"|"rules"|"insert_rule"|"delete_rule", "params": {...}}`), which that endpoint answers
only for its owner (and for root where the owner ran `ztm root-admin on`). `configure_proxy(parser, prefix)` builds
the same tree under any prefix.

This module stays light (no agent code): targets, users and addresses are checked here with the same rules as the
agent's, so a typo fails at once with exit status 2; the agent checks everything again.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import re
import sys
from pathlib import Path
from typing import Any

from ztm import validate
from ztm.addr import Address
from ztm.apps import paths
from ztm.cli import output
from ztm.cli.appcli import add_sub, call_app, remote_ep, show_parser_help
from ztm.cli.args import Kind, UsageError, ZtmArgumentParser, subcommands
from ztm.cli.args import user_type as one_user_type
from ztm.cli.context import Context, expect_list, expect_obj
from ztm.errors import BadInput

APP = "proxy"

_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")

CONCEPTS = """\
A SOCKS5 and HTTP proxy whose connections leave the mesh at other endpoints.

The entrance (--set-listen) serves SOCKS5 (CONNECT with domain names, IPv4 and IPv6; UDP ASSOCIATE) and an HTTP proxy
(CONNECT, and absolute http:// URIs) on one port. Each connection goes to an exit whose targets match the
destination; names are resolved at the exit. An exit is an endpoint with targets: DOMAIN (that name), *.DOMAIN
(names below it), an IP address or CIDR (also names that resolve into it), or * (anything), minus its exclusions.
Rules on the exit allow or deny users (or *) targets: the first match wins, no match allows. Refusals reach the
client in its protocol: SOCKS5 reply codes, HTTP 403 (denied) or 502 (unreachable, no exit) with the reason.
With --set-auth USER the entrance requires that user name and a password (SOCKS5 username/password, HTTP
Proxy-Authorization: Basic); set one whenever the listen address is reachable from other machines.
Any member may offer any target, so the entrance uses only exits of its own user or of root, unless you name others:
--exit-users USER ... (their exits too) or --exits EP ... (only these endpoints, resolved to ids when set)."""

COMMANDS = """\
commands:
  config [--set-listen [IP:]PORT | --unset-listen] [--set-auth USER [--password-file F] | --clear-auth]
         [--add-target T ...] [--remove-target T ...] [--add-exclusion T ...] [--remove-exclusion T ...]
         [--exits [EP ...] | --exit-users [USER ...]]
                                            change (or, without options, show) the config
  rules [--allow USER TARGET | --deny USER TARGET [--at N]] [--delete N]   list, insert or delete rules
  get [config|rules|exits]                  this endpoint's config or rules, or the mesh's exits
  help [COMMAND]                            this text, or one command's options"""

OVERVIEW = f"{CONCEPTS}\n\n{COMMANDS}"

EXAMPLES = (
    "ztm proxy config --set-listen 1080",
    "ztm proxy config --set-listen 0.0.0.0:1080 --set-auth alice --password-file ~/.ztm-proxy-password",
    "ztm proxy config --add-target '*.corp.example' 10.0.0.0/8 --add-exclusion 10.0.0.1",
    "ztm proxy rules --deny bob '*.secret.corp.example'",
    "ztm proxy rules --allow '*' '*' --at 1",
    "ztm proxy rules --delete 2",
    "ztm proxy get exits",
    "curl -x socks5h://127.0.0.1:1080 http://intranet.corp.example/",
    "curl -x http://127.0.0.1:1080 https://intranet.corp.example/",
)


# ---- argument types ----


def target_type(text: str) -> str:
    value = text.strip()
    hint = "expected DOMAIN, *.DOMAIN, an IP address, a CIDR such as 10.0.0.0/8, or *"
    if value == "*":
        return value
    if "/" in value or _ip(value):
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid target {text!r}: not an IP address or CIDR; {hint}") from None
        return value
    name = value[2:] if value.startswith("*.") else value
    if not name or len(name) > 253 or not name.isascii() or not _DOMAIN.fullmatch(name):
        raise argparse.ArgumentTypeError(f"invalid target {text!r}: {hint}")
    return value


target_type.__name__ = "target"


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def user_type(text: str) -> str:
    if text != "*" and not validate.USER.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid user {text!r}: a user name (lowercase letters, digits, . _ -) or *")
    return text


user_type.__name__ = "user"


def ep_type(text: str) -> str:
    if not validate.NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid endpoint {text!r}: an endpoint name or id")
    return text


ep_type.__name__ = "endpoint"


def listen_type(text: str) -> str:
    try:
        return str(Address.parse(text, default_host="127.0.0.1", what="address"))
    except BadInput as exc:
        raise argparse.ArgumentTypeError(exc.message.removeprefix("address: ")) from None


listen_type.__name__ = "address"


def number_type(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid rule number {text!r}: a number as 'ztm proxy rules' lists them")
    return int(text)


number_type.__name__ = "number"

MAX_CREDENTIAL = 255


def auth_user_type(text: str) -> str:
    size = len(text.encode("utf-8", "surrogateescape"))
    if not text or size > MAX_CREDENTIAL or ":" in text or text != text.strip() or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"invalid user name {text[:80]!r}: 1 to {MAX_CREDENTIAL} bytes, printable, no ':' and no outer spaces"
        )
    return text


auth_user_type.__name__ = "user name"


# ---- the parser tree ----


def proxy_tree(p: argparse.ArgumentParser, prefix: str, cmd: str) -> None:
    """`config|rules|get|help` under `p`; `prefix` is the command line so far, `cmd` what examples start with."""
    sub = p.add_subparsers(
        dest="target", metavar="config|rules|get|help", required=True, prog=prefix, parser_class=ZtmArgumentParser
    )
    config = add_sub(
        sub,
        "config",
        prefix,
        "config [options]",
        "show or change the proxy configuration (entrance and exit)",
        "Without options, show the configuration. --set-listen makes this endpoint an entrance: SOCKS5 and HTTP\n"
        "proxy on that address (IP defaults to 127.0.0.1; anyone who can reach it may use it). Targets make it an\n"
        "exit that connects for the mesh's entrances: DOMAIN, *.DOMAIN, IP or CIDR, or *. Exclusions take targets\n"
        "back out (a name is also excluded when it resolves into an excluded network). All or nothing: an error\n"
        "changes nothing.\n\n"
        "--set-auth USER requires that user name and a password from every client (SOCKS5 username/password,\n"
        "HTTP Proxy-Authorization: Basic). The password is read from --password-file F (its first line; '-' reads\n"
        "standard input), or asked for on the terminal; it is never a command-line argument, and the agent keeps\n"
        "only its scrypt hash. --clear-auth serves without credentials again. Listening on an address other than\n"
        "loopback without credentials works (a firewall may protect it) but prints a warning.\n\n"
        "The entrance uses exits of this endpoint's user and of root only. --exit-users USER ... uses exits of\n"
        "those users too; --exits EP ... uses only those endpoints, whoever's they are (names are resolved to\n"
        "endpoint ids now). Either option without a value clears it.",
        (
            f"{cmd} config --set-listen 1080",
            f"{cmd} config --add-target example.com '*.example.com' 192.168.1.0/24",
            f"{cmd} config --add-exclusion 192.168.1.1 --remove-target example.com",
            f"{cmd} config --unset-listen",
            f"{cmd} config --set-listen 0.0.0.0:1080 --set-auth alice --password-file pw.txt",
            f"printf '%s\\n' \"$PW\" | {cmd} config --set-auth alice --password-file -",
            f"{cmd} config --clear-auth",
            f"{cmd} config --exit-users bob",
            f"{cmd} config --exits office",
        ),
    )
    listen = config.add_mutually_exclusive_group()
    listen.add_argument("--set-listen", metavar="[IP:]PORT", type=listen_type, help="serve the proxy here")
    listen.add_argument("--unset-listen", action="store_true", help="stop serving the proxy (no longer an entrance)")
    auth = config.add_mutually_exclusive_group()
    auth.add_argument("--set-auth", metavar="USER", type=auth_user_type, help="require this user name and a password")
    auth.add_argument("--clear-auth", action="store_true", help="serve without credentials again")
    config.add_argument(
        "--password-file",
        metavar="F",
        help="with --set-auth: read the password from the first line of F ('-': standard input)",
    )
    for flag, what in (
        ("--add-target", "targets to add"),
        ("--remove-target", "targets to remove"),
        ("--add-exclusion", "exclusions to add"),
        ("--remove-exclusion", "exclusions to remove"),
    ):
        config.add_argument(flag, metavar="T", type=target_type, nargs="+", action="extend", default=[], help=what)
    choice = config.add_mutually_exclusive_group()
    choice.add_argument(
        "--exits",
        metavar="EP",
        type=ep_type,
        nargs="*",
        action="extend",
        help="use only these exit endpoints, of any user (none: clear)",
    )
    choice.add_argument(
        "--exit-users",
        metavar="USER",
        type=one_user_type,
        nargs="*",
        action="extend",
        help="also use exits of these users (none: clear)",
    )

    rules = add_sub(
        sub,
        "rules",
        prefix,
        "rules [--allow USER TARGET | --deny USER TARGET [--at N]] [--delete N]",
        "list, insert or delete the exit's allow/deny rules",
        "Rules decide which users may reach which targets through this exit, for every connection, from the\n"
        "caller's certificate identity. They are tried in order: the first rule whose user (or *) and target match\n"
        "decides; when none matches, the connection is allowed (end with '--deny * *' to allow only what is\n"
        "listed). A target in a rule matches names as in --add-target, and networks match the addresses a name\n"
        "resolves to. A deny rule on a name also denies the addresses the exit resolves it to (deny bob localhost\n"
        "denies 127.0.0.1 too); one on *.DOMAIN denies every address given without a name. Without options: list\n"
        "the rules with their numbers.",
        (
            f"{cmd} rules",
            f"{cmd} rules --deny bob '*.secret.example'",
            f"{cmd} rules --allow alice 10.0.0.0/8 --at 1",
            f"{cmd} rules --delete 1",
        ),
    )
    action = rules.add_mutually_exclusive_group()
    action.add_argument("--allow", nargs=2, metavar=("USER", "TARGET"), help="insert an allow rule")
    action.add_argument("--deny", nargs=2, metavar=("USER", "TARGET"), help="insert a deny rule")
    action.add_argument("--delete", metavar="N", type=number_type, help="delete rule N")
    rules.add_argument("--at", metavar="N", type=number_type, help="insert at position N (default: at the end)")

    getter = add_sub(
        sub,
        "get",
        prefix,
        "get [config|rules|exits]",
        "this endpoint's configuration or rules, or the mesh's exits",
        "Show this endpoint's proxy configuration (default) or rules, or every exit of the mesh with its targets.",
        (f"{cmd} get", f"{cmd} get exits", f"{cmd} get rules -o json"),
    )
    getter.add_argument(
        "kind",
        metavar="config|rules|exits",
        nargs="?",
        default="config",
        type=Kind({"config": (), "rules": ("rule",), "exits": ("exit",)}),
        help="what to show (default: config)",
    )

    helper = add_sub(
        sub,
        "help",
        prefix,
        "help [COMMAND]",
        "what the proxy is, and the commands",
        "Explain the proxy and list the commands, or show one command's options and examples.",
        (f"{cmd} help", f"{cmd} help rules"),
    )
    helper.add_argument("topic", nargs="*", metavar="COMMAND", help="command to explain")


def configure_proxy(p: argparse.ArgumentParser) -> None:
    proxy_tree(p, "ztm proxy", "ztm proxy")


# ---- the handler ----


def cmd_proxy(ctx: Context) -> int:
    action: str = ctx.args.target
    if action == "help":
        return _help(ctx)
    if action == "config":
        return _config(ctx)
    if action == "rules":
        return _rules(ctx)
    kind: str = ctx.args.kind
    if kind == "exits":
        return _exits(ctx)
    if kind == "rules":
        _show_rules(ctx, _get_rules(ctx))
        return 0
    _show_config(ctx, _get_config(ctx))
    return 0


def _help(ctx: Context) -> int:
    return show_parser_help(ctx, _own_parser(ctx))


def _own_parser(ctx: Context) -> argparse.ArgumentParser:
    commands = subcommands(ctx.parser)
    if remote_ep(ctx) is not None and "ep" in commands:
        nested = getattr(commands["ep"], "nested", {})
        if APP in nested:
            return nested[APP]  # type: ignore[no-any-return]
    return commands[APP]


def _get_config(ctx: Context) -> dict[str, Any]:
    remote = remote_ep(ctx)
    res = ctx.client().get(ctx.mesh_path("apps", "proxy")) if remote is None else call_app(ctx, APP, remote, "get", {})
    return expect_obj(res, "the proxy configuration")


def _get_rules(ctx: Context) -> list[dict[str, Any]]:
    remote = remote_ep(ctx)
    if remote is not None:
        return expect_list(call_app(ctx, APP, remote, "rules", {}), "the proxy rules")
    res = ctx.client().get(ctx.mesh_path("apps", "proxy", "rules"))
    return expect_list(res, "the proxy rules")


def _config(ctx: Context) -> int:
    a = ctx.args
    body: dict[str, Any] = {}
    if a.set_listen is not None:
        body["set_listen"] = a.set_listen
    if a.unset_listen:
        body["unset_listen"] = True
    if a.password_file is not None and a.set_auth is None:
        raise UsageError("ztm proxy config: --password-file goes with --set-auth; run 'ztm help proxy config'")
    if a.set_auth is not None:
        body["set_auth"] = {"user": a.set_auth, "password": _read_password(a.password_file)}
    if a.clear_auth:
        body["clear_auth"] = True
    for key in ("add_target", "remove_target", "add_exclusion", "remove_exclusion"):
        values = list(dict.fromkeys(getattr(a, key)))
        if values:
            body[key + "s"] = values
    for key in ("exits", "exit_users"):
        if getattr(a, key) is not None:
            body[key] = list(dict.fromkeys(getattr(a, key)))
    if not body:
        _show_config(ctx, _get_config(ctx))
        return 0
    remote = remote_ep(ctx)
    if remote is None:
        res = ctx.client().post(ctx.mesh_path("apps", "proxy", "config"), body)
    else:
        res = call_app(ctx, APP, remote, "config", body)
    _show_config(ctx, expect_obj(res, "proxy config"))
    return 0


def _read_password(path: str | None) -> str:
    """The password from the first line of a file or stdin (`-`), or asked for twice on the terminal."""
    if path is None:
        if not sys.stdin.isatty():
            raise UsageError("ztm proxy config: --set-auth needs --password-file F (or '-' for standard input)")
        password = getpass.getpass("proxy password: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("ztm proxy config: the two passwords differ")
    else:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"ztm proxy config: cannot read the password from {path}: {exc}") from None
        password = text.split("\n", 1)[0].removesuffix("\r")
    size = len(password.encode("utf-8", "surrogateescape"))
    if not password or size > MAX_CREDENTIAL or not password.isprintable():
        raise UsageError(
            f"ztm proxy config: the password must be 1 to {MAX_CREDENTIAL} bytes of printable characters ({size} given)"
        )
    return password


def _exposed(view: dict[str, Any]) -> str | None:
    """The listen address, when the entrance serves beyond loopback without credentials."""
    listen = view.get("listen")
    if not isinstance(listen, str) or view.get("listening") is not True or view.get("auth"):
        return None
    try:
        host = Address.parse(listen).host
    except BadInput:
        return None
    if host == "localhost":
        return None
    try:
        return None if ipaddress.ip_address(host).is_loopback else listen
    except ValueError:
        return listen


def _show_config(ctx: Context, view: dict[str, Any]) -> None:
    exposed = _exposed(view)
    if exposed is not None:
        ctx.warn(
            f"warning: the proxy on {output.clean(exposed)} has no credentials: anyone who can reach it uses the mesh "
            "as this endpoint (add --set-auth USER)"
        )
    if ctx.json:
        ctx.print_json(view)
        return
    listen = view.get("listen")
    if isinstance(listen, str):
        state = "listening" if view.get("listening") is True else "NOT listening: see 'ztm log agent'"
        shown = f"{output.clean(listen)} ({state}; SOCKS5 and HTTP)"
    else:
        shown = "- (not an entrance; set one with --set-listen)"
    targets = view.get("targets")
    rules = view.get("rules")
    counters = view.get("counters")
    pairs = [
        ("endpoint", output.clean(remote_ep(ctx) or "this endpoint")),
        ("listen", shown),
        ("auth", _auth_text(view.get("auth"))),
        ("exits", _exit_choice(view)),
        ("targets", _joined(targets) if targets else "- (not an exit; add targets with --add-target)"),
        ("exclusions", _joined(view.get("exclusions")) or output.MISSING),
        ("rules", f"{len(rules)} (see 'ztm proxy rules')" if isinstance(rules, list) else output.MISSING),
    ]
    by_path = view.get("paths")
    if isinstance(by_path, dict):
        pairs += [(f"paths ({side})", output.clean(paths.shown(by_path.get(side)))) for side in ("entrance", "exit")]
    if isinstance(counters, dict) and counters:
        pairs.append(("counters", ", ".join(f"{output.clean(str(k))}={output.cell(v)}" for k, v in counters.items())))
    ctx.print(output.key_values(pairs))


def _exit_choice(view: dict[str, Any]) -> str:
    """Which exits the entrance uses, in words: the pinned endpoints as `name (id)`, or whose exits."""
    pins, names = view.get("exits"), view.get("names")
    known = names if isinstance(names, dict) else {}
    if isinstance(pins, list) and pins:
        shown = [f"{output.cell(known[p])} ({output.cell(p)})" if isinstance(known.get(p), str) else output.cell(p)
                 for p in pins]  # fmt: skip
        return "only " + ", ".join(shown)
    users = view.get("exit_users")
    extra = [output.cell(u) for u in users] if isinstance(users, list) else []
    return "exits of " + " or ".join(dict.fromkeys(["this endpoint's user", "root", *extra]))


def _auth_text(auth: object) -> str:
    if isinstance(auth, dict) and auth.get("user"):
        return f"user {output.cell(auth.get('user'))}, password set"
    return "- (no credentials required; set them with --set-auth USER)"


def _joined(value: object) -> str:
    return ", ".join(output.cell(v) for v in value) if isinstance(value, list) else ""


def _rules(ctx: Context) -> int:
    a = ctx.args
    remote = remote_ep(ctx)
    if a.allow or a.deny:
        action, pair = ("allow", a.allow) if a.allow else ("deny", a.deny)
        try:
            user, target = user_type(pair[0]), target_type(pair[1])
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"ztm proxy rules: {exc}; run 'ztm help proxy rules' for usage") from None
        body: dict[str, Any] = {"action": action, "user": user, "target": target}
        if a.at is not None:
            body["at"] = a.at
        if remote is None:
            res: Any = ctx.client().post(ctx.mesh_path("apps", "proxy", "rules"), body)
        else:
            res = call_app(ctx, APP, remote, "insert_rule", body)
    elif a.delete is not None:
        if a.at is not None:
            raise UsageError("ztm proxy rules: --at goes with --allow or --deny; run 'ztm help proxy rules'")
        if remote is None:
            res = ctx.client().delete(ctx.mesh_path("apps", "proxy", "rules", str(a.delete)))
        else:
            res = call_app(ctx, APP, remote, "delete_rule", {"number": a.delete})
    else:
        if a.at is not None:
            raise UsageError("ztm proxy rules: --at goes with --allow or --deny; run 'ztm help proxy rules'")
        res = _get_rules(ctx)
    _show_rules(ctx, expect_list(res, "the proxy rules"))
    return 0


def _show_rules(ctx: Context, rules: list[dict[str, Any]]) -> None:
    if ctx.json:
        ctx.print_json(rules)
    elif rules:
        rows = [[output.cell(r.get(k)) for k in ("number", "action", "user", "target")] for r in rules]
        ctx.print(output.table(("#", "ACTION", "USER", "TARGET"), rows))
        ctx.print("(the first matching rule decides; no match allows)")
    else:
        ctx.print("no rules: every user of the mesh may reach every target of this exit")


def _exits(ctx: Context) -> int:
    exits = ctx.get_list(ctx.mesh_path("apps", "proxy", "exits"))
    if ctx.json:
        ctx.print_json(exits)
        return 0
    if not exits:
        mesh = output.clean(ctx.mesh())
        ctx.print(f"no proxy exits in mesh {mesh}: add targets with 'ztm proxy config --add-target' on one")
        return 0
    rows = [
        [
            output.cell(e.get("name")) + ("" if e.get("online") is True else " (offline)"),
            output.cell(e.get("user")),
            "yes" if e.get("used") is True else "no",
            _joined(e.get("targets")) or output.MISSING,
            _joined(e.get("exclusions")) or output.MISSING,
        ]
        for e in exits
    ]
    ctx.print(output.table(("EXIT", "USER", "USED HERE", "TARGETS", "EXCLUSIONS"), rows))
    return 0
