"""`ztm policy get|set|test|diff|history|rollback|check|help` and `ztm get audit`: the mesh's access policy and the
hub's audit log, through the agent's pass-through routes (`/api/meshes/MESH/policy...`, `.../audit`).

The hub decides who may set or roll back the policy (root and the policy's admins) and who may read the audit log
(the same); the CLI reads policy files (UTF-8, at most `MAX_POLICY_BYTES`), checks `--from`, `--to` and app targets
with the policy language's own parsers (a typo fails at once with exit status 2), and prints what came from the mesh
through `output.clean`: a policy text or a note written by another member cannot drive this terminal.
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import Any

from ztm import validate
from ztm.cli import output
from ztm.cli.appcli import add_sub, show_help
from ztm.cli.args import ZtmArgumentParser, int_range, path_type
from ztm.cli.context import Context, expect_list, expect_obj
from ztm.errors import BadInput, ZtmError
from ztm.policy import MAX_POLICY_BYTES, parse_app_target, parse_subject
from ztm.policy.who import TAG
from ztm.timefmt import iso

APP = "policy"
AUDIT_LIMIT = 1000
"""The hub's default number of audit entries per answer."""
DETAIL_WIDTH = 100

OVERVIEW = """\
One access policy per mesh, kept by the hub and versioned: who may reach which endpoint through which app (tunnel,
proxy, terminal, files, installed apps). No policy set: each app's own lists decide, as before. Once one is set,
what no rule of it allows is refused (default deny), at the endpoint that serves, and the apps' own lists still apply
on top. A policy is JSON with comments and trailing commas, in the shape of Tailscale's policy file: groups,
tagOwners, acls (accept rules) and tests. 'set' runs the tests first and refuses the whole policy if one fails.
Only root and the users listed in its "admins" may set it or roll it back; every member may read it and check."""

COMMANDS = """\
commands:
  get [--version N]                         the policy in force (or version N) on stdout
  set FILE [--note TEXT]                    make FILE the mesh's policy (its tests must pass)
  test FILE                                 check FILE and run its tests at the hub, setting nothing
  diff FILE                                 unified diff from the policy in force to FILE
  history                                   every version: who set it, when, its note
  rollback N                                make version N's text the policy again (as a new version)
  check --from USER[@EP] --to EP TARGET     would the policy allow it, and which rule (line) decides
  help [COMMAND]                            this text, or one command's options"""

DESCRIPTION = f"{OVERVIEW}\n\n{COMMANDS}"

EXAMPLES = (
    "ztm policy get > policy.hujson",
    "ztm policy test policy.hujson",
    "ztm policy diff policy.hujson",
    "ztm policy set policy.hujson --note 'ops may reach the database'",
    "ztm policy history",
    "ztm policy rollback 3",
    "ztm policy check --from ops1 --to db-1 tunnel/tcp/pg",
    "ztm get audit --since 1h --user bob",
)


# ---- argument types: one-line reasons, exit status 2 ----


def subject_type(text: str) -> str:
    try:
        parse_subject(text)
    except BadInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


subject_type.__name__ = "USER[@EP]"


def target_type(text: str) -> str:
    try:
        parse_app_target(text)
    except BadInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


target_type.__name__ = "app target"


def place_type(text: str) -> str:
    """`--to`: an endpoint name, or `tag:NAME` (any endpoint with that tag)."""
    if text.startswith("tag:"):
        if not TAG.fullmatch(text):
            raise argparse.ArgumentTypeError(f"invalid tag {text!r}: tag:NAME, NAME of letters, digits, '.', '_', '-'")
        return text
    try:
        return validate.endpoint_name(text)
    except BadInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


place_type.__name__ = "endpoint name or tag"


def note_type(text: str) -> str:
    """`--note`: the check the agent and the hub make (`validate.note`), said before anything is sent."""
    try:
        return validate.note(text)
    except BadInput:
        raise argparse.ArgumentTypeError(
            f"a note is one line of at most {validate.MAX_NOTE} printable characters"
        ) from None


note_type.__name__ = "note"


# ---- parsers ----


