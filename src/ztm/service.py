"""`ztm start` / `ztm stop`: run a hub or an agent as a systemd service, or as a detached background process.

Where systemd runs (and we are root) the process is a unit in /etc/systemd/system with `Restart=on-failure`, enabled so
it survives reboots. Elsewhere (containers, non-root, `ZTM_NO_SYSTEMD=1`) it is a background process in its own
session whose pid is in `DATA/KIND.pid` and whose output is appended to `DATA/KIND.out`.

Either way `start` returns only once the process is ready (its readiness probe passes) or has failed, within a
deadline; a process that exits early is reported with the last lines of its output.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ztm.addr import Address
from ztm.apps.net.options import NetOptions
from ztm.config import AgentConfig, HubConfig
from ztm.errors import Forbidden, Timeout, Unavailable, ZtmError

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
UNIT_DIR = Path("/etc/systemd/system")
ENV_NO_SYSTEMD = "ZTM_NO_SYSTEMD"
TAIL_LINES = 20

Say = Callable[[str], None]
Probe = Callable[[], bool]


@dataclass(frozen=True)
class Service:
    """A hub or agent to start: its command line, state directory and readiness probe."""

    kind: str
    """`hub` or `agent`: names the pid and output files and the unit."""
    argv: tuple[str, ...]
    data: Path
    ready: Probe
    ready_what: str
    """What readiness means, for messages: `listening on 0.0.0.0:8888`."""
    user: str | None = None
    """Unix user the systemd unit runs as (the sudo caller); None: root / the current user."""
    home: Path | None = None

    @property
    def pid_file(self) -> Path:
        return pid_file(self.data, self.kind)

    @property
    def out_file(self) -> Path:
        return self.data / f"{self.kind}.out"

    @property
    def unit(self) -> str:
        return unit_name(self.kind, self.data)


def pid_file(data: Path, kind: str) -> Path:
    return data / f"{kind}.pid"


def unit_name(kind: str, data: Path, default_data: Path | None = None) -> str:
    """`ztm-hub.service` for the default data directory, `ztm-hub-1a2b3c4d.service` for another one."""
    default = default_data or service_default_data()
    if data == default:
        return f"ztm-{kind}.service"
    digest = hashlib.sha256(str(data).encode()).hexdigest()[:8]
    return f"ztm-{kind}-{digest}.service"


# ---- who runs it ----


def sudo_user() -> tuple[str, Path] | None:
    """The user who ran `sudo ztm start ...`, with their home: units run as them, so their `ztm` finds the token."""
    name = os.environ.get("SUDO_USER")
    if not name or name == "root" or os.geteuid() != 0:
        return None
    try:
        import pwd

        return name, Path(pwd.getpwnam(name).pw_dir)
    except (KeyError, ImportError):
        return None


def systemd_available() -> bool:
    """True where systemd is PID 1 and we may install units (root), unless `ZTM_NO_SYSTEMD` is set."""
    if os.environ.get(ENV_NO_SYSTEMD):
        return False
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None and os.geteuid() == 0


def service_default_data() -> Path:
    """The default state directory of a started process: `$ZTM_DATA`, else the (sudo caller's) `~/.ztm`."""
    env = os.environ.get("ZTM_DATA")
    if env:
        return Path(env).absolute()
    user = sudo_user() if systemd_available() else None
    return (user[1] if user else Path.home()) / ".ztm"


# ---- command lines ----


def hub_argv(cfg: HubConfig, python: str = sys.executable) -> list[str]:
    default = HubConfig()
    argv = [python, "-m", "ztm", "run", "hub", "--listen", str(cfg.listen), "--data", str(cfg.data)]
    if cfg.names:
        argv += ["--names", ",".join(str(n) for n in cfg.names)]
    if cfg.permit is not None:
        argv += ["--permit", str(cfg.permit)]
    if cfg.max_agents != default.max_agents:
        argv += ["--max-agents", str(cfg.max_agents)]
    if cfg.max_endpoints_per_user != default.max_endpoints_per_user:
        argv += ["--max-endpoints-per-user", str(cfg.max_endpoints_per_user)]
    if cfg.cert_ttl != default.cert_ttl:
        argv += ["--cert-ttl", repr(cfg.cert_ttl)]
    if cfg.heartbeat != default.heartbeat:
        argv += ["--heartbeat", repr(cfg.heartbeat)]
    if cfg.admin is not None:
        argv += ["--admin", str(cfg.admin)]
    if cfg.store is not None:
        argv += ["--store", cfg.store]
    if cfg.store_password_file is not None:
        argv += ["--store-password-file", str(cfg.store_password_file)]
    if cfg.ca_key_file is not None:
        argv += ["--ca-key-file", str(cfg.ca_key_file)]
    if cfg.zone:
        argv += ["--zone", cfg.zone]
    if cfg.mesh_range is not None:
        argv += ["--mesh-range", cfg.mesh_range]
    return argv


def agent_argv(cfg: AgentConfig, python: str = sys.executable) -> list[str]:
    argv = [python, "-m", "ztm", "run", "agent", "--listen", str(cfg.listen), "--data", str(cfg.data)]
    if cfg.join and cfg.join_as and cfg.permit:
        argv += ["--join", cfg.join, "--join-as", cfg.join_as, "--permit", str(cfg.permit)]
    if cfg.direct is not None:
        argv += ["--direct", str(cfg.direct)]
    if cfg.direct_announce is not None:
        argv += ["--direct-announce", str(cfg.direct_announce)]
    if not cfg.p2p:
        argv += ["--no-p2p"]
    if cfg.p2p_keepalive != 5.0:
        argv += ["--p2p-keepalive", f"{cfg.p2p_keepalive:g}"]
    if cfg.p2p_birthday != AgentConfig.p2p_birthday:
        argv += ["--p2p-birthday", str(cfg.p2p_birthday)]
    if cfg.p2p_birthday_every != AgentConfig.p2p_birthday_every:
        argv += ["--p2p-birthday-every", f"{cfg.p2p_birthday_every:g}"]
    if cfg.credit_warn != AgentConfig.credit_warn:
        argv += ["--credit-warn", f"{cfg.credit_warn:g}"]
    if cfg.zone is not None:
        argv += ["--zone", cfg.zone]
    if cfg.net.tun:
        argv += ["--tun"]
    if cfg.net.tun_name != NetOptions.tun_name:
        argv += ["--tun-name", cfg.net.tun_name]
    if cfg.net.accept_routes:
        argv += ["--accept-routes"]
    if cfg.net.dns_suffix != NetOptions.dns_suffix:
        argv += ["--dns-suffix", cfg.net.dns_suffix]
    if cfg.net.expose_ports:
        argv += ["--expose-ports"]
    return argv


def local_target(address: Address) -> Address:
    """Where to connect to reach a listener: 127.0.0.1 / ::1 for the wildcard addresses."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address.host, address.host)
    return Address(host, address.port)


def tcp_probe(address: Address, timeout: float = 0.5) -> Probe:
    target = local_target(address)

    def probe() -> bool:
        try:
            with socket.create_connection((target.host, target.port), timeout=timeout):
                return True
        except OSError:
            return False

    return probe


def http_probe(address: Address, path: str = "/api/version", timeout: float = 0.5) -> Probe:
    """Ready once anything answers HTTP on `address` (any status: the token is not needed to know it is up)."""
    target = local_target(address)

    def probe() -> bool:
        import http.client

        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
        try:
            conn.request("GET", path)
            conn.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    return probe


def hub_service(cfg: HubConfig, python: str = sys.executable) -> Service:
    permit = cfg.permit
    listening = tcp_probe(cfg.listen)

    def ready() -> bool:
        return (permit is None or permit.exists()) and listening()

    user = sudo_user() if systemd_available() else None
    return Service(
        "hub",
        tuple(hub_argv(cfg, python)),
        cfg.data,
        ready,
        f"listening on {cfg.listen}",
        user=user[0] if user else None,
        home=user[1] if user else None,
    )


def agent_service(cfg: AgentConfig, python: str = sys.executable) -> Service:
    user = sudo_user() if systemd_available() else None
    return Service(
        "agent",
        tuple(agent_argv(cfg, python)),
        cfg.data,
        http_probe(cfg.listen),
        f"API on http://{cfg.listen}",
        user=user[0] if user else None,
        home=user[1] if user else None,
    )


# ---- start / stop, choosing systemd or background ----


def start(service: Service, say: Say, timeout: float = START_TIMEOUT) -> bool:
    """Start `service` and wait until ready. Returns False if it was already running; raises `ZtmError` on failure."""
    running = running_pid(service.pid_file)
    if running is not None:
        say(
            f"the {service.kind} is already running (pid {running}; {service.pid_file}); "
            f"'ztm stop {service.kind}' stops it"
        )
        return False
    if systemd_available():
        return _start_unit(service, say, timeout)
    pid = start_background(service.argv, service.pid_file, service.out_file, service.ready, timeout, service.kind)
    if os.geteuid() != 0 and Path("/run/systemd/system").is_dir() and not os.environ.get(ENV_NO_SYSTEMD):
        why = "Not root, so no systemd service was installed"
        how = "use sudo to install one, or run"
    else:
        why = "No service manager runs here"
        how = "run"
    say(
        f"started the {service.kind} in the background (pid {pid}), {service.ready_what}; output: {service.out_file}. "
        f"{why}: it will not come back after a reboot ({how} 'ztm run {service.kind} ...' under a supervisor for that)"
    )
    return True


def stop(kind: str, data: Path, say: Say, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the `kind` started with `data`; returns False (and says so) if it was not running."""
    stopped = False
    unit = unit_name(kind, data)
    if systemd_available() and (UNIT_DIR / unit).exists():
        active = _unit_state(unit).get("ActiveState") in ("active", "activating", "reloading")
        _systemctl("disable", "--now", unit)
        if active:
            say(f"stopped and disabled the {kind} service {unit}")
            stopped = True
    pid = stop_background(pid_file(data, kind), timeout)
    if pid is not None:
        say(f"stopped the {kind} (pid {pid})")
        stopped = True
    if not stopped:
        say(f"the {kind} is not running (no {pid_file(data, kind)})")
    return stopped


# ---- background processes ----


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _reap(pid: int) -> int | None:
    """If `pid` is our exited child, collect it and return its exit code."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if done == pid else None


def pid_alive(pid: int) -> bool:
    """True if process `pid` exists and is not a zombie."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    return not (stat is not None and stat[0] == "Z")


def _started_with(pid: int, pidfile: Path) -> bool:
    """Guards against pid reuse (after a reboot): the process must have started when the pid file was written."""
    stat = _proc_stat(pid)
    boot = _boot_time()
    if stat is None or boot is None or len(stat) < 20:
        return True
    try:
        started = boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")
        written = pidfile.stat().st_mtime
    except (OSError, ValueError):
        return True
    return abs(written - started) < 60


def running_pid(pidfile: Path) -> int | None:
    """The pid in `pidfile` if that process still runs (and is the one that wrote it)."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 1 or not pid_alive(pid) or not _started_with(pid, pidfile):
        return None
    return pid


def _write_pid(pidfile: Path, pid: int) -> None:
    tmp = pidfile.with_name(pidfile.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pidfile)


def tail(path: Path, offset: int = 0, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines written to `path` after byte `offset`."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").rstrip()
    return "\n".join(text.splitlines()[-lines:])


def start_background(
    argv: Sequence[str],
    pidfile: Path,
    out_file: Path,
    ready: Probe,
    timeout: float = START_TIMEOUT,
    name: str = "process",
) -> int:
    """Spawn `argv` detached (own session, stdin /dev/null, output appended to `out_file`), record its pid, and
    wait until `ready()`; returns the pid. Raises `ZtmError` with the output's tail if it exits first, and stops it
    if it is not ready by the deadline."""
    pidfile.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    out_fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.write(out_fd, f"--- {stamp} started: {' '.join(argv)}\n".encode())
        offset = os.lseek(out_fd, 0, os.SEEK_END)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            pid = os.posix_spawn(
                argv[0],
                list(argv),
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out_fd, 1),
                    (os.POSIX_SPAWN_DUP2, out_fd, 2),
                ],
                setsid=True,
            )
        except OSError as exc:
            raise ZtmError(f"cannot start the {name} ({argv[0]}): {exc.strerror or exc}") from None
    finally:
        os.close(out_fd)
    _write_pid(pidfile, pid)
    deadline = time.monotonic() + timeout
    pause = 0.02
    while True:
        code = _reap(pid)
        if code is not None or not pid_alive(pid):
            pidfile.unlink(missing_ok=True)
            how = f"with code {code}" if code is not None else ""
            raise ZtmError(_failure(f"the {name} exited {how} before it was ready", out_file, offset))
        if ready():
            return pid
        left = deadline - time.monotonic()
        if left <= 0:
            stop_background(pidfile, STOP_TIMEOUT)
            raise Timeout(
                _failure(f"the {name} was not ready within {timeout:g}s, so it was stopped", out_file, offset)
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.2)


def _failure(headline: str, out_file: Path, offset: int) -> str:
    last = tail(out_file, offset)
    if not last:
        return f"{' '.join(headline.split())} (no output; see {out_file})"
    return f"{' '.join(headline.split())}; last output ({out_file}):\n{last}"


def stop_background(pidfile: Path, timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM the process of `pidfile`, SIGKILL it after `timeout`; returns its pid, or None if none ran."""
    pid = running_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        return pid
    except PermissionError:
        raise Forbidden(
            f"cannot stop pid {pid} ({pidfile}): permission denied; run as the user who started it"
        ) from None
    if not _wait_gone(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, 5.0):
            raise Unavailable(f"pid {pid} ({pidfile}) survived SIGKILL")
    pidfile.unlink(missing_ok=True)
    return pid


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pause = 0.01
    while pid_alive(pid):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.1)
    return True


