"""The `ztm` command line without an agent: parsing, help, completion, saved settings, `run hub|agent`, output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ztm.addr import Address
from ztm.cli import output
from ztm.cli.args import find_command, subcommands
from ztm.cli.completion import bash_script, build_spec, zsh_script
from ztm.cli.main import main
from ztm.cli.registry import COMMANDS, build_parser
from ztm.config import AgentConfig, HubConfig

SRC = Path(__file__).resolve().parents[2] / "src"


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    for var in ("ZTM_AGENT", "ZTM_MESH", "ZTM_TOKEN", "ZTM_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return h


@pytest.fixture
def run(home: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    def call(*argv: str) -> Result:
        code = main(list(argv))
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err, captured.err
        return Result(code, captured.out, captured.err)

    return call


def _all_topics() -> list[list[str]]:
    parser = build_parser(COMMANDS)
    topics: list[list[str]] = []
    for name, sub in subcommands(parser).items():
        topics.append([name])
        topics += [[name, child] for child in subcommands(sub)]
    return topics


# ---------------------------------------------------------------- help


def test_overview_lists_every_command_and_the_global_options(run: Callable[..., Result]) -> None:
    for argv in (["help"], [], ["--help"], ["-h"]):
        res = run(*argv)
        assert res.code == 0
        for command in COMMANDS:
            assert f"\n  {command.synopsis}" in res.out
        for option in ("--agent HOST:PORT", "--mesh NAME", "-o, --output table|json", "--timeout SECONDS"):
            assert option in res.out


@pytest.mark.parametrize("topic", _all_topics(), ids=" ".join)
def test_help_for_every_command(run: Callable[..., Result], topic: list[str]) -> None:
    res = run("help", *topic)
    assert res.code == 0, res.err
    assert res.out.startswith(f"usage: ztm {' '.join(topic)}")
    assert "--agent HOST:PORT" in res.out
    assert run(*topic, "--help").out.rstrip("\n") == res.out.rstrip("\n")
    assert run("-h", *topic).out.rstrip("\n") == res.out.rstrip("\n")


def test_help_has_examples(run: Callable[..., Result]) -> None:
    for command in COMMANDS:
        out = run("help", command.name).out
        assert "examples:\n  " in out, command.name
    assert "ztm run hub --listen 0.0.0.0:8888 --names 1.2.3.4:8888 --permit root.json" in run("help", "run", "hub").out


def test_help_unknown_topic(run: Callable[..., Result]) -> None:
    res = run("help", "frobnicate")
    assert res.code == 2 and res.err.strip() == "ztm: unknown command 'frobnicate'; run 'ztm help' to see the commands"
    res = run("help", "run", "nothing")
    assert res.code == 2 and "'run' has no subcommand 'nothing'" in res.err


# ---------------------------------------------------------------- usage errors


def test_unknown_command(run: Callable[..., Result]) -> None:
    res = run("frobnicate", "--x")
    assert res.code == 2
    assert res.out == ""
    assert res.err == "ztm: unknown command 'frobnicate'; run 'ztm help' to see the commands\n"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["get"],
            "ztm get: the following arguments are required: mesh|hub|ep|app|file|audit|route; run 'ztm help get' "
            "for usage",
        ),
        (["get", "toaster"], "ztm get: argument mesh|hub|ep|app|file|audit|route: unknown kind 'toaster'"),
        (["get", "ep", "--bogus"], "ztm get: unrecognized arguments: --bogus; run 'ztm help get' for usage"),
        (["get", "ep", "a", "b"], "ztm get: unrecognized arguments: b"),
        (["ping", "ep", "bob", "-c", "99"], "ztm ping: argument -c/--count: must be from 1 to 20, got 99"),
        (["ping", "ep", "bob", "-c", "x"], "argument -c/--count: expected a whole number, got 'x'"),
        (["get", "ep", "-o", "yaml"], "argument -o/--output: expected table or json, got 'yaml'"),
        (["--timeout", "-1", "get", "ep"], "argument --timeout: expected seconds"),
        (["--timeout", "0", "get", "ep"], "argument --timeout: must be more than 0"),
        (["run"], "ztm run: the following arguments are required: hub|agent; run 'ztm help run' for usage"),
        (["run", "toaster"], "ztm run: argument hub|agent: invalid choice: 'toaster'"),
        (["run", "hub", "--listen", "nope:x"], "ztm run hub: argument --listen: port must be a number"),
        (["run", "hub", "--names", ""], "ztm run hub: argument --names: empty"),
        (["run", "hub", "--cert-ttl", "soon"], "argument --cert-ttl: expected seconds such as 30"),
        (["run", "hub", "--heartbeat", "0.5"], "argument --heartbeat: 0.5 is out of range: give 1 to 300 seconds"),
        (["run", "hub", "--heartbeat", "5m"], "argument --heartbeat: '5m' is not a number of seconds, e.g. 5"),
        (["run", "hub", "--wat"], "ztm run hub: unrecognized arguments: --wat; run 'ztm help run hub' for usage"),
        (["run", "agent", "--join", "m"], "--join, --join-as and --permit go together"),
        (["stop", "toaster"], "ztm stop: argument hub|agent|app: unknown kind 'toaster': expected hub, agent or app"),
        (["uninstall"], "ztm uninstall: the following arguments are required: app; run 'ztm help uninstall' for usage"),
        (["uninstall", "toaster"], "ztm uninstall: argument app: invalid choice: 'toaster'"),
        (["uninstall", "app"], "ztm uninstall app: the following arguments are required: NAME"),
        (["uninstall", "app", "Bad_Name"], "ztm uninstall app: argument NAME: invalid app name 'Bad_Name'"),
        (["uninstall", "app", "chat", "extra"], "ztm uninstall app: unrecognized arguments: extra"),
        (["uninstall", "app", "chat", "--bogus"], "unrecognized arguments: --bogus; run 'ztm help uninstall app'"),
        (["unpublish", "app"], "ztm unpublish app: the following arguments are required: NAME"),
        (["unpublish", "app", "-x"], "ztm unpublish app: the following arguments are required: NAME"),
        (["unpublish", "app", "../chat"], "ztm unpublish app: argument NAME: invalid app name '../chat'"),
        (["label", "a", "b", "c"], "ztm label: expected 'ztm label [ep NAME]"),
        (["completion", "fish"], "ztm completion: argument bash|zsh: unknown kind 'fish'"),
        (["config", "--unset", "colour"], "ztm config: argument --unset: invalid choice: 'colour'"),
        (["get", "ep", "--agent"], "ztm get: argument --agent: expected one argument"),
        (["--agent"], "ztm: no command given"),
        (["-o", "json"], "ztm: no command given; run 'ztm help' to see the commands"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_bad_command_lines_exit_2_with_one_line(run: Callable[..., Result], argv: list[str], expected: str) -> None:
    res = run(*argv)
    assert res.code == 2, res
    assert res.out == ""
    lines = res.err.splitlines()
    assert len(lines) == 1, res.err
    assert expected in lines[0]
    assert "usage:" not in res.err


def test_find_command_skips_global_options() -> None:
    assert find_command(["--agent", "x:1", "-o", "json", "get", "ep"]) == 4
    assert find_command(["--mesh=m", "--timeout", "3", "ping"]) == 3
    assert find_command(["-o", "json"]) is None
    assert find_command(["--", "get"]) == 1


def test_global_options_before_and_after(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser(COMMANDS)
    before = parser.parse_args(["--agent", "1.2.3.4:7", "-o", "json", "--timeout", "5m", "get", "ep"])
    after = parser.parse_args(["get", "ep", "--agent", "1.2.3.4:7", "--output", "JSON", "--timeout", "300"])
    for ns in (before, after):
        assert (ns.agent, ns.output, ns.timeout, ns.kind) == ("1.2.3.4:7", "json", 300.0, "ep")
    both = parser.parse_args(["-o", "table", "get", "ep", "-o", "json"])
    assert both.output == "json"
    nested = parser.parse_args(["run", "hub", "--mesh", "m", "--listen", "9000"])
    assert nested.mesh == "m" and nested.listen == Address("0.0.0.0", 9000)


# ---------------------------------------------------------------- completion


def test_completion_spec_covers_commands() -> None:
    spec = build_spec(build_parser(COMMANDS))
    assert set(spec.commands) == {c.name for c in COMMANDS}
    assert spec.commands["get"].words == ["mesh", "hub", "ep", "app", "file", "audit", "route"]
    assert spec.commands["run"].words == ["hub", "agent"]
    policy = spec.commands["policy"]
    assert policy.words == ["get", "set", "test", "diff", "history", "rollback", "check", "help"]
    assert {"--from", "--to", "--file"} <= set(policy.children["check"].options)
    assert "--file" in spec.file_options and "--since" in spec.commands["get"].options
    assert "--names" in spec.commands["start"].children["hub"].options
    assert "--join-as" in spec.commands["run"].children["agent"].options
    assert "--permit" in spec.file_options and "--identity" in spec.file_options
    assert "--data" in spec.dir_options
    assert spec.commands["help"].words == sorted(c.name for c in COMMANDS)


APPS_WORDS = ["ls", "start", "stop", "publish", "unpublish", "download", "uninstall", "help"]


def test_completion_covers_the_app_clis() -> None:
    spec = build_spec(build_parser(COMMANDS))
    files = spec.commands["files"]
    assert files.words == ["ls", "describe", "publish", "download", "unpublish", "erase", "acl", "help"]
    assert spec.commands["apps"].words == APPS_WORDS
    assert spec.commands["cloud"].words[-1] == "help"
    assert "--available" in spec.commands["apps"].children["ls"].options
    assert "--input" in files.children["publish"].options
    script = bash_script(build_parser(COMMANDS))
    assert _bash_complete(script, "ztm fil") == ["files"]
    assert _bash_complete(script, "ztm apps ") == APPS_WORDS
    assert _bash_complete(script, "ztm help a") == ["acl", "apps"]


@pytest.mark.parametrize(
    ("app_form", "verb_form"),
    [
        (["files", "publish", "/shared/a/x", "-i", "x.txt", "--readonly", "bob,carol", "--block", "eve"],
         ["publish", "file", "/shared/a/x", "-i", "x.txt", "--readonly", "bob,carol", "--block", "eve"]),
        (["files", "download", "/shared/a/x", "-o", "-", "--rate", "2M", "--output", "json"],
         ["download", "file", "/shared/a/x", "-o", "-", "--rate", "2M", "--output", "json"]),
    ],
    ids=lambda v: " ".join(v[:2]),
)  # fmt: skip
def test_files_transfers_parse_as_the_verb_forms(home: Path, app_form: list[str], verb_form: list[str]) -> None:
    """The content transfers (raw bytes, which the JSON fake agent of test_cli does not serve): the app form runs
    the verb form's handler with the same arguments."""
    parser = build_parser(COMMANDS)
    app, verb = parser.parse_args(app_form), parser.parse_args(verb_form)
    assert app.app_handler is verb.kind_handler
    keys = set(vars(verb)) - {"command", "kind", "kind_handler", "handler"}
    assert keys <= set(vars(app))
    assert {k: getattr(app, k) for k in keys} == {k: getattr(verb, k) for k in keys}


