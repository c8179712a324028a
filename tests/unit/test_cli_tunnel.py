"""`ztm tunnel ...` and `ztm ep NAME tunnel ...` without an agent: what each command line sends to the agent API (the
client's `request` is replaced by a recorder with canned answers), what it prints, its help, its one-line usage
errors, and its shell completion."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ztm.cli.client import AgentClient
from ztm.cli.completion import bash_script, build_spec
from ztm.cli.main import main
from ztm.cli.registry import COMMANDS, build_parser
from ztm.errors import Forbidden, NotFound

M = "/api/meshes/m1"
T = f"{M}/apps/tunnel"

INBOUND = {
    "tunnel": "tcp/web",
    "listen": ["127.0.0.1:8080"],
    "exits": [],
    "kind": "inbound",
    "listening": True,
    "streams": 3,
    "active": 1,
    "refused": 0,
    "bytes_sent": 2048,
    "bytes_received": 3 << 20,
}
OUTBOUND = {
    "tunnel": "udp/dns",
    "targets": ["10.0.0.53:53"],
    "entrances": ["laptop"],
    "users": [],
    "kind": "outbound",
    "streams": 0,
    "active": 0,
    "refused": 2,
    "bytes_sent": 0,
    "bytes_received": 0,
}
MESH_TUNNELS = [
    {
        "tunnel": "tcp/web",
        "inbound": [{"ep": "e1", "name": "laptop", "online": True}],
        "outbound": [{"ep": "e2", "name": "office", "online": True}, {"ep": "e3", "name": "dc", "online": False}],
    }
]


@dataclass
class Call:
    method: str
    path: str
    body: Any
    query: dict[str, Any] | None
    timeout: float


@dataclass
class Recorder:
    answers: dict[tuple[str, str], Any] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def last(self) -> Call:
        assert self.calls, "no request reached the agent"
        return self.calls[-1]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Recorder]:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("ZTM_AGENT", "ZTM_MESH", "ZTM_TOKEN", "ZTM_DATA"):
        monkeypatch.delenv(var, raising=False)
    rec = Recorder(
        {
            ("GET", "/api/meshes"): [{"name": "m1"}],
            ("GET", M): {"name": "m1"},
            ("GET", T): {"inbound": [INBOUND], "outbound": [OUTBOUND]},
            ("GET", f"{T}/tunnels"): MESH_TUNNELS,
            ("POST", f"{T}/inbound"): INBOUND,
            ("POST", f"{T}/outbound"): OUTBOUND,
            ("GET", f"{T}/inbound/tcp/web"): INBOUND,
            ("DELETE", f"{T}/inbound/tcp/web"): None,
        }
    )

    def request(
        self: AgentClient,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        rec.calls.append(Call(method, path, body, query, self.timeout if timeout is None else timeout))
        key = (method, path)
        if path.endswith("/apps/tunnel/call"):
            return _remote(path, body)
        if key not in rec.answers:
            raise NotFound(f"no route {method} {path}")
        answer = rec.answers[key]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(AgentClient, "request", request)
    yield rec


def _remote(path: str, body: dict[str, Any]) -> Any:
    ep = path.split("/")[5]
    if ep == "nobody":
        raise NotFound("no endpoint named 'nobody' in this mesh")
    if ep == "office":
        raise Forbidden("only root (the owner) may configure tunnels on this endpoint")
    method = body["method"]
    if method == "list":
        return {"inbound": [INBOUND], "outbound": [OUTBOUND]}
    if method == "close":
        return {"closed": True}
    return INBOUND if method == "open_inbound" else OUTBOUND


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    def call(*argv: str) -> Result:
        code = main(list(argv))
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err, captured.err
        return Result(code, captured.out, captured.err)

    return call


# ------------------------------------------------------------------------------------------- requests and output


def test_open_inbound(api: Recorder, run: Callable[..., Result]) -> None:
    res = run("tunnel", "open", "inbound", "tcp/web", "--listen", "8080", "0.0.0.0:9000,[::1]:7000", "8080",
              "--exits", "a", "b,c", "--exits", "a")  # fmt: skip
    assert res.code == 0, res.err
    call = api.last()
    assert (call.method, call.path) == ("POST", f"{T}/inbound")
    assert call.body == {
        "tunnel": "tcp/web",
        "listen": ["127.0.0.1:8080", "0.0.0.0:9000", "[::1]:7000"],
        "exits": ["a", "b", "c"],
    }
    assert res.out == "inbound tcp/web: listening on 127.0.0.1:8080, forwarding to exits of your user or root\n"


def test_open_outbound_options_in_any_order(api: Recorder, run: Callable[..., Result]) -> None:
    res = run("--mesh", "m1", "tunnel", "open", "outbound", "udp/dns", "--users", "alice", "-o", "json",
              "--targets", "10.0.0.53:53", "--entrances", "laptop")  # fmt: skip
    assert res.code == 0, res.err
    assert api.last().body == {
        "tunnel": "udp/dns",
        "targets": ["10.0.0.53:53"],
        "entrances": ["laptop"],
        "users": ["alice"],
    }
    assert [c.path for c in api.calls] == [f"{T}/outbound"]  # --mesh given: no mesh lookup
    assert '"kind": "outbound"' in res.out
    assert res.err == ""


def test_get_tunnel_table(api: Recorder, run: Callable[..., Result]) -> None:
    res = run("tunnel", "get", "tunnels")
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].split() == ["TUNNEL", "ENTRANCES", "(INBOUND)", "EXITS", "(OUTBOUND)"]
    assert "tcp/web" in lines[1] and "laptop" in lines[1] and "office, dc (offline)" in lines[1]


def test_get_inbound_and_outbound(api: Recorder, run: Callable[..., Result]) -> None:
    res = run("tunnel", "get", "inbound")
    assert res.code == 0
    assert res.out.splitlines()[0].split()[:4] == ["TUNNEL", "LISTEN", "EXITS", "STATE"]
    row = res.out.splitlines()[1]
    assert "127.0.0.1:8080" in row and "exits of your user or root" in row and "listening" in row and "3.0 MiB" in row
    res = run("tunnel", "get", "outbound", "udp/dns")
    assert "10.0.0.53:53" in res.out and "laptop" in res.out
    res = run("tunnel", "get", "outbound", "tcp/other")
    assert res.code == 0 and res.out == "no outbound tunnels on this endpoint named tcp/other\n"
    res = run("tunnel", "get", "inbound", "-o", "json")
    assert '"tunnel": "tcp/web"' in res.out


def test_describe_and_close(api: Recorder, run: Callable[..., Result]) -> None:
    res = run("tunnel", "describe", "inbound", "tcp/web")
    assert res.code == 0
    assert api.last().path == f"{T}/inbound/tcp/web"
    assert res.out.splitlines()[0].split() == ["tunnel:", "tcp/web"]
    assert "exits:" in res.out and "exits of your user or root" in res.out and "3.0 MiB (3145728 bytes)" in res.out
    res = run("tunnel", "close", "inbound", "tcp/web")
    assert res.code == 0 and res.out == "closed inbound tcp/web\n"
    assert (api.last().method, api.last().path) == ("DELETE", f"{T}/inbound/tcp/web")
    res = run("tunnel", "describe", "outbound", "tcp/nothing")
    assert res.code == 1 and res.err.count("\n") == 1


def test_remote_commands_are_relayed_calls(api: Recorder, run: Callable[..., Result]) -> None:
    res = run("--timeout", "5", "ep", "bob-server", "tunnel", "open", "outbound", "udp/dns", "--targets", "h:53")
    assert res.code == 0, res.err
    call = api.last()
    assert call.path == f"{M}/endpoints/bob-server/apps/tunnel/call"
    assert call.body == {
        "method": "open_outbound",
        "params": {"tunnel": "udp/dns", "targets": ["h:53"], "entrances": [], "users": []},
    }
    assert call.timeout == 8.0  # --timeout plus the hub's answer
    assert "on bob-server" in res.out
    res = run("ep", "bob-server", "-o", "json", "tunnel", "close", "outbound", "udp/dns")
    assert api.last().body == {"method": "close", "params": {"kind": "outbound", "tunnel": "udp/dns"}}
    assert '"closed": true' in res.out
    res = run("-o", "json", "ep", "bob-server", "tunnel", "describe", "inbound", "tcp/web")
    assert api.last().body == {"method": "list", "params": {}}
    assert '"listening": true' in res.out
    res = run("ep", "bob-server", "tunnel", "describe", "inbound", "tcp/nope")
    assert res.code == 1 and "no inbound tcp/nope on bob-server" in res.err
    res = run("ep", "bob-server", "tunnel", "get", "tunnel")  # the mesh-wide list is the same from anywhere
    assert api.last().path == f"{T}/tunnels" and res.code == 0


def test_remote_errors_are_one_line(api: Recorder, run: Callable[..., Result]) -> None:
    res = run("ep", "office", "tunnel", "get", "outbound")
    assert res.code == 1 and res.err == "ztm: only root (the owner) may configure tunnels on this endpoint\n"
    res = run("ep", "nobody", "tunnel", "get", "outbound")
    assert res.code == 1 and res.err == "ztm: no endpoint named nobody in mesh m1; see 'ztm get ep'\n"


# --------------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "argv",
    [("tunnel", "help"), ("help", "tunnel"), ("tunnel", "--help"), ("tunnel", "-h"), ("-h", "tunnel")],
)
def test_tunnel_help(run: Callable[..., Result], argv: tuple[str, ...]) -> None:
    res = run(*argv)
    assert res.code == 0 and res.err == ""
    assert res.out.startswith("usage: ztm tunnel open|get|describe|close|help")
    for text in (
        "exit (outbound)",
        "entrance (inbound)",
        "open outbound tcp/NAME --targets HOST:PORT [...] [--entrances EP ...] [--users USER ...]",
        "open inbound tcp/NAME --listen [IP:]PORT [...] [--exits EP ... | --exit-users USER ...]",
        "survives restarts",
        "examples:\n  ztm tunnel open outbound tcp/web --targets 127.0.0.1:8080",
    ):
        assert text in res.out, text


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (("tunnel", "help", "open", "inbound"), "usage: ztm tunnel open inbound tcp/NAME --listen"),
        (("help", "tunnel", "open", "outbound"), "usage: ztm tunnel open outbound tcp/NAME --targets"),
        (("tunnel", "open", "inbound", "--help"), "usage: ztm tunnel open inbound tcp/NAME --listen"),
        (("help", "tunnel", "get"), "usage: ztm tunnel get tunnel|inbound|outbound"),
        (("help", "ep"), "usage: ztm ep NAME tunnel|proxy|route ..."),
        (("help", "ep", "tunnel"), "usage: ztm ep NAME tunnel open|get|describe|close|help"),
        (("help", "ep", "tunnel", "open", "outbound"), "usage: ztm ep NAME tunnel open outbound tcp/NAME"),
        (("ep", "x", "tunnel", "help", "close"), "usage: ztm ep NAME tunnel close inbound|outbound tcp/NAME"),
        (("ep", "x", "tunnel", "--help"), "usage: ztm ep NAME tunnel open|get|describe|close|help"),
        (("ep", "--help"), "usage: ztm ep NAME tunnel|proxy|route ..."),
    ],
)
def test_sub_help(run: Callable[..., Result], argv: tuple[str, ...], usage: str) -> None:
    res = run(*argv)
    assert res.code == 0, res.err
    assert res.out.startswith(usage), res.out[:200]
    assert "--agent HOST:PORT" in res.out and "examples:\n  ztm " in res.out


def test_overview_lists_the_tunnel_commands(run: Callable[..., Result]) -> None:
    out = run("help").out
    assert "\n  tunnel open|get|describe|close|help ..." in out and "\n  ep NAME tunnel|proxy|route ..." in out


# ---------------------------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("tunnel",), "ztm tunnel: the following arguments are required: open|get|describe|close|help; run 'ztm "
                      "help tunnel'"),
        (("tunnel", "open"), "ztm tunnel open: the following arguments are required: inbound|outbound"),
        (("tunnel", "open", "inbound", "tcp/x"), "the following arguments are required: --listen"),
        (("tunnel", "open", "outbound", "tcp/x"), "the following arguments are required: --targets"),
        (("tunnel", "open", "inbound", "http/x", "--listen", "80"), "argument tcp/NAME: invalid tunnel 'http/x'"),
        (("tunnel", "open", "inbound", "tcp/x", "--listen", "1.2.3.4"), "argument --listen: expected HOST:PORT"),
        (("tunnel", "open", "inbound", "tcp/x", "--listen", "99999"), "argument --listen: port must be"),
        (("tunnel", "open", "outbound", "tcp/x", "--targets", "80"), "argument --targets: expected HOST:PORT"),
        (("tunnel", "open", "outbound", "tcp/x", "--targets", "a:1", "--users", "Bob"), "invalid user 'Bob'"),
        (("tunnel", "open", "inbound", "tcp/x", "--listen", "80", "--exits", "-"), "invalid endpoint '-'"),
        (("tunnel", "open", "outbound", "--targets", "a:1", "tcp/x"), "'tcp/x' is a tunnel name: give it before"),
        (("tunnel", "open", "inbound", "tcp/x", "--listen", "80", "--exits", "a b"), "invalid endpoint 'a b'"),
        (("tunnel", "open", "inbound", "tcp/x", "--listen", "80", "--bogus"),
         "ztm tunnel open inbound: unrecognized arguments: --bogus; run 'ztm help tunnel open inbound' for usage"),
        (("tunnel", "get", "foo"), "unknown kind 'foo': expected tunnel, inbound or outbound"),
        (("tunnel", "describe", "tunnel", "tcp/x"), "unknown kind 'tunnel': expected inbound or outbound"),
        (("tunnel", "close", "inbound"), "the following arguments are required: tcp/NAME"),
        (("tunnel", "help", "nope"), "'tunnel' has no subcommand 'nope'; run 'ztm help tunnel'"),
        (("tunnel", "frob"), "ztm tunnel: argument open|get|describe|close|help: invalid choice: 'frob'"),
        (("ep",), "ztm ep: the following arguments are required: NAME, tunnel; run 'ztm help ep' for usage"),
        (("ep", "office"), "ztm ep: the following arguments are required: tunnel"),
        (("ep", "office", "nope", "get"), "ztm ep: argument tunnel: unknown app 'nope': expected tunnel, proxy"),
        (("ep", "office", "tunnel"), "the following arguments are required: open|get|describe|close|help; "
                                     "run 'ztm help ep tunnel' for usage"),
        (("ep", "office", "tunnel", "get", "outbound", "--bogus"),
         "ztm ep tunnel get: unrecognized arguments: --bogus; run 'ztm help ep tunnel get' for usage"),
        (("ep", "office", "tunnel", "help", "nope"), "'ep tunnel' has no subcommand 'nope'; run 'ztm help ep tunnel'"),
        (("help", "ep", "nope"), "'ep' has no subcommand 'nope'"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else "",
)  # fmt: skip
def test_bad_command_lines_exit_2_with_one_line(
    api: Recorder, run: Callable[..., Result], argv: tuple[str, ...], expected: str
) -> None:
    res = run(*argv)
    assert res.code == 2, res
    assert res.out == ""
    lines = res.err.splitlines()
    assert len(lines) == 1, res.err
    assert expected in lines[0]
    assert api.calls == [], "a bad command line reached the agent"


# -------------------------------------------------------------------------------------------------- completion


def _complete(line: str) -> list[str]:
    script = bash_script(build_parser(COMMANDS))
    words = line.split(" ")
    program = (
        f"{script}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        '_ztm; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_completion_follows_the_tunnel_tree() -> None:
    spec = build_spec(build_parser(COMMANDS))
    assert spec.commands["tunnel"].words == ["open", "get", "describe", "close", "help"]
    assert "--listen" in spec.commands["tunnel"].children["open"].children["inbound"].options
    assert spec.commands["ep"].after == 1 and spec.commands["ep"].words == ["tunnel", "proxy", "route"]
    assert "--targets" in spec.value_options
    assert _complete("ztm tunnel ") == ["open", "get", "describe", "close", "help"]
    assert _complete("ztm tunnel open ") == ["inbound", "outbound"]
    assert _complete("ztm tunnel open outbound tcp/x --e") == ["--entrances"]
    assert _complete("ztm tunnel get ") == ["tunnel", "inbound", "outbound"]
    assert _complete("ztm tunnel get inbound ") == []
    assert _complete("ztm ep ") == []  # an endpoint name: no dynamic completion
    assert _complete("ztm ep office ") == ["tunnel", "proxy", "route"]
    assert _complete("ztm -o json ep office tunnel close ") == ["inbound", "outbound"]
    assert _complete("ztm ep office tunnel open inbound tcp/x --listen ") == []
