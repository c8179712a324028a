"""Argument parsing: one `argparse` parser per command, global options everywhere, errors on one line.

`ZtmArgumentParser` never prints a usage dump and never calls `sys.exit`: a bad flag raises `UsageError` (one line
plus a hint, exit 2) and `--help` raises `HelpShown` after printing the help.
Leaf parsers parse intermixed, so options may come before, between or after positionals (`ztm get ep -o json bob`).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

from ztm import validate
from ztm.addr import Address
from ztm.apps.net.options import check_dns_suffix, check_tun_name
from ztm.config import DEFAULT_HUB_PORT
from ztm.errors import BadInput
from ztm.timefmt import parse_since

GLOBAL_VALUE_OPTIONS = ("--agent", "--mesh", "--output", "-o", "--timeout")
LABEL_RE = re.compile(r"^[A-Za-z0-9_.=:/-]{1,63}$")


class UsageError(Exception):
    """A bad command line: printed as one line, exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HelpShown(Exception):
    """`--help` printed the help; exit with `code`."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; option help in a column wide enough for `--timeout SECONDS`."""

    def __init__(self, prog: str) -> None:
        import shutil

        width = min(max(shutil.get_terminal_size().columns - 2, 60), 118)
        super().__init__(prog, max_help_position=28, width=width)


Takeover = Callable[["ZtmArgumentParser", list[str], Any], tuple[Any, list[str]]]


class ZtmArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._intermixing = False
        self.topic: str | None = None
        """What follows `ztm help` for this parser, when its prog does not spell it (`ztm ep NAME tunnel` is the
        topic `ep tunnel`)."""
        self.takeover: Takeover | None = None
        """Parses the whole argument list instead of argparse: for a command whose words after its own positionals
        belong to another parser tree (`ztm ep NAME tunnel ...`)."""
        self.nested: dict[str, ZtmArgumentParser] = {}
        """Parser trees a `takeover` hands over to, by the word that selects them; for help and completion."""
        self.nested_dest = ""
        """The namespace attribute holding that word."""
        self.nested_after = 0
        """How many positionals come before that word (1 for `ep NAME tunnel`)."""

    def error(self, message: str) -> NoReturn:
        topic = self.topic or self.prog.removeprefix("ztm").strip()
        hint = f"run 'ztm help {topic}' for usage" if topic else "run 'ztm help' to see the commands"
        raise UsageError(f"{self.prog}: {' '.join(message.split())}; {hint}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise HelpShown(status)

    def print_help(self, file: SupportsWrite[str] | None = None) -> None:
        (file or sys.stdout).write(self.format_help())

    def has_subcommands(self) -> bool:
        return any(isinstance(a, argparse._SubParsersAction) for a in self._actions)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        if self.takeover is not None and not self._intermixing:
            return self.takeover(self, list(sys.argv[1:] if args is None else args), namespace)
        if self._intermixing or self.has_subcommands():
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parsers of `parser`'s subcommands by name (aliases included)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def help_children(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The help topics below `parser`: its subcommands, or the parser trees it hands over to (`ztm help ep tunnel`)."""
    found = subcommands(parser)
    if not found and isinstance(parser, ZtmArgumentParser):
        found = dict(parser.nested)
    return found


def chosen_child(parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> str | None:
    """The word of `namespace` that selected one of `help_children(parser)`, if any."""
    dest = next((a.dest for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if dest is None and isinstance(parser, ZtmArgumentParser) and parser.nested:
        dest = parser.nested_dest
    chosen = getattr(namespace, dest, None) if dest else None
    return chosen if isinstance(chosen, str) and chosen in help_children(parser) else None


# ---- value types: each raises ArgumentTypeError with a one-line reason, so a bad value exits 2 ----


class Kind:
    """A positional naming an object kind, with aliases: `Kind({"ep": ("endpoint", "endpoints", "eps")})`."""

    def __init__(self, kinds: Mapping[str, Sequence[str]]) -> None:
        self.kinds = kinds
        self.words = tuple(kinds)
        self._lookup = {alias: kind for kind, aliases in kinds.items() for alias in (kind, *aliases)}
        self.__name__ = "kind"

    def __call__(self, text: str) -> str:
        kind = self._lookup.get(text.lower())
        if kind is None:
            raise argparse.ArgumentTypeError(f"unknown kind {text!r}: expected {_alternatives(self.words)}")
        return kind


def _alternatives(words: Sequence[str]) -> str:
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else words[0]


MESH_KINDS = {"mesh": ("meshes",)}
HUB_KINDS = {"hub": ("hubs",)}
EP_KINDS = {"ep": ("endpoint", "endpoints", "eps")}
APP_KINDS = {"app": ("apps",)}
FILE_KINDS = {"file": ("files",)}
AUDIT_KINDS = {"audit": ("audit-log",)}
ROUTE_KINDS = {"route": ("routes",)}


def address_type(*, default_host: str | None = None, default_port: int | None = None) -> Callable[[str], Address]:
    def parse(text: str) -> Address:
        return _address(text, default_host, default_port)

    parse.__name__ = "address"
    return parse


def _address(text: str, default_host: str | None, default_port: int | None) -> Address:
    text = text.strip()
    if default_port is not None and text and not text.isdigit():
        if text.startswith("[") and text.endswith("]"):
            text = f"{text}:{default_port}"
        elif text.count(":") > 1 and not text.startswith("["):
            text = f"[{text}]:{default_port}"
        elif ":" not in text:
            text = f"{text}:{default_port}"
    try:
        return Address.parse(text, default_host=default_host, what="address")
    except BadInput as exc:
        raise argparse.ArgumentTypeError(exc.message.removeprefix("address: ")) from None


def names_type(text: str) -> list[Address]:
    """`--names A[,B...]`: hub addresses agents dial; port 8888 when none is given."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("empty; give the address agents dial, e.g. 1.2.3.4:8888")
    return [_address(p, None, DEFAULT_HUB_PORT) for p in parts]


names_type.__name__ = "address list"


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, got {value}")
        return value

    parse.__name__ = "number"
    return parse


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def user_type(text: str) -> str:
    """One user name (`validate.USER`), for options such as the terminal's `--add-user` and `--exit-users`."""
    if not validate.USER.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid user {text!r}: 1-63 lowercase letters, digits, '.', '_' or '-'")
    return text


user_type.__name__ = "user"


def seconds_type(text: str) -> float:
    """A positive duration: `30`, `2.5`, `30s`, `5m`, `12h`, `7d`."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"expected seconds such as 30 or a duration such as 5m, 12h, 7d; got {text!r}")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < value <= 10 * 365 * 86400:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 10 years, got {text!r}")
    return value


seconds_type.__name__ = "duration"


def since_type(text: str) -> float:
    """`--since T`: unix seconds, an ISO time or a duration ago (`ztm.timefmt.parse_since`), as unix seconds."""
    try:
        return parse_since(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


since_type.__name__ = "time"


def output_type(text: str) -> str:
    value = text.lower()
    if value not in ("table", "json"):
        raise argparse.ArgumentTypeError(f"expected table or json, got {text!r}")
    return value


def label_type(text: str) -> list[str]:
    """One or several comma-separated labels, validated as the agent does."""
    labels = [p.strip() for p in text.split(",") if p.strip()]
    if not labels:
        raise argparse.ArgumentTypeError("empty label")
    for label in labels:
        if not LABEL_RE.match(label):
            raise argparse.ArgumentTypeError(
                f"bad label {label!r}: a label is key=value or a word of 1-63 characters from A-Z a-z 0-9 _ . = : / -"
            )
    return labels


label_type.__name__ = "label"


def zone_type(text: str) -> str:
    """`--zone NAME`: a zone name, or "" for none."""
    try:
        return validate.zone(text.strip(), "zone")
    except BadInput as exc:
        raise argparse.ArgumentTypeError(exc.message.removeprefix("zone: ")) from None


zone_type.__name__ = "zone"


def checked_type(check: Callable[[str], str], name: str) -> Callable[[str], str]:
    """An argparse type from a checker that returns the value or raises ValueError with a one-line reason."""

    def parse(text: str) -> str:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


tun_name_type = checked_type(check_tun_name, "interface prefix")
"""`--tun-name PREFIX`: an interface name prefix (`ztm.apps.net.options.check_tun_name`)."""
dns_suffix_type = checked_type(check_dns_suffix, "DNS suffix")
"""`--dns-suffix SUFFIX`: DNS labels joined by dots (`ztm.apps.net.options.check_dns_suffix`)."""


def mesh_range_type(text: str) -> str:
    """`--mesh-range CIDR`: an IPv4 network, prefix 8..24."""
    from ztm.hub import meshaddr  # only when given: the CLI's start-up imports no hub module

    try:
        return str(meshaddr.parse_range(text, "mesh range"))
    except BadInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


mesh_range_type.__name__ = "mesh range"


def seconds_within(low: float, high: float, example: str) -> Callable[[str], float]:
    """An argparse type for a number of seconds from `low` to `high` (one-line errors naming `example`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, e.g. {example}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {low:g} to {high:g} seconds")
        return value

    parse.__name__ = "seconds"
    return parse


keepalive_type = seconds_within(1, 3600, "25")
"""`--p2p-keepalive SECONDS` (NAT routers forget idle TCP mappings after minutes to hours)."""

heartbeat_type = seconds_within(1, 300, "5")
"""`ztm run hub --heartbeat SECONDS`: how often agents show they are alive (offline after 3 silent intervals)."""


def birthday_type(text: str) -> int:
    """`--p2p-birthday K`: 0 (off) to `punchmsg.MAX_BIRTHDAY` sockets a side."""
    from ztm.agent.punchmsg import MAX_BIRTHDAY

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of sockets, e.g. 512 (0: off)") from None
    if not 0 <= value <= MAX_BIRTHDAY:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give 0 (off) to {MAX_BIRTHDAY} sockets")
    return value


birthday_type.__name__ = "sockets"


birthday_every_type = seconds_within(1, 86400, "300")
"""`--p2p-birthday-every SECONDS`."""


credit_warn_type = seconds_within(1, 86400, "30")
"""`--credit-warn SECONDS`."""


def path_type(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    return Path(text).expanduser()


path_type.__name__ = "path"


# ---- global options ----


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """`--agent`, `--mesh`, `-o`, `--timeout` on `parser`, skipping any it defines itself (as `ztm config` does)."""
    taken = set(parser._option_string_actions)
    group = parser.add_argument_group("global options (accepted before or after the command)")
    sup = argparse.SUPPRESS
    if "--agent" not in taken:
        group.add_argument(
            "--agent",
            metavar="HOST:PORT",
            default=sup,
            help="agent API address (default: env ZTM_AGENT, then 'ztm config', then 127.0.0.1:7777)",
        )
    if "--mesh" not in taken:
        group.add_argument(
            "--mesh",
            metavar="NAME",
            default=sup,
            help="mesh to act on (default: env ZTM_MESH, then 'ztm config', then the agent's only mesh)",
        )
    if "--output" not in taken:
        group.add_argument(
            "-o",
            "--output",
            metavar="table|json",
            type=output_type,
            default=sup,
            help="print tables for people (default) or the API's JSON for scripts",
        )
    if "--timeout" not in taken:
        group.add_argument(
            "--timeout",
            metavar="SECONDS",
            type=seconds_type,
            default=sup,
            help="give up on the agent after this long (default 10)",
        )


def find_command(argv: Sequence[str]) -> int | None:
    """Index in `argv` of the command word, skipping global options and their values."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return i + 1 if i + 1 < len(argv) else None
        if word in GLOBAL_VALUE_OPTIONS:
            i += 2
            continue
        if word.startswith("-"):
            i += 1
            continue
        return i
    return None


# ---- per-command options ----


def configure_help(p: argparse.ArgumentParser) -> None:
    p.add_argument("topic", nargs="*", metavar="COMMAND", help="command (and subcommand) to explain")


def configure_version(p: argparse.ArgumentParser) -> None:
    del p


def configure_config(p: argparse.ArgumentParser) -> None:
    sup = argparse.SUPPRESS
    p.add_argument("--agent", metavar="HOST:PORT", default=sup, help="save the agent address ztm talks to")
    p.add_argument("--mesh", metavar="NAME", default=sup, help="save the mesh ztm acts on")
    p.add_argument(
        "--unset", metavar="agent|mesh", action="append", choices=("agent", "mesh"), help="forget a saved default"
    )


def hub_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen",
        metavar="ADDR",
        type=address_type(default_host="0.0.0.0"),
        help="address to listen on (default 0.0.0.0:8888; ':8888' or '8888' mean all interfaces)",
    )
    p.add_argument(
        "--names",
        metavar="ADDR",
        type=names_type,
        action="extend",
        help="address(es) agents dial, repeatable or comma-separated (default: --listen unless it is 0.0.0.0/::)",
    )
    p.add_argument(
        "--permit", metavar="FILE", type=path_type, help="write the root permit here on first start (mode 0600)"
    )
    p.add_argument("--data", metavar="DIR", type=path_type, help="state directory (default: $ZTM_DATA or ~/.ztm)")
    p.add_argument(
        "--max-agents", metavar="N", type=int_range(1, 1_000_000), help="most agents connected at once (default 10000)"
    )
    p.add_argument(
        "--max-endpoints-per-user",
        metavar="N",
        type=int_range(1, 1_000_000),
        help="most endpoints a user other than root may enrol (default 100; root frees some with 'ztm delete ep')",
    )
    p.add_argument(
        "--cert-ttl",
        metavar="SECONDS",
        type=seconds_type,
        help="lifetime of endpoint certificates, e.g. 86400 or 24h (default 24h; agents renew at half-life)",
    )
    p.add_argument(
        "--heartbeat",
        metavar="SECONDS",
        type=heartbeat_type,
        help="seconds between agents' liveness PINGs, 1 to 300 (default 10); offline after 3 intervals of silence",
    )
    p.add_argument(
        "--admin", metavar="ADDR", type=address_type(default_host="127.0.0.1"), help="local admin/metrics address"
    )
    p.add_argument(
        "--store",
        metavar="URL",
        help="postgresql://USER@HOST[:PORT]/DB shared by every hub of the mesh (default: SQLite in the data "
        "directory); the password comes from PGPASSWORD, PGPASSFILE or --store-password-file",
    )
    p.add_argument("--store-password-file", metavar="FILE", type=path_type, help="file holding the database password")
    p.add_argument(
        "--ca-key-file",
        metavar="FILE",
        type=path_type,
        help="with --store: the key sealing the mesh's CA key in the database (default DATA/ca.key; the first hub "
        "makes it, copy it to every other hub, mode 0600)",
    )
    p.add_argument("--zone", metavar="NAME", type=zone_type, help="this hub's zone (agents of that zone prefer it)")
    p.add_argument(
        "--mesh-range",
        metavar="CIDR",
        type=mesh_range_type,
        help="the IPv4 range endpoint addresses come from, fixed when the hub creates the mesh (prefix /8../24; "
        "default 100.64.0.0/10)",
    )


def agent_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen",
        metavar="ADDR",
        type=address_type(default_host="127.0.0.1"),
        help="API address (default 127.0.0.1:7777)",
    )
    p.add_argument("--data", metavar="DIR", type=path_type, help="state directory (default: $ZTM_DATA or ~/.ztm)")
    p.add_argument("--join", metavar="MESH", help="join this mesh on start (with --join-as and --permit)")
    p.add_argument("--join-as", metavar="NAME", help="endpoint name to join as")
    p.add_argument("--permit", metavar="FILE", type=path_type, help="permit file to join with")
    p.add_argument(
        "--direct",
        metavar="ADDR",
        type=address_type(default_host="0.0.0.0"),
        help="accept direct connections from peers here, e.g. 0.0.0.0:7771 (default: off; peers use the hub relay)",
    )
    p.add_argument(
        "--direct-announce",
        metavar="ADDR",
        type=address_type(),
        help="the address peers dial for --direct, if not that one (e.g. a port forwarded on a NAT router)",
    )
    p.add_argument(
        "--no-p2p",
        action="store_true",
        help="do not punch direct channels to peers behind NAT (default: on; the hub relays what cannot be punched)",
    )
    p.add_argument(
        "--p2p-keepalive",
        metavar="SECONDS",
        type=keepalive_type,
        help="seconds between keepalives on idle punched channels, to hold NAT mappings open (default 5)",
    )
    p.add_argument(
        "--p2p-birthday",
        metavar="K",
        type=birthday_type,
        help="to reach a peer behind a symmetric NAT after an ordinary punch failed, open K sockets a side towards "
        "its hub-attested address (default 512; 0: never)",
    )
    p.add_argument(
        "--p2p-birthday-every",
        metavar="SECONDS",
        type=birthday_every_type,
        help="at most one birthday attempt per peer this often, and 4 in all in twice that time (default 300)",
    )
    p.add_argument(
        "--credit-warn",
        metavar="SECONDS",
        type=credit_warn_type,
        help="warn in the log when a stream through the hub has waited this long for flow-control credit while the "
        "hub answers (default 30)",
    )
    p.add_argument(
        "--zone",
        metavar="NAME",
        type=zone_type,
        help="prefer the online hubs of this zone (kept for later starts; --zone '' for none; default none)",
    )
    p.add_argument(
        "--tun",
        action="store_true",
        help="network mode: an interface (ztm0, ...) with this endpoint's mesh addresses in every joined mesh; "
        "needs CAP_NET_ADMIN (docs/network-mode.md)",
    )
    p.add_argument(
        "--tun-name",
        metavar="PREFIX",
        type=tun_name_type,
        help="interface name prefix with --tun: PREFIX0, PREFIX1, ... one per mesh (default ztm)",
    )
    p.add_argument(
        "--accept-routes",
        action="store_true",
        help="with --tun: reach the subnets other endpoints route (approved by root) through them",
    )
    p.add_argument(
        "--dns-suffix",
        metavar="SUFFIX",
        type=dns_suffix_type,
        help="mesh names are NAME.MESH.SUFFIX (default ztm)",
    )
    p.add_argument(
        "--expose-ports",
        action="store_true",
        help="without --tun too, let mesh members reach this machine's TCP and UDP ports on 127.0.0.1 (port "
        "streams: the tunnel's --target EP:PORT, the proxy's NAME.MESH.ztm and mesh addresses); with a policy, only "
        "ip/tcp:PORT and ip/udp:PORT rules allow it",
    )


def _process_subcommands(p: argparse.ArgumentParser, verb: str, description: str) -> None:
    sub = p.add_subparsers(
        dest="target", metavar="hub|agent", required=True, prog=p.prog, parser_class=ZtmArgumentParser
    )
    hub = sub.add_parser(
        "hub",
        help=f"{verb} a hub",
        usage=f"ztm {verb} hub [--listen ADDR] [--names ADDR ...] [--permit FILE] [options]",
        description=f"{description} a hub: the certificate authority, registry and relay of a mesh.",
        epilog=(
            "examples:\n"
            f"  ztm {verb} hub --listen 0.0.0.0:8888 --names 1.2.3.4:8888 --permit root.json\n"
            f"  ztm {verb} hub --listen 10.0.0.5:8888 --data /var/lib/ztm-hub"
        ),
    )
    hub_options(hub)
    agent = sub.add_parser(
        "agent",
        help=f"{verb} an agent",
        usage=(
            f"ztm {verb} agent [--listen ADDR] [--data DIR] [--join MESH --join-as NAME --permit FILE] [--direct ADDR]"
            " [--zone NAME]"
        ),
        description=f"{description} an agent: the daemon that joins meshes and serves the local API.",
        epilog=(
            "examples:\n"
            f"  ztm {verb} agent\n"
            f"  ztm {verb} agent --listen 7778 --data ~/.ztm-2 --join my-mesh --join-as lab --permit root.json"
        ),
    )
    agent_options(agent)


def configure_hub(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="hub_command", metavar="migrate", required=True)
    m = sub.add_parser(
        "migrate",
        help="move a single hub's mesh from its SQLite store into PostgreSQL",
        description="Copy the mesh of a stopped hub (its data directory) into an empty PostgreSQL database, its "
        "private keys sealed with the CA key file (made if missing). Then start the hub (and more hubs) with "
        "--store: permits and joined agents keep working.",
    )
    m.add_argument("--from", dest="source", metavar="DATA_DIR", type=path_type, required=True,
                   help="the data directory of the hub to move (its --data); the hub must be stopped")  # fmt: skip
    m.add_argument("--to", dest="target", metavar="URL", required=True,
                   help="postgresql://USER@HOST[:PORT]/DB, an empty database (password: PGPASSWORD, PGPASSFILE or "
                   "--store-password-file)")  # fmt: skip
    m.add_argument("--store-password-file", metavar="FILE", type=path_type, help="file holding the database password")
    m.add_argument("--ca-key-file", metavar="FILE", type=path_type,
                   help="the CA key file to seal the keys with (default DATA_DIR/ca.key, made if missing)")  # fmt: skip


def configure_run(p: argparse.ArgumentParser) -> None:
    _process_subcommands(p, "run", "Run in the foreground (until Ctrl-C or SIGTERM)")


def configure_start(p: argparse.ArgumentParser) -> None:
    from ztm.cli.apps import add_start_target

    _process_subcommands(p, "start", "Start in the background, as a systemd service where systemd runs,")
    add_start_target(p)


def configure_stop(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target", metavar="hub|agent|app", type=Kind({"hub": (), "agent": (), "app": ()}), help="what to stop"
    )
    p.add_argument("name", metavar="NAME", nargs="?", help="the app to stop (app only; see 'ztm get app')")
    p.add_argument("--data", metavar="DIR", type=path_type, help="state directory it was started with")


def configure_join(p: argparse.ArgumentParser) -> None:
    p.add_argument("mesh_name", metavar="MESH", help="local name for the mesh (your choice)")
    p.add_argument("--as", dest="join_as", metavar="NAME", required=True, help="endpoint name others will see")
    p.add_argument("--permit", metavar="FILE", type=path_type, required=True, help="permit file (JSON)")
    p.add_argument(
        "--label",
        metavar="LABEL",
        type=label_type,
        action="extend",
        default=[],
        help="label for this endpoint, repeatable or comma-separated",
    )


def configure_leave(p: argparse.ArgumentParser) -> None:
    p.add_argument("mesh_name", metavar="MESH", help="mesh to leave")


def configure_get(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "kind",
        metavar="mesh|hub|ep|app|file|audit|route",
        type=Kind({**MESH_KINDS, **HUB_KINDS, **EP_KINDS, **APP_KINDS, **FILE_KINDS, **AUDIT_KINDS, **ROUTE_KINDS}),
        help="what to list (plurals and endpoint/eps work too; for file, NAME is a path prefix)",
    )
    p.add_argument("name", metavar="NAME", nargs="?", help="show only this one")
    p.add_argument(
        "--available", action="store_true", help="app only: the apps published in the mesh, to 'ztm download app'"
    )
    p.add_argument(
        "--since", metavar="T", type=since_type, help="audit only: from T on (unix seconds, ISO time, or 1h, 2d ago)"
    )
    p.add_argument("--user", metavar="USER", type=user_type, help="audit only: the entries of this user")
    p.add_argument(
        "--limit", metavar="N", type=int_range(1, 10_000), help="audit only: at most N entries (default 1000)"
    )


def configure_describe(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "kind",
        metavar="mesh|hub|ep|file",
        type=Kind({**MESH_KINDS, **HUB_KINDS, **EP_KINDS, **FILE_KINDS}),
        help="what to describe",
    )
    p.add_argument("name", metavar="NAME", nargs="?", help="default: the current mesh / its only hub / this endpoint")


def configure_ping(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="ep", type=Kind(EP_KINDS), help="the word ep (endpoint)")
    p.add_argument("name", metavar="NAME", help="endpoint name or id")
    p.add_argument(
        "-c", "--count", metavar="N", type=int_range(1, 20), default=4, help="pings to send (1-20, default 4)"
    )


def configure_label(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="ep NAME", nargs="*", help="endpoint (default: this endpoint)")
    p.add_argument(
        "--add", metavar="LABEL", type=label_type, nargs="+", action="extend", default=[], help="labels to add"
    )
    p.add_argument(
        "--delete", metavar="LABEL", type=label_type, nargs="+", action="extend", default=[], help="labels to remove"
    )


def configure_log(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="hub|ep|agent", type=Kind({**HUB_KINDS, **EP_KINDS, "agent": ()}), help="whose log")
    p.add_argument("name", metavar="NAME", nargs="?", help="endpoint (ep only; default: this endpoint)")
    p.add_argument(
        "-n", "--lines", metavar="N", type=int_range(1, 100_000), default=100, help="last N lines (default 100)"
    )


def configure_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="ep", type=Kind(EP_KINDS), help="the word ep (endpoint)")
    p.add_argument("name", metavar="NAME", nargs="?", help="only the traffic with this peer")


def configure_identity(p: argparse.ArgumentParser) -> None:
    del p


def configure_invite(p: argparse.ArgumentParser) -> None:
    p.add_argument("user", metavar="USER", help="user to invite")
    p.add_argument(
        "--identity",
        metavar="FILE",
        type=path_type,
        required=True,
        help="the invitee's public key PEM (they make it with 'ztm identity > NAME.pem')",
    )
    p.add_argument("--permit", metavar="OUT", type=path_type, help="write the permit here (default: stdout)")
    p.add_argument("--days", metavar="N", type=int_range(1, 3650), help="permit validity in days")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def configure_evict(p: argparse.ArgumentParser) -> None:
    p.add_argument("user", metavar="USER", help="user to evict")


def configure_root_admin(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "state", metavar="on|off", nargs="?", type=Kind({"on": (), "off": ()}), help="turn it on or off (none: show)"
    )


def configure_delete(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="ep", type=Kind(EP_KINDS), help="the word ep (endpoint)")
    p.add_argument("name", metavar="NAME", help="endpoint name or id")


def configure_completion(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", metavar="bash|zsh", type=Kind({"bash": (), "zsh": ()}), help="shell to complete for")