# ---- systemd ----

_SAFE = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")


def systemd_quote(arg: str) -> str:
    """`arg` as one word of a unit file command line or setting."""
    quoted = arg if _SAFE.match(arg) else '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return quoted.replace("%", "%%").replace("$", "$$")


def unit_text(service: Service) -> str:
    env = ["PYTHONUNBUFFERED=1"]
    if os.environ.get("PYTHONPATH"):
        env.append(f"PYTHONPATH={os.environ['PYTHONPATH']}")
    lines = [
        "# Written by 'ztm start'; 'ztm stop' disables it.",
        "[Unit]",
        f"Description=ztm {service.kind} (zero-trust mesh), data in {service.data}",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(systemd_quote(a) for a in service.argv),
        "Restart=on-failure",
        "LimitNOFILE=65536",
        "RestartSec=3",
        "TimeoutStopSec=10",
    ]
    if service.user and service.home:
        lines.append(f"User={service.user}")
        env.append(f"HOME={service.home}")
    lines += [f"Environment={systemd_quote(e)}" for e in env]
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def _systemctl(*args: str) -> str:
    try:
        done = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"systemctl {' '.join(args)} failed: {exc}") from None
    if done.returncode != 0 and args[0] not in ("show", "is-active"):
        msg = " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
        raise Unavailable(f"systemctl {' '.join(args)} failed: {msg}")
    return done.stdout


