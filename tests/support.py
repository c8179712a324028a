"""Shared helpers for integration and lab tests: real `ztm` processes, polling, and sockets inside namespaces.

Everything here is synchronous and stdlib-only so that any test (sync or async) can use it.

* `wait_until(pred, timeout, what)` polls instead of sleeping; `Abort` stops a wait at once (a process died).
  `holds_for(pred, duration, what)` is its dual: the condition must stay true for the whole duration.
* `Proc` is one subprocess with its output in a log file; every `Proc` is registered so that the conftest can stop
  the ones a test left running and print their output when the test fails.
* `start_hub()` / `start_agent()` start the product's foreground processes, each with its own temporary HOME, and
  return once they are ready (`start_hub_and_agents()` starts a hub and agents at once, so their start-ups overlap);
  `Agent.cli()` runs `python -m ztm --agent ...` with that agent's HOME, so token discovery works the way it does for
  a real user. `restart_hub()` / `restart_agent()` stop one and run the same
  command again on the same data directory (persistence tests); `invite()` runs `ztm identity` + `ztm invite`.
* `netns_socket()` makes a socket *inside* a network namespace from this process (the thread that creates it enters
  the namespace; the socket stays there), so tests can probe addresses that only exist in a lab.

Network rule: helpers only ever connect to loopback or to lab addresses that a test passes in.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import itertools
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ports import free_port

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
ZTM: list[str] = [sys.executable, "-m", "ztm"]
"""How to run the `ztm` command line in a subprocess."""

IP = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if Path(p).exists()), "ip")

# Variables that would make a ztm process talk to something other than the test's own hosts, read a developer's
# own state, or write the tests' TLS secrets into a developer's key log. They are removed from every environment a
# helper builds (a test that wants one passes it in `env`).
_SCRUBBED = (
    "http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "FTP_PROXY",
    "ZTM_DATA", "ZTM_AGENT", "ZTM_MESH", "ZTM_TOKEN", "SSLKEYLOGFILE",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------------- polling


class Abort(AssertionError):
    """Raised by a `wait_until` predicate to stop waiting at once (for example: the process being waited on died)."""


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
    """Call `predicate` until it returns something truthy, and return that.

    Exceptions raised by the predicate count as "not yet" (the last one is reported on timeout), except `Abort`,
    which is re-raised at once.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
        except Abort:
            raise
        except Exception as exc:
            last_exc = exc
        else:
            if result:
                return result
            last_exc = None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            message = f"timed out after {timeout}s waiting for {what}"
            if last_exc is not None:
                message += f"; last error: {type(last_exc).__name__}: {last_exc}"
            raise AssertionError(message) from last_exc
        time.sleep(min(interval, remaining))


def holds_for(predicate: Callable[[], object], duration: float, what: str, interval: float = 0.05) -> int:
    """The dual of `wait_until`: call `predicate` again and again for `duration` seconds and fail (AssertionError
    naming `what` and the moment) at the first falsy result; an exception it raises fails at once too. Returns how
    many checks were made (at least two: one at the start, one at the end)."""
    start = time.monotonic()
    checks = 0
    while True:
        now = time.monotonic()
        if not predicate():
            raise AssertionError(f"{what}: stopped holding {now - start:.2f}s into a {duration}s watch")
        checks += 1
        if now - start >= duration:
            return checks
        time.sleep(min(interval, max(0.0, start + duration - time.monotonic())))


class LoopbackDrop:
    """Packets of chosen TCP ports on this host dropped where they arrive (an nftables table of its own, removed by
    `close()`): to the sockets on those ports, the path is silently gone (no FIN, no RST, keepalive probes unanswered),
    as when a cable is cut, while both processes run on. Needs root and `nft` (`LoopbackDrop.missing()` says why not).
    """

    def __init__(self, ports: Iterable[int]) -> None:
        self.ports = sorted(set(ports))
        self.table = f"ztm_drop_{os.getpid()}_{self.ports[0]}"
        nft = shutil.which("nft") or "/usr/sbin/nft"
        self._nft = nft
        ports_set = ", ".join(str(p) for p in self.ports)
        rules = (
            f"table inet {self.table} {{\n chain input {{\n  type filter hook input priority -10; policy accept;\n"
            f"  tcp dport {{ {ports_set} }} drop\n  tcp sport {{ {ports_set} }} drop\n }}\n}}\n"
        )
        subprocess.run([nft, "-f", "-"], input=rules, text=True, check=True, capture_output=True)

    @staticmethod
    def missing() -> str | None:
        if os.geteuid() != 0:
            return "dropping packets needs root (nftables)"
        if shutil.which("nft") is None and not Path("/usr/sbin/nft").exists():
            return "dropping packets needs `nft` (nftables)"
        return None

    def close(self) -> None:
        subprocess.run([self._nft, "delete", "table", "inet", self.table], capture_output=True, check=False)