def test_completion_bash_is_valid(run: Callable[..., Result], tmp_path: Path) -> None:
    res = run("completion", "bash")
    assert res.code == 0 and "complete -F _ztm ztm" in res.out
    script = tmp_path / "ztm.bash"
    script.write_text(res.out)
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr


def _bash_complete(script: str, line: str) -> list[str]:
    words = line.split(" ")
    program = (
        f"{script}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        '_ztm; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_completion_bash_completes() -> None:
    script = bash_script(build_parser(COMMANDS))
    assert "get" in _bash_complete(script, "ztm g")
    assert _bash_complete(script, "ztm get ") == ["mesh", "hub", "ep", "app", "file", "audit", "route"]
    assert _bash_complete(script, "ztm --agent 1.2.3.4:5 get e") == ["ep"]
    assert _bash_complete(script, "ztm start hub --na") == ["--names"]
    assert _bash_complete(script, "ztm get ep -o ") == ["table", "json"]
    assert "--mesh" in _bash_complete(script, "ztm ping ep bob --")
    assert _bash_complete(script, "ztm ping ep ") == ["ep"] or _bash_complete(script, "ztm ping ") == ["ep"]


def test_completion_zsh(run: Callable[..., Result], tmp_path: Path) -> None:
    res = run("completion", "zsh")
    assert res.code == 0 and res.out.startswith("#compdef ztm")
    assert zsh_script(build_parser(COMMANDS)).rstrip("\n") == res.out.rstrip("\n")
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed")
    script = tmp_path / "_ztm"
    script.write_text(res.out)
    done = subprocess.run([zsh, "-n", str(script)], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    # drive the function with stubs for the completion builtins (they only work inside a completion widget)
    harness = (
        'compadd() { print -r -- "${(j: :)${@:#--}}" }\n'
        "compdef() { : }\n"
        "_files() { print -r -- FILES $* }\n"
        f"source {script}\n"
        'words=(ztm get ""); CURRENT=3; _ztm\n'
        'words=(ztm --agent 1.2.3.4:5 ping ""); CURRENT=5; _ztm\n'
        'words=(ztm join m --permit ""); CURRENT=5; _ztm\n'
        'words=(ztm stop agent --data ""); CURRENT=5; _ztm\n'
    )
    done = subprocess.run([zsh, "-f", "-c", harness], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["mesh hub ep app file audit route", "ep", "FILES", "FILES -/"]


# ---------------------------------------------------------------- config


def test_config_show_defaults(run: Callable[..., Result], home: Path) -> None:
    res = run("config")
    assert res.code == 0
    assert "agent: 127.0.0.1:7777  (default)" in res.out
    assert "mesh:  -  (not set: the agent's only mesh is used)" in res.out
    assert f"{home}/.ztm/agents/127.0.0.1_7777.sock" in res.out
    assert "(not written yet)" in res.out


def test_config_save_show_unset(run: Callable[..., Result], home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = run("config", "--agent", "7778", "--mesh", "work")
    assert res.code == 0, res.err
    saved = home / ".ztm" / "cli.json"
    assert json.loads(saved.read_text()) == {"agent": "127.0.0.1:7778", "mesh": "work"}
    shown = json.loads(run("config", "-o", "json").out)
    assert shown["agent"] == {"value": "127.0.0.1:7778", "source": str(saved)}
    assert shown["mesh"] == {"value": "work", "source": str(saved)}
    monkeypatch.setenv("ZTM_MESH", "other")
    assert json.loads(run("config", "-o", "json").out)["mesh"] == {"value": "other", "source": "env ZTM_MESH"}
    assert run("config", "--unset", "mesh").code == 0
    assert json.loads(saved.read_text()) == {"agent": "127.0.0.1:7778"}


def test_config_rejects_bad_values(run: Callable[..., Result], home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = run("config", "--agent", "not an address")
    assert res.code == 1 and "--agent:" in res.err
    monkeypatch.setenv("ZTM_AGENT", "::::")
    assert "ZTM_AGENT" in run("get", "ep").err
    monkeypatch.delenv("ZTM_AGENT")
    (home / ".ztm").mkdir()
    (home / ".ztm" / "cli.json").write_text("{oops")
    res = run("get", "ep")
    assert (
        res.code == 1
        and res.err.strip() == f"ztm: {home}/.ztm/cli.json is not JSON: fix or delete it, then run 'ztm config' again"
    )


# ---------------------------------------------------------------- run hub / run agent


@pytest.fixture
def fake_daemons(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    seen: dict[str, Any] = {}
    hub = types.ModuleType("ztm.hub.main")
    agent = types.ModuleType("ztm.agent.main")

    def run_hub(cfg: HubConfig) -> int:
        seen["hub"] = cfg
        return 0

    def run_agent(cfg: AgentConfig) -> int:
        seen["agent"] = cfg
        return 3

    hub.run_hub = run_hub  # type: ignore[attr-defined]
    agent.run_agent = run_agent  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ztm.hub.main", hub)
    monkeypatch.setitem(sys.modules, "ztm.agent.main", agent)
    yield seen


def test_run_hub_builds_the_config(run: Callable[..., Result], fake_daemons: dict[str, Any], tmp_path: Path) -> None:
    res = run(
        "run",
        "hub",
        "--listen",
        ":9000",
        "--names",
        "1.2.3.4,hub.example.com:443",
        "--names",
        "[::1]",
        "--permit",
        "root.json",
        "--data",
        "state",
        "--max-agents",
        "50",
        "--cert-ttl",
        "2h",
        "--heartbeat",
        "2",
        "--admin",
        "9100",
    )
    assert res.code == 0, res.err
    cfg: HubConfig = fake_daemons["hub"]
    assert cfg.listen == Address("0.0.0.0", 9000)
    assert cfg.names == (Address("1.2.3.4", 8888), Address("hub.example.com", 443), Address("::1", 8888))
    assert cfg.permit == tmp_path / "root.json"
    assert cfg.data == tmp_path / "state"
    assert (cfg.max_agents, cfg.cert_ttl, cfg.heartbeat, cfg.admin) == (50, 7200.0, 2.0, Address("127.0.0.1", 9100))


def test_run_hub_names_default_and_required(
    run: Callable[..., Result], fake_daemons: dict[str, Any], home: Path
) -> None:
    assert run("run", "hub", "--listen", "10.1.2.3:8888").code == 0
    cfg: HubConfig = fake_daemons["hub"]
    assert cfg.names == (Address("10.1.2.3", 8888),)
    assert cfg.data == home / ".ztm" and cfg.permit is None
    assert cfg.max_agents == HubConfig().max_agents
    res = run("run", "hub")
    assert res.code == 1
    assert res.err.strip() == (
        "ztm: --names is required when listening on all interfaces: give the address agents dial, "
        "e.g. --names 1.2.3.4:8888"
    )


def test_run_agent(run: Callable[..., Result], fake_daemons: dict[str, Any], tmp_path: Path) -> None:
    res = run("run", "agent", "--listen", "7000", "--join", "m", "--join-as", "me", "--permit", "p.json")
    assert res.code == 3
    cfg: AgentConfig = fake_daemons["agent"]
    assert cfg.listen == Address("127.0.0.1", 7000)
    assert (cfg.join, cfg.join_as, cfg.permit) == ("m", "me", tmp_path / "p.json")
    assert run("run", "agent").code == 3
    assert fake_daemons["agent"].listen == Address("127.0.0.1", 7777)


def test_run_agent_zone(run: Callable[..., Result], fake_daemons: dict[str, Any]) -> None:
    assert run("run", "agent", "--zone", "eu-west-1").code == 3
    assert fake_daemons["agent"].zone == "eu-west-1"
    assert run("run", "agent", "--zone", "").code == 3
    assert fake_daemons["agent"].zone == "", "--zone '' clears a saved zone"
    assert run("run", "agent").code == 3
    assert fake_daemons["agent"].zone is None, "no --zone keeps the saved one"
    for bad in ("EU", "-a", "a_b", "a" * 33):
        res = run("run", "agent", f"--zone={bad}")
        assert res.code == 2 and len(res.err.strip().splitlines()) == 1, res.err
        assert "is not a zone name" in res.err and "lowercase letters" in res.err, res.err


def test_start_agent_passes_the_zone_on() -> None:
    from ztm.service import agent_argv

    argv = agent_argv(AgentConfig(zone="zone-b"), "python3")
    assert argv[argv.index("--zone") + 1] == "zone-b"
    assert "--zone" not in agent_argv(AgentConfig(), "python3")


def test_run_agent_credit_warn(run: Callable[..., Result], fake_daemons: dict[str, Any]) -> None:
    from ztm.h2.connection import CREDIT_WARN
    from ztm.service import agent_argv

    assert run("run", "agent").code == 3
    assert fake_daemons["agent"].credit_warn == CREDIT_WARN
    assert "--credit-warn" not in agent_argv(fake_daemons["agent"], "python3")
    assert run("run", "agent", "--credit-warn", "2.5").code == 3
    assert fake_daemons["agent"].credit_warn == 2.5
    argv = agent_argv(fake_daemons["agent"], "python3")  # `ztm start agent` passes it on
    assert argv[argv.index("--credit-warn") + 1] == "2.5"
    for bad, why in (("0", "out of range"), ("soon", "is not a number of seconds"), ("1e9", "out of range")):
        res = run("run", "agent", "--credit-warn", bad)
        assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and why in res.err, res.err


def test_run_agent_birthday(run: Callable[..., Result], fake_daemons: dict[str, Any]) -> None:
    from ztm.service import agent_argv

    assert run("run", "agent").code == 3
    cfg = fake_daemons["agent"]
    assert (cfg.p2p_birthday, cfg.p2p_birthday_every) == (512, 300.0)
    assert "--p2p-birthday" not in agent_argv(cfg, "python3")
    assert run("run", "agent", "--p2p-birthday", "0", "--p2p-birthday-every", "5").code == 3
    cfg = fake_daemons["agent"]
    assert (cfg.p2p_birthday, cfg.p2p_birthday_every) == (0, 5.0)
    argv = agent_argv(cfg, "python3")  # `ztm start agent` passes them on
    assert argv[argv.index("--p2p-birthday") + 1] == "0" and argv[argv.index("--p2p-birthday-every") + 1] == "5"
    for flag, bad, why in (
        ("--p2p-birthday", "2000", "out of range: give 0 (off) to 1024"),
        ("--p2p-birthday", "many", "is not a number of sockets"),
        ("--p2p-birthday-every", "0", "out of range"),
        ("--p2p-birthday-every", "soon", "is not a number of seconds"),
    ):
        res = run("run", "agent", flag, bad)
        assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and why in res.err, res.err


def test_run_hub_startup_error_is_one_line(
    run: Callable[..., Result], fake_daemons: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ztm.errors import ZtmError

    def failing(cfg: HubConfig) -> int:
        raise ZtmError("cannot listen on 0.0.0.0:8888: Address already in use")

    monkeypatch.setattr(sys.modules["ztm.hub.main"], "run_hub", failing)
    res = run("run", "hub", "--names", "1.2.3.4")
    assert res.code == 1 and res.err == "ztm: cannot listen on 0.0.0.0:8888: Address already in use\n"


# ---------------------------------------------------------------- output helpers


def test_table_alignment() -> None:
    text = output.table(("A", "LONGER"), [["xxxx", "1"], ["y", ""]])
    assert text.splitlines() == ["A     LONGER", "xxxx  1", "y"]


def test_human_units() -> None:
    assert output.human_bytes(0) == "0 B"
    assert output.human_bytes(1023) == "1023 B"
    assert output.human_bytes(1536) == "1.5 KiB"
    assert output.human_bytes(5 * 1024**3) == "5.0 GiB"
    assert output.human_rate(2048) == "2.0 KiB/s"
    assert output.human_bytes("n/a") == "n/a"
    assert output.human_bytes(True) == "yes"
    assert output.milliseconds(1.234) == "1.23 ms"
    assert output.milliseconds(None) == "-"


def test_ago() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

    def iso(delta: timedelta) -> str:
        return (now - delta).isoformat().replace("+00:00", "Z")

    assert output.ago(iso(timedelta(seconds=3)), now) == "3s ago"
    assert output.ago(iso(timedelta(minutes=5, seconds=10)), now) == "5m ago"
    assert output.ago(iso(timedelta(hours=3)), now) == "3h ago"
    assert output.ago(iso(timedelta(days=2)), now) == "2d ago"
    assert output.ago(iso(-timedelta(days=30)), now) == "in 30d"
    assert output.ago(None, now) == "-"
    assert output.ago("garbage", now) == "garbage"


def test_clean_neutralises_control_characters() -> None:
    assert output.clean("a\x1b[31mb\x07\u202ec") == "a\\x1b[31mb\\x07\\u202ec"
    assert output.clean("line1\nline2", keep_newlines=True) == "line1\nline2"
    assert output.cell(["a", None, 3]) == "a,-,3"


# ---------------------------------------------------------------- startup cost


def test_cli_startup_imports_nothing_heavy(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from ztm.cli.main import main\n"
        "for argv in (['help'], ['get', '--help'], ['help', 'run', 'hub'], ['completion', 'bash'], ['version'],\n"
        "             ['files', 'help'], ['apps', 'help'], ['cloud', 'help']):\n"
        "    main(argv)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('asyncio', 'aiohttp', 'cryptography', 'h2', "
        "'uvloop') or m in ('ztm.hub', 'ztm.agent'))\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy))\n"
    )
    env = {"PYTHONPATH": str(SRC), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "ZTM_AGENT": "127.0.0.1:1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.rsplit("HEAVY=", 1)[1] == ""


def test_python_dash_m_ztm(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(SRC), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "ztm", "nope"], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 2
    assert done.stderr == "ztm: unknown command 'nope'; run 'ztm help' to see the commands\n"


def test_run_agent_network_mode(run: Callable[..., Result], fake_daemons: dict[str, Any]) -> None:
    from ztm.apps.net.options import NetOptions
    from ztm.service import agent_argv

    assert run("run", "agent").code == 3
    assert fake_daemons["agent"].net == NetOptions()
    assert not {"--tun", "--tun-name", "--accept-routes", "--dns-suffix"} & set(agent_argv(fake_daemons["agent"], "p"))
    argv = ["--tun", "--tun-name", "mesh", "--accept-routes", "--dns-suffix", "Corp.Example."]
    assert run("run", "agent", *argv).code == 3
    cfg = fake_daemons["agent"]
    assert cfg.net == NetOptions(tun=True, tun_name="mesh", accept_routes=True, dns_suffix="corp.example")
    passed = agent_argv(cfg, "python3")  # `ztm start agent` passes them on
    assert passed[-6:] == ["--tun", "--tun-name", "mesh", "--accept-routes", "--dns-suffix", "corp.example"]
    for flag, bad, why in (
        ("--tun-name", "Ztm", "bad interface prefix"),
        ("--tun-name", "a" * 13, "1 to 12 lowercase letters"),
        ("--tun-name", "z/0", "bad interface prefix"),
        ("--dns-suffix", "a..b", "bad DNS suffix"),
        ("--dns-suffix", "x_y", "bad DNS suffix"),
    ):
        res = run("run", "agent", flag, bad)
        assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and why in res.err, res.err