def _unit_state(unit: str) -> dict[str, str]:
    out = _systemctl("show", unit, "-p", "ActiveState", "-p", "NRestarts", "-p", "MainPID")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _journal_tail(unit: str) -> str:
    try:
        done = subprocess.run(
            ["journalctl", "-u", unit, "-n", str(TAIL_LINES), "--no-pager", "-o", "cat"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.rstrip()


def _start_unit(service: Service, say: Say, timeout: float) -> bool:
    unit = service.unit
    if _unit_state(unit).get("ActiveState") == "active":
        say(f"the {service.kind} is already running as the systemd service {unit}; 'ztm stop {service.kind}' stops it")
        return False
    path = UNIT_DIR / unit
    try:
        path.write_text(unit_text(service))
    except OSError as exc:
        raise Forbidden(f"cannot write {path} ({exc.strerror or exc}): run with sudo") from None
    if service.user:
        service.data.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.chown(service.data, service.user)
    _systemctl("daemon-reload")
    _systemctl("enable", "--now", unit)
    deadline = time.monotonic() + timeout
    while True:
        state = _unit_state(unit)
        if state.get("ActiveState") in ("failed", "inactive") or state.get("NRestarts", "0") not in ("", "0"):
            logs = _journal_tail(unit)
            _systemctl("disable", "--now", unit)
            raise ZtmError(
                f"the {service.kind} service {unit} exited before it was ready, so it was disabled"
                + (f"; last output (journalctl -u {unit}):\n{logs}" if logs else f"; see journalctl -u {unit}")
            )
        if service.ready():
            break
        if time.monotonic() >= deadline:
            _systemctl("disable", "--now", unit)
            raise Timeout(
                f"the {service.kind} service {unit} was not ready within {timeout:g}s, so it was disabled; "
                f"see journalctl -u {unit}"
            )
        time.sleep(0.1)
    say(
        f"started the {service.kind} as the systemd service {unit} ({service.ready_what}); it comes back after a "
        f"reboot. Logs: journalctl -u {unit}"
    )
    return True