def split_hostport(text: str) -> tuple[str, int]:
    """`"1.2.3.4:80"` or `"[::1]:80"` -> `(host, port)`."""
    m = re.fullmatch(r"\[(.+)\]:(\d+)|([^:]*):(\d+)", text)
    if not m:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = m.group(1) if m.group(1) is not None else m.group(3)
    return host, int(m.group(2) or m.group(4))


def connect_host(listen_host: str) -> str:
    """Where to connect to reach a server listening on `listen_host` (a wildcard means loopback)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(listen_host, listen_host)


# ------------------------------------------------------------------------------------------ network namespaces

_CLONE_NEWNET = 0x40000000
_libc: ctypes.CDLL | None = None


def netns_path(netns: str) -> Path:
    return Path("/run/netns") / netns


def netns_socket(netns: str | None, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket that lives in network namespace `netns` (None: this process's own).

    A helper thread enters the namespace with setns(2) (which only affects that thread), creates the socket and ends;
    the socket keeps the namespace it was created in. Connect/bind/accept it from any thread.
    """
    if netns is None:
        return socket.socket(family, type)
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    libc = _libc
    result: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(socket.socket(family, type))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=work, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def tcp_connect(host: str, port: int, *, netns: str | None = None, timeout: float = 5.0) -> socket.socket:
    """A connected TCP socket to `host:port`, made from inside `netns` when given."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = netns_socket(netns, family)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def tcp_accepts(host: str, port: int, *, netns: str | None = None, timeout: float = 1.0) -> bool:
    """True when a TCP connection to `host:port` (from `netns`) succeeds."""
    try:
        tcp_connect(host, port, netns=netns, timeout=timeout).close()
    except OSError:
        return False
    return True


def in_netns(argv: Sequence[str], netns: str | None) -> list[str]:
    """`argv`, run through `ip netns exec NETNS` when a namespace is given (`ip` execs the program: same pid)."""
    return [IP, "netns", "exec", netns, *argv] if netns else list(argv)


# ---------------------------------------------------------------------------------------------------- environment


def base_env(overrides: Mapping[str, str | None] | None = None, *, home: Path | None = None) -> dict[str, str]:
    """This process's environment minus proxies and ztm settings, with `src/` importable, unbuffered output,
    `HOME` set when given, then `overrides` applied (a value of None removes the variable). Where the environment
    says PYTHONDONTWRITEBYTECODE (and names no PYTHONPYCACHEPREFIX), bytecode goes to a directory of this session
    instead, so only the first process compiles each module."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if home is not None:
        env["HOME"] = str(home)
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    if env.get("PYTHONDONTWRITEBYTECODE") and not env.get("PYTHONPYCACHEPREFIX"):
        # Without a bytecode cache every `ztm` process compiles its imports again (a CLI call took 3-5 s instead of
        # 1.2 s on a loaded 2-core machine): cache them in a directory of this session, never in the source tree.
        del env["PYTHONDONTWRITEBYTECODE"]
        env["PYTHONPYCACHEPREFIX"] = str(_pycache_dir())
    return env


_PYCACHE_ROOT: Path | None = None


def _pycache_dir() -> Path:
    """The session's `PYTHONPYCACHEPREFIX` for the processes it starts (removed by `cleanup_session`)."""
    global _PYCACHE_ROOT
    if _PYCACHE_ROOT is None:
        _PYCACHE_ROOT = Path(tempfile.mkdtemp(prefix="ztm-test-pycache-"))
    return _PYCACHE_ROOT