def configure_policy(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(
        dest="target",
        metavar="get|set|test|diff|history|rollback|check|help",
        required=True,
        prog="ztm policy",
        parser_class=ZtmArgumentParser,
    )
    getter = add_sub(
        sub,
        "get",
        "ztm policy",
        "get [--version N]",
        "print the policy in force, or an older version",
        "Print the mesh's policy text on stdout as it was set (who set it and when go to stderr), so that\n"
        "'ztm policy get > FILE' gives a file to edit and set again. With -o json: the hub's answer.",
        ("ztm policy get", "ztm policy get --version 2 > v2.hujson"),
    )
    getter.add_argument("--version", metavar="N", type=int_range(1, 2**31 - 1), help="an older version")
    setter = add_sub(
        sub,
        "set",
        "ztm policy",
        "set FILE [--note TEXT]",
        "make FILE the mesh's policy (root and policy admins only)",
        "Send FILE to the hub, which checks it (errors name the line and column), runs its tests with the mesh's\n"
        "current endpoints and their tags, and only if all pass stores it as a new version and sends it to every\n"
        "endpoint. A failed test refuses the whole policy and changes nothing; the failure is printed.",
        ("ztm policy set policy.hujson", "ztm policy set policy.hujson --note 'ticket 42: ops reach db'"),
    )
    setter.add_argument("file", metavar="FILE", type=path_type, help="the policy file (UTF-8)")
    setter.add_argument("--note", metavar="TEXT", type=note_type, default="", help="why: shown in the history")
    tester = add_sub(
        sub,
        "test",
        "ztm policy",
        "test FILE",
        "check FILE and run its tests at the hub without setting it",
        "A dry run of 'ztm policy set FILE': the hub checks the file and runs its tests, and stores nothing.",
        ("ztm policy test policy.hujson",),
    )
    tester.add_argument("file", metavar="FILE", type=path_type, help="the policy file (UTF-8)")
    differ = add_sub(
        sub,
        "diff",
        "ztm policy",
        "diff FILE",
        "unified diff from the policy in force to FILE",
        "Show what setting FILE would change: a unified diff (as diff -u) from the policy in force to FILE,\n"
        "computed here. Exit status 0 whether or not they differ.",
        ("ztm policy diff policy.hujson",),
    )
    differ.add_argument("file", metavar="FILE", type=path_type, help="the policy file (UTF-8)")
    add_sub(
        sub,
        "history",
        "ztm policy",
        "history",
        "every version of the policy, newest first",
        "List every version of the mesh's policy, newest first: who set it, when, its size, its SHA-256 and note.",
        ("ztm policy history", "ztm policy history -o json"),
    )
    roller = add_sub(
        sub,
        "rollback",
        "ztm policy",
        "rollback N",
        "make version N's text the policy again (root and policy admins only)",
        "Set the text of version N again, as a new version (noted 'rollback to N'); its tests run first, as for\n"
        "'ztm policy set'.",
        ("ztm policy rollback 3",),
    )
    roller.add_argument("version", metavar="N", type=int_range(1, 2**31 - 1), help="the version to restore")
    checker = add_sub(
        sub,
        "check",
        "ztm policy",
        "check --from USER[@EP] --to EP TARGET [--file FILE]",
        "would the policy allow it? the deciding rule and its line",
        "Ask the hub whether the policy in force (or the draft in FILE) allows USER (from endpoint EP, if given) to\n"
        "reach endpoint --to through TARGET, and which rule (file line) decides. TARGET is tunnel/tcp/NAME,\n"
        "tunnel/udp/NAME, proxy/HOST:PORT, terminal, files/PATH, files-write/PATH, app/NAME or a network-mode\n"
        "packet: ip/tcp:PORT, ip/udp:PORT, ip/icmp, ip/proto:N, or ip/ADDRESS/... routed through the endpoint.",
        (
            "ztm policy check --from ops1 --to db-1 tunnel/tcp/pg",
            "ztm policy check --from ops1 --to gw ip/10.20.1.5/tcp:22",
            "ztm policy check --from bob@laptop --to build-01 terminal",
            "ztm policy check --from alice --to nas files/shared/a.txt --file draft.hujson",
        ),
    )
    checker.add_argument("what", metavar="TARGET", type=target_type, help="the app target, e.g. tunnel/tcp/pg")
    checker.add_argument("--from", dest="source", metavar="USER[@EP]", type=subject_type, required=True,
                         help="the caller: a user, or USER@ENDPOINT")  # fmt: skip
    checker.add_argument("--to", dest="dest", metavar="EP", type=place_type, required=True,
                         help="the endpoint that would serve (or tag:NAME: any endpoint with that tag)")  # fmt: skip
    checker.add_argument("--file", metavar="FILE", type=path_type, help="decide with this draft policy instead")
    helper = add_sub(
        sub,
        "help",
        "ztm policy",
        "help [COMMAND]",
        "what the policy is, and its commands",
        "Explain the mesh's access policy and list its commands, or show one command's options and examples.",
        ("ztm policy help", "ztm policy help check"),
    )
    helper.add_argument("topic", nargs="*", metavar="COMMAND", help="command to explain")


# ---- commands ----


def cmd_policy(ctx: Context) -> int:
    action: str = ctx.args.target
    handlers = {
        "help": lambda: show_help(ctx, APP),
        "get": lambda: _get(ctx),
        "set": lambda: _set(ctx, dry_run=False),
        "test": lambda: _set(ctx, dry_run=True),
        "diff": lambda: _diff(ctx),
        "history": lambda: _history(ctx),
        "rollback": lambda: _rollback(ctx),
        "check": lambda: _check(ctx),
    }
    return handlers[action]()


def read_policy_file(path: Path) -> str:
    """The text of a policy file: UTF-8 (a leading BOM dropped), at most `MAX_POLICY_BYTES`; one-line errors."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_POLICY_BYTES + 4)
    except FileNotFoundError:
        raise BadInput(f"policy file {path} does not exist") from None
    except IsADirectoryError:
        raise BadInput(f"policy file {path} is a directory, not a file") from None
    except PermissionError:
        raise BadInput(f"cannot read policy file {path}: permission denied") from None
    except OSError as exc:
        raise BadInput(f"cannot read policy file {path}: {exc.strerror or exc}") from None
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    if len(raw) > MAX_POLICY_BYTES:
        raise BadInput(f"policy file {path} is larger than {MAX_POLICY_BYTES} bytes, the most a policy may be")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise BadInput(
            f"policy file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}): save it as UTF-8"
        ) from None


def _when(value: object) -> str:
    """A time from the hub (unix seconds, or RFC 3339) as `2026-12-07T14:00:00.000Z (3m ago)`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return output.time_with_ago(iso(float(value))) if value > 0 else output.MISSING
    return output.time_with_ago(value)


def _policy_text(text: str) -> str:
    """A policy text for the terminal: its lines as written, control characters (escape sequences) shown escaped."""
    return "\n".join(output.clean(line.removesuffix("\r")) for line in text.split("\n"))


def _current(ctx: Context, version: int | None = None) -> dict[str, Any]:
    query = {"version": str(version)} if version is not None else None
    return ctx.get_obj(ctx.mesh_path("policy"), query=query)


def _get(ctx: Context) -> int:
    policy = _current(ctx, ctx.args.version)
    if ctx.json:
        ctx.print_json(policy)
        return 0
    mesh = output.clean(ctx.mesh())
    if not policy.get("version"):
        ctx.warn(f"no policy is set in mesh {mesh}: the apps' own lists decide; set one with 'ztm policy set FILE'")
        return 0
    text = policy.get("text")
    if not isinstance(text, str):
        raise BadInput("unexpected answer to GET policy: no text; see 'ztm version'")
    ctx.warn(
        f"# mesh {mesh}, policy version {output.cell(policy.get('version'))}, set by "
        f"{output.cell(policy.get('set_by'))} at {_when(policy.get('set_at'))}"
    )
    ctx.print(_policy_text(text.removesuffix("\n")))
    return 0


def _hub_refusal(exc: ZtmError, path: Path) -> ZtmError:
    """The hub's refusal of a policy file, naming the file (and saying nothing changed)."""
    message = exc.message
    if message.startswith("policy line"):
        message = f"{path}: {message}"
    elif message.startswith("policy refused"):
        message = f"{path}: {message}; nothing was changed"
    return type(exc)(message)


def _set(ctx: Context, *, dry_run: bool) -> int:
    path: Path = ctx.args.file
    body = {"text": read_policy_file(path), "dry_run": dry_run, "note": "" if dry_run else ctx.args.note}
    try:
        res = expect_obj(ctx.client().post(ctx.mesh_path("policy"), body), "POST policy")
    except BadInput as exc:
        raise _hub_refusal(exc, path) from None
    if ctx.json:
        ctx.print_json(res)
        return 0
    tests = res.get("tests")
    passed = f"{tests} test{'s' if tests != 1 else ''} passed" if isinstance(tests, int) else "its tests passed"
    if dry_run:
        ctx.print(f"{path}: the policy is valid and {passed} (a dry run at the hub: nothing was set)")
    else:
        ctx.print(
            f"policy version {output.cell(res.get('version'))} set in mesh {output.clean(ctx.mesh())} from {path} "
            f"({passed}); the hub sends it to every endpoint"
        )
    return 0


def _diff(ctx: Context) -> int:
    path: Path = ctx.args.file
    new = read_policy_file(path)
    policy = _current(ctx)
    old = policy.get("text") if isinstance(policy.get("text"), str) else ""
    version = policy.get("version") or 0
    label = f"mesh {ctx.mesh()} policy version {version}" if version else f"mesh {ctx.mesh()} (no policy set)"
    lines = list(
        difflib.unified_diff(
            str(old).splitlines(keepends=True), new.splitlines(keepends=True), fromfile=label, tofile=str(path)
        )
    )
    if ctx.json:
        ctx.print_json({"version": version, "file": str(path), "same": not lines, "diff": "".join(lines)})
    elif not lines:
        ctx.note(f"{path} is the same as {label}")
    else:
        ctx.print("\n".join(output.clean(line.rstrip("\r\n")) for line in lines))
    return 0


def _history(ctx: Context) -> int:
    versions = ctx.get_list(ctx.mesh_path("policy", "history"))
    if ctx.json:
        ctx.print_json(versions)
        return 0
    if not versions:
        ctx.print(f"no policy was ever set in mesh {output.clean(ctx.mesh())}: the apps' own lists decide")
        return 0
    rows = [
        [
            output.cell(v.get("version")) + (" *" if i == 0 else ""),
            output.cell(v.get("set_by")),
            _when(v.get("set_at")),
            output.cell(v.get("lines")),
            output.cell(str(v.get("sha256") or "")[:12]),
            output.cell(v.get("note")),
        ]
        for i, v in enumerate(versions)
    ]
    ctx.print(output.table(("VERSION", "SET BY", "SET AT", "LINES", "SHA256", "NOTE"), rows))
    ctx.note("* the version in force")
    return 0


def _rollback(ctx: Context) -> int:
    version: int = ctx.args.version
    try:
        res = expect_obj(ctx.client().post(ctx.mesh_path("policy", "rollback"), {"version": version}), "rollback")
    except BadInput as exc:
        if exc.message.startswith("policy refused"):  # its tests fail with today's endpoints and tags
            raise BadInput(f"version {version}: {exc.message}; nothing was changed") from None
        raise
    if ctx.json:
        ctx.print_json(res)
        return 0
    ctx.print(
        f"rolled back mesh {output.clean(ctx.mesh())} to the text of policy version {version}: it is now version "
        f"{output.cell(res.get('version'))} ({output.cell(res.get('tests'))} tests passed)"
    )
    return 0


def _check(ctx: Context) -> int:
    args = ctx.args
    body: dict[str, Any] = {"from": args.source, "to": args.dest, "target": args.what}
    if args.file is not None:
        body["text"] = read_policy_file(args.file)
    try:
        res = expect_obj(ctx.client().post(ctx.mesh_path("policy", "check"), body), "policy check")
    except BadInput as exc:
        raise _hub_refusal(exc, args.file) if args.file is not None else exc from None
    if ctx.json:
        ctx.print_json(res)
        return 0
    verdict = "allowed" if res.get("allowed") is True else "denied"
    what = f"{output.clean(args.source)} -> {output.clean(args.dest)}:{output.clean(args.what)}"
    where = f"draft {args.file}" if args.file is not None else f"policy version {output.cell(res.get('version'))}"
    ctx.print(f"{verdict}: {what} ({where})")
    ctx.print(output.clean(str(res.get("why") or "")))
    return 0


# ---- ztm get audit ----


def get_audit(ctx: Context, name: str | None) -> None:
    if name:
        raise BadInput("ztm get audit takes no NAME: narrow it with --user USER and --since T")
    query: dict[str, str] = {}
    if ctx.args.since is not None:
        query["since"] = str(int(ctx.args.since))
    if ctx.args.user is not None:
        query["user"] = ctx.args.user
    limit = ctx.args.limit or AUDIT_LIMIT
    if ctx.args.limit is not None:
        query["limit"] = str(limit)
    entries = expect_list(ctx.client().get(ctx.mesh_path("audit"), query=query or None), "GET audit")
    if ctx.json:
        ctx.print_json(entries)
        return
    if not entries:
        ctx.print("no audit entries" + (" match" if query else ""))
        return
    rows = [
        [
            output.cell(e.get("seq")),
            _when(e.get("at")).split(" (")[0],
            output.cell(e.get("actor")),
            output.cell(e.get("actor_ep")),
            output.cell(e.get("action")),
            output.cell(e.get("target")),
            _short(output.cell(e.get("detail"))),
        ]
        for e in entries
    ]
    ctx.print(output.table(("SEQ", "TIME", "ACTOR", "FROM", "ACTION", "TARGET", "DETAIL"), rows))
    if len(entries) >= limit:
        ctx.warn(f"showing the first {limit} entries (oldest first): narrow with --since T or raise --limit")


def _short(text: str) -> str:
    return text if len(text) <= DETAIL_WIDTH else text[: DETAIL_WIDTH - 1] + "…"