def unique_dir(parent: Path, name: str) -> Path:
    """`parent/name`, or `parent/name-2`, `-3`... whichever does not exist yet; created."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        path = parent / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------------- processes

_REGISTRY: list[Proc] = []
_REGISTRY_LOCK = threading.Lock()
_CLI_LOG: list[str] = []
_LOG_ROOT: Path | None = None
_proc_ids = itertools.count(1)


def _default_log_dir() -> Path:
    global _LOG_ROOT
    if _LOG_ROOT is None:
        _LOG_ROOT = Path(tempfile.mkdtemp(prefix="ztm-test-logs-"))
    return _LOG_ROOT


def registered_procs() -> list[Proc]:
    """Every `Proc` created in this test session, oldest first."""
    with _REGISTRY_LOCK:
        return list(_REGISTRY)


def stop_all(procs: Iterable[Proc] | None = None) -> None:
    """Stop `procs` (default: every registered one), newest first; never raises for one that will not die."""
    for proc in reversed(list(registered_procs() if procs is None else procs)):
        with contextlib.suppress(Exception):
            proc.stop()


def cleanup_session() -> None:
    """Session end: stop everything and drop the default log directory."""
    stop_all()
    global _LOG_ROOT, _PYCACHE_ROOT
    for root in (_LOG_ROOT, _PYCACHE_ROOT):
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    _LOG_ROOT = _PYCACHE_ROOT = None


def cli_log_mark() -> int:
    return len(_CLI_LOG)


def cli_log_since(mark: int) -> list[str]:
    return _CLI_LOG[mark:]


class Proc:
    """One started subprocess.

    Output (stdout and stderr together) goes to a log file, never to a pipe. The process is the leader of a new
    session, so `stop()` / `kill9()` reach its children too. Under `netns`, the program is started with
    `ip netns exec NETNS ...`, which execs it: `pid` is the program's own pid.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        netns: str | None = None,
        name: str | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.netns = netns
        self.name = name or Path(self.argv[0]).name
        self.id = next(_proc_ids)
        log_dir = log_dir if log_dir is not None else _default_log_dir()
        log_dir.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)
        self.log_path = log_dir / f"{safe}.{self.id}.log"
        self.returncode: int | None = None
        self.started = time.monotonic()
        full = in_netns(self.argv, netns)
        with open(self.log_path, "wb") as log:
            self._popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else base_env(),
                start_new_session=True,
            )
        self.pid = self._popen.pid
        # A pidfd tells us the process ended without reaping it: while it is an unreaped zombie its pid (= the
        # process group id) cannot be reused, so signalling the group stays safe until we reap it ourselves.
        self._pidfd: int | None = os.pidfd_open(self.pid)
        with _REGISTRY_LOCK:
            _REGISTRY.append(self)

    def __repr__(self) -> str:
        where = f" in {self.netns}" if self.netns else ""
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"<Proc {self.name} pid={self.pid}{where} {state}>"

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # state

    def _exited(self, timeout: float = 0.0) -> bool:
        """True once the process has ended (reaped or not); waits up to `timeout` seconds."""
        if self._pidfd is None:
            return True
        ready, _, _ = select.select([self._pidfd], [], [], max(timeout, 0.0))
        return bool(ready)

    def _reap(self) -> int:
        """The process has ended: kill what is left of its group, then reap it (once)."""
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.returncode = self._popen.wait()
            os.close(self._pidfd)
            self._pidfd = None
        assert self.returncode is not None
        return self.returncode

    @property
    def alive(self) -> bool:
        if self._exited():
            self._reap()
            return False
        return True

    def assert_alive(self) -> None:
        """Raise `Abort` (stops any `wait_until`) with the tail of the log when the process has ended."""
        if not self.alive:
            raise Abort(f"{self.name} exited with status {self.returncode}; its output:\n{self.tail()}")

    # output

    def output(self) -> str:
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_for_output(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Poll the log until regex `pattern` matches (fails early if the process ends without it)."""
        rx = re.compile(pattern)

        def check() -> re.Match[str] | None:
            m = rx.search(self.output())
            if m is None:
                self.assert_alive()
            return m

        return wait_until(check, timeout, f"{self.name} to print {pattern!r}")

    # ending

    def _signal(self, sig: int) -> None:
        if self._pidfd is not None:  # not reaped: the group id is still ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to end by itself; AssertionError after `timeout` seconds."""
        if not self._exited(timeout):
            raise AssertionError(f"{self.name} (pid {self.pid}) still running after {timeout}s")
        return self._reap()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM to the group, wait up to `timeout`, then SIGKILL. Returns the exit status. Idempotent."""
        if self._pidfd is None:
            assert self.returncode is not None
            return self.returncode
        if not self._exited():
            self._signal(signal.SIGTERM)
            if not self._exited(timeout):
                self._signal(signal.SIGKILL)
                self._exited(10.0)
        return self._reap()

    def kill9(self) -> int:
        """Crash it: SIGKILL to the whole group, then reap. Returns the exit status (-9)."""
        self._signal(signal.SIGKILL)
        if not self._exited(10.0):
            raise AssertionError(f"{self.name} (pid {self.pid}) survived SIGKILL for 10s")
        return self._reap()


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    netns: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
    check: bool = True,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion (optionally inside `netns`), output captured as text.

    `check=True` raises AssertionError naming the command with its exit status and output; a timeout always raises
    AssertionError (the command is killed). Every call is recorded for the failure report.
    """
    full = in_netns([os.fspath(a) for a in argv], netns)
    shown = " ".join(full)
    try:
        cp = subprocess.run(
            full,
            capture_output=True,
            text=True,
            errors="replace",
            env=dict(env) if env is not None else base_env(),
            cwd=cwd,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = _text(exc.stdout) + _text(exc.stderr)
        _CLI_LOG.append(f"$ {shown}\n[timed out after {timeout}s]\n{out}")
        raise AssertionError(f"command timed out after {timeout}s: {shown}\n{out}") from None
    _CLI_LOG.append(f"$ {shown}\n[exit {cp.returncode}]\n{cp.stdout}{cp.stderr}")
    if check and cp.returncode != 0:
        raise AssertionError(
            f"command failed with exit status {cp.returncode}: {shown}\n"
            f"--- stdout ---\n{cp.stdout}--- stderr ---\n{cp.stderr}"
        )
    return cp


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


# -------------------------------------------------------------------------------------------------- hub and agent


@dataclass
class Hub:
    proc: Proc
    listen: str
    """`--listen` as given."""
    address: str
    """How agents reach it: the first `--names` entry, e.g. `127.0.0.1:PORT`."""
    permit: Path
    """The root permit written by the hub."""
    data: Path
    home: Path
    dir: Path
    netns: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    zone: str = ""

    @property
    def port(self) -> int:
        return split_hostport(self.listen)[1]

    def permit_json(self) -> dict[str, Any]:
        return dict(json.loads(self.permit.read_text()))

    def ca_pems(self) -> tuple[str, str]:
        """What the hub's operator holds: the mesh CA's private key and certificate (PEM), read from the hub's
        database, so a test can mint certificates as the hub (or an attacker with its disk) would."""
        import sqlite3

        db = sqlite3.connect(f"file:{self.data / 'ztm-hub.db'}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        finally:
            db.close()
        return str(meta["ca_key"]), str(meta["ca_cert"])


def start_hub(
    tmp_path: Path,
    *,
    netns: str | None = None,
    listen: str | None = None,
    names: str | Sequence[str] | None = None,
    extra: Sequence[str] = (),
    env: Mapping[str, str | None] | None = None,
    name: str = "hub",
    timeout: float = 30.0,
    program: Sequence[str] = ZTM,
) -> Hub:
    """Start `ztm run hub` and return once its port accepts TCP connections and the root permit exists.

    Defaults: `listen` is `127.0.0.1:<free port>` (`0.0.0.0:8888` inside a namespace, which is ours alone), `names`
    is the listen address (required when listening on a wildcard address). Files go to `tmp_path/<name>/`: `data/`,
    `home/` (its HOME) and `root.json`. `program` replaces `python -m ztm` (same arguments), e.g. with a test-only
    hub variant (tests/security/evil_hub.py).
    """
    hub = _launch_hub(
        tmp_path, netns=netns, listen=listen, names=names, extra=extra, env=env, name=name, program=program
    )
    _wait_hub_ready(hub, timeout)
    return hub


def _launch_hub(
    tmp_path: Path,
    *,
    netns: str | None = None,
    listen: str | None = None,
    names: str | Sequence[str] | None = None,
    extra: Sequence[str] = (),
    env: Mapping[str, str | None] | None = None,
    name: str = "hub",
    program: Sequence[str] = ZTM,
) -> Hub:
    """`start_hub` without the wait: the process is started, it may not listen yet."""
    if listen is None:
        listen = "0.0.0.0:8888" if netns else f"127.0.0.1:{free_port()}"
    host, _port = split_hostport(listen)
    if names is None:
        if connect_host(host) != host:
            raise ValueError(f"start_hub: listening on {listen} needs names= (the address agents dial)")
        names = [listen]
    elif isinstance(names, str):
        names = [names]
    base = unique_dir(tmp_path, name)
    data, home, permit = base / "data", base / "home", base / "root.json"
    home.mkdir()
    full_env = base_env(env, home=home)
    argv = [*program, "run", "hub", "--listen", listen, "--names", ",".join(names), "--permit", str(permit)]
    argv += ["--data", str(data), *extra]
    proc = Proc(argv, env=full_env, cwd=base, netns=netns, name=name, log_dir=base)
    return Hub(proc, listen, names[0], permit, data, home, base, netns, full_env)


@dataclass
class Cluster:
    """Hubs of one mesh on one PostgreSQL database (`start_cluster`)."""

    hubs: list[Hub]
    store: str
    """The `--store` URL (the password is in each hub's environment, PGPASSWORD)."""

    @property
    def permit(self) -> Path:
        """The root permit, written by the first hub (it lists the hubs online when it was written)."""
        return self.hubs[0].permit

    def kill(self, i: int) -> None:
        """kill -9 hub `i` (its process group)."""
        self.hubs[i].proc.kill9()

    def restart(self, i: int, timeout: float = 30.0) -> Hub:
        """Start hub `i` again with the very same command (after `kill` or a stop)."""
        return restart_hub(self.hubs[i], timeout=timeout)


def start_cluster(
    tmp_path: Path,
    store: str,
    env: Mapping[str, str | None],
    hubs: Sequence[tuple[str, str]] = (("hub-a", ""), ("hub-b", "")),
    *,
    extra: Sequence[str] = (),
    netns: Sequence[str | None] | None = None,
    listen: Sequence[str | None] | None = None,
    names: Sequence[str | None] | None = None,
    admin: Sequence[str | None] | None = None,
) -> Cluster:
    """Start one hub per `(name, zone)` on the PostgreSQL database `store` (`env` carries PGPASSWORD): the first
    creates the mesh and its CA key file, which the others get a copy of (as an operator would copy it), each
    with its own data directory, port and `--zone` (and `--admin` when `admin` gives one)."""
    started: list[Hub] = []
    key_file: Path | None = None
    for i, (name, zone) in enumerate(hubs):
        args = ["--store", store, *extra]
        if zone:
            args += ["--zone", zone]
        if admin and admin[i]:
            args += ["--admin", str(admin[i])]
        if key_file is not None:
            copy = unique_dir(tmp_path, f"{name}-key") / "ca.key"
            copy.write_bytes(key_file.read_bytes())
            copy.chmod(0o600)
            args += ["--ca-key-file", str(copy)]
        hub = start_hub(
            tmp_path,
            name=name,
            extra=args,
            env=env,
            netns=netns[i] if netns else None,
            listen=listen[i] if listen else None,
            names=names[i] if names else None,
        )
        hub.zone = zone
        if key_file is None:
            key_file = hub.data / "ca.key"
        started.append(hub)
    return Cluster(started, store)


def _wait_hub_ready(hub: Hub, timeout: float) -> None:
    """Wait until `hub.proc` listens and the root permit exists; stop the process if it never gets there."""
    proc = hub.proc
    host, port = split_hostport(hub.listen)

    def ready() -> bool:
        proc.assert_alive()
        return hub.permit.exists() and tcp_accepts(connect_host(host), port, netns=hub.netns, timeout=1.0)

    try:
        wait_until(ready, timeout, f"{proc.name} to listen on {hub.listen} and write {hub.permit.name}")
    except BaseException:
        proc.stop()
        raise


def restart_hub(hub: Hub, *, timeout: float = 30.0) -> Hub:
    """Stop `hub` (SIGTERM, as an operator would) and run the very same `ztm run hub` command again: same data
    directory, HOME, listen address and options. Returns `hub`, whose `proc` is the new process, once it is ready."""
    old = hub.proc
    old.stop()
    hub.proc = Proc(old.argv, env=hub.env, cwd=hub.dir, netns=hub.netns, name=old.name, log_dir=hub.dir)
    _wait_hub_ready(hub, timeout)
    return hub


class _NetnsHTTPConnection(http.client.HTTPConnection):
    """`HTTPConnection` whose socket is created inside a network namespace."""

    def __init__(self, host: str, port: int, *, netns: str | None, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._netns = netns

    def connect(self) -> None:
        self.sock = tcp_connect(self.host, self.port, netns=self._netns, timeout=self.timeout or 10.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class Agent:
    name: str
    proc: Proc
    api_address: str
    """`127.0.0.1:PORT`: the agent's `--listen`, also what `--agent` names."""
    data: Path
    home: Path
    dir: Path
    token: str
    netns: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return split_hostport(self.api_address)[1]

    def cli(
        self, *args: str | os.PathLike[str], check: bool = True, timeout: float = 30.0, input: str | None = None,
        env: Mapping[str, str | None] | None = None,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """`ztm --agent ADDR ARGS...` with this agent's HOME (and in its namespace); `env` overrides variables of
        this agent's environment (None removes one), e.g. `env={"ZTM_MESH": "two"}`."""
        full_env = {k: v for k, v in {**self.env, **(env or {})}.items() if v is not None}
        return run([*ZTM, "--agent", self.api_address, *args], netns=self.netns, env=full_env, cwd=self.dir,
                   timeout=timeout, check=check, input=input)  # fmt: skip

    def cli_json(self, *args: str | os.PathLike[str], timeout: float = 30.0) -> Any:
        """`cli(*args, "-o", "json")`, parsed."""
        cp = self.cli(*args, "-o", "json", timeout=timeout)
        try:
            return json.loads(cp.stdout)
        except ValueError as exc:
            raise AssertionError(f"ztm {' '.join(map(str, args))} -o json printed no JSON: {cp.stdout!r}") from exc

    def api(
        self, method: str, path: str, body: Any = None, *, token: str | None = None, timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:  # fmt: skip
        """Direct HTTP call to the agent's API with its token; returns (status, parsed JSON or None or raw text)."""
        host, port = split_hostport(self.api_address)
        conn = _NetnsHTTPConnection(host, port, netns=self.netns, timeout=timeout)
        try:
            hdrs = {"Authorization": f"Bearer {self.token if token is None else token}", **(headers or {})}
            payload = None
            if body is not None:
                payload = json.dumps(body).encode()
                hdrs["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            status = resp.status
        finally:
            conn.close()
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    # conveniences on top of the CLI contract

    def join(self, mesh: str, as_name: str, permit: Path, *extra: str, timeout: float = 30.0) -> None:
        self.cli("join", mesh, "--as", as_name, "--permit", str(permit), *extra, timeout=timeout)

    def endpoints(self, *extra: str) -> list[dict[str, Any]]:
        """`ztm get ep -o json`."""
        eps = self.cli_json("get", "ep", *extra)
        assert isinstance(eps, list), f"get ep -o json: expected a list, got {eps!r}"
        return eps

    def online_names(self, *extra: str) -> set[str]:
        """Names of the endpoints this agent sees online."""
        return {str(e.get("name")) for e in self.endpoints(*extra) if e.get("online")}

    def meshes(self) -> list[dict[str, Any]]:
        """`ztm get mesh -o json` (a single object is wrapped in a list)."""
        got = self.cli_json("get", "mesh")
        return got if isinstance(got, list) else [got]


def start_agent(
    tmp_path: Path,
    name: str,
    *,
    netns: str | None = None,
    port: int | None = None,
    env: Mapping[str, str | None] | None = None,
    extra: Sequence[str] = (),
    timeout: float = 30.0,
) -> Agent:
    """Start `ztm run agent --listen 127.0.0.1:PORT` and return once `GET /api/version` answers with its token.

    `port` defaults to a free one (7777 inside a namespace). Files go to `tmp_path/agent-<name>/`: `data/` and
    `home/` (its HOME; the CLI calls of `Agent.cli` use the same one).
    """
    agent = _launch_agent(tmp_path, name, netns=netns, port=port, env=env, extra=extra)
    _wait_agent_ready(agent, timeout)
    return agent


def _launch_agent(
    tmp_path: Path,
    name: str,
    *,
    netns: str | None = None,
    port: int | None = None,
    env: Mapping[str, str | None] | None = None,
    extra: Sequence[str] = (),
) -> Agent:
    """`start_agent` without the wait: the process is started, its API may not answer yet."""
    if port is None:
        port = 7777 if netns else free_port()
    api = f"127.0.0.1:{port}"
    base = unique_dir(tmp_path, f"agent-{name}")
    data, home = base / "data", base / "home"
    home.mkdir()
    full_env = base_env(env, home=home)
    argv = [*ZTM, "run", "agent", "--listen", api, "--data", str(data), *extra]
    proc = Proc(argv, env=full_env, cwd=base, netns=netns, name=f"agent-{name}", log_dir=base)
    return Agent(name, proc, api, data, home, base, "", netns, full_env)


def start_hub_and_agents(
    tmp_path: Path,
    names: Sequence[str],
    *,
    hub_extra: Sequence[str] = (),
    hub_env: Mapping[str, str | None] | None = None,
    hub_program: Sequence[str] = ZTM,
    agent_extra: Mapping[str, Sequence[str]] | None = None,
    timeout: float = 30.0,
) -> tuple[Hub, dict[str, Agent]]:
    """`start_hub(tmp_path, extra=hub_extra, env=hub_env, program=hub_program)` and `start_agent(tmp_path, name,
    extra=agent_extra[name])` for each of `names`, all launched before any is waited for (their start-ups overlap),
    each ready on return; nothing is joined. On an error, the ones already launched are stopped."""
    procs: list[Proc] = []
    try:
        hub = _launch_hub(tmp_path, extra=hub_extra, env=hub_env, program=hub_program)
        procs.append(hub.proc)
        agents: dict[str, Agent] = {}
        for name in names:
            agents[name] = _launch_agent(tmp_path, name, extra=(agent_extra or {}).get(name, ()))
            procs.append(agents[name].proc)
        _wait_hub_ready(hub, timeout)
        for agent in agents.values():
            _wait_agent_ready(agent, timeout)
    except BaseException:
        stop_all(procs)
        raise
    return hub, agents


def _wait_agent_ready(agent: Agent, timeout: float) -> None:
    """Read the token and wait until `agent.proc` answers `GET /api/version`; stop the process if it never does."""
    proc = agent.proc
    token_file = agent.data / "agent.token"
    agent.token = ""

    def ready() -> bool:
        proc.assert_alive()
        # read every time: the agent makes a new token at each start, and the file may still hold the last run's
        agent.token = token_file.read_text().strip() if token_file.exists() else ""
        if not agent.token:
            return False
        status, _ = agent.api("GET", "/api/version", timeout=2.0)
        return status == 200

    try:
        wait_until(ready, timeout, f"agent {agent.name} to answer GET /api/version on {agent.api_address}")
    except BaseException:
        proc.stop()
        raise


def restart_agent(agent: Agent, *, timeout: float = 30.0) -> Agent:
    """Stop `agent` (SIGTERM) and run the very same `ztm run agent` command again: same data directory, HOME, API
    address and options. Returns `agent`, whose `proc` is the new process, once its API answers."""
    old = agent.proc
    old.stop()
    agent.proc = Proc(old.argv, env=agent.env, cwd=agent.dir, netns=agent.netns, name=old.name, log_dir=agent.dir)
    _wait_agent_ready(agent, timeout)
    return agent


def join_all(mesh: str, joins: Iterable[tuple[Agent, str]], permit: Path) -> None:
    """`agent.join(mesh, name, permit)` for each `(agent, name)`, side by side (each is a CLI process: their
    start-ups overlap); returns once all joined, raises the first failure."""
    threads = [(agent, name) for agent, name in joins]
    with ThreadPoolExecutor(max(1, len(threads))) as pool:
        for future in [pool.submit(agent.join, mesh, name, permit) for agent, name in threads]:
            future.result()


def invite(root: Agent, invitee: Agent, user: str, permit: Path, *extra: str) -> Path:
    """The invite flow through the CLI: `ztm identity` on `invitee` (saved as `permit` with suffix `.pem`), then
    `ztm invite USER --identity PEM --permit PERMIT [extra...]` on `root`'s agent. Returns `permit`."""
    identity = permit.with_suffix(".pem")
    identity.write_text(invitee.cli("identity").stdout)
    root.cli("invite", user, "--identity", identity, "--permit", permit, *extra)
    return permit


@dataclass
class PolicyMesh:
    """What `policy_mesh` started: a hub with an admin address and three agents joined to one mesh."""

    hub: Hub
    admin: str
    """The hub's admin address (HOST:PORT)."""
    agents: dict[str, Agent]
    """By agent name: `root` (endpoint `alice`), `bob` (endpoint `bob-laptop`, user bob) and the third."""
    clients: dict[str, Any]
    """By agent name: a `reliability.hubclient.HubClient` on that agent's certificate, for those asked for."""


@contextlib.contextmanager
def policy_mesh(
    tmp: Path, mesh: str, third: tuple[str, str, str | None], clients: Sequence[str] = ("root", "bob")
) -> Iterator[PolicyMesh]:
    """A hub with `--admin` and agents `root`, `bob` and `third` = (agent, endpoint, user) in mesh `mesh`: root joins
    as endpoint `alice` with the hub's permit, bob as `bob-laptop` invited as user bob, the third invited as its
    user (or, with user None, joined with the hub's permit, as root's); a HubClient on each agent of `clients`.
    Everything is closed and stopped on the way out (the policy tests' common world)."""
    from reliability.hubclient import HubClient  # it imports this module

    procs: list[Proc] = []
    opened: dict[str, Any] = {}
    try:
        admin = f"127.0.0.1:{free_port()}"
        name, endpoint, user = third
        hub, agents = start_hub_and_agents(tmp, ("root", "bob", name), hub_extra=["--admin", admin])
        procs += [hub.proc, *(a.proc for a in agents.values())]
        root = agents["root"]
        root.join(mesh, "alice", hub.permit)
        agents["bob"].join(mesh, "bob-laptop", invite(root, agents["bob"], "bob", tmp / "bob.json"))
        permit = hub.permit if user is None else invite(root, agents[name], user, tmp / f"{user}.json")
        agents[name].join(mesh, endpoint, permit)
        for key in clients:
            opened[key] = HubClient(hub.address, agents[key].data / "meshes" / mesh)
        yield PolicyMesh(hub, admin, agents, opened)
    finally:
        for client in opened.values():
            client.close()
        for proc in reversed(procs):
            proc.stop()


# ------------------------------------------------------------------------------------------------ failure reports


def failure_report(procs: Iterable[Proc], cli_mark: int | None = None, max_chars: int = 20_000) -> str:
    """Text for a failed test: the tail of every given process's log, then the CLI calls made since `cli_mark`."""
    parts: list[str] = []
    for proc in procs:
        text = proc.output()
        if len(text) > max_chars:
            text = f"[... {len(text) - max_chars} earlier characters cut ...]\n" + text[-max_chars:]
        alive = proc.returncode is None and proc._pidfd is not None and not proc._exited()
        state = "still running" if alive else f"exited {proc.returncode}"
        parts.append(f"===== {proc.name} (pid {proc.pid}, {state}) {' '.join(proc.argv)}\n"
                     f"      log: {proc.log_path}\n{text}")  # fmt: skip
    if cli_mark is not None:
        calls = cli_log_since(cli_mark)
        if calls:
            shown = calls[-40:]
            parts.append("===== CLI calls" + (f" (last {len(shown)} of {len(calls)})" if len(calls) > 40 else ""))
            parts.extend(c[-4000:] for c in shown)
    return "\n".join(parts)


def by_name(eps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(e["name"]): e for e in eps}


def one_line_error(cp: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one line on stderr and no traceback; returns that line."""
    assert cp.returncode != 0, f"expected a failure, got exit 0: {cp.stdout!r}"
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got: {cp.stderr!r}"
    assert "Traceback" not in cp.stderr + cp.stdout
    return lines[0]
