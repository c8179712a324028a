"""Shared helpers of the benchmarks: real `ztm` processes in a temporary directory, polling, statistics, tables.

Stdlib only (plus nothing from `ztm` itself), so the helpers never change what they measure. Every process is the
leader of a new session: `Proc.stop()` signals the whole group. `Workspace` owns a temporary directory and every
process started through it; leaving its `with` block stops them all (newest first) and removes the directory.

Network rule: everything listens on and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PYTHON = sys.executable
ZTM: list[str] = [PYTHON, "-m", "ztm"]
HOST = "127.0.0.1"

_SCRUBBED = (
    "http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "FTP_PROXY",
    "ZTM_DATA", "ZTM_AGENT", "ZTM_MESH", "ZTM_TOKEN",
)  # fmt: skip


# ------------------------------------------------------------------------------------------------------- polling


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.01) -> T:
    """Call `predicate` until it returns something truthy (exceptions count as "not yet"); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = predicate()
        except (OSError, ValueError, http.client.HTTPException, AssertionError) as exc:
            last = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            detail = f"; last error: {type(last).__name__}: {last}" if last else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tcp_accepts(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def raise_nofile(want: int) -> tuple[int, int]:
    """Raise this process's soft open-files limit towards `want` (capped by the hard limit); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ----------------------------------------------------------------------------------------------------- processes


def bench_env(home: Path, overrides: Mapping[str, str] | None = None, src: Path = SRC) -> dict[str, str]:
    """The environment of a benchmark process: `src` (the code to run) first on PYTHONPATH, HOME = `home`."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["HOME"] = str(home)
    env.update(overrides or {})
    return env


class Proc:
    """A subprocess in its own session with its output in a log file; `stop()` reaches its whole group."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str],
        cwd: Path,
        nofile: int | None = None,
        pipes: bool = False,
    ) -> None:
        """`pipes`: stdin and stdout are pipes (`self.popen.stdin/stdout`), only stderr goes to the log."""
        self.argv = list(argv)
        self.log_path = log_path
        preexec = None
        if nofile is not None:

            def preexec() -> None:  # runs in the child between fork and exec
                _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                soft = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log,
                stderr=log,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=preexec,
            )
        self.pid = self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive:
            raise RuntimeError(f"{self.argv[2:4]} exited with {self.popen.returncode}; log:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        # the leader is reaped (or still ours): kill whatever is left of its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10.0)
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@dataclass
class Hub:
    proc: Proc
    port: int
    permit: Path
    data: Path

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def permit_json(self) -> dict[str, Any]:
        return dict(json.loads(self.permit.read_text()))


@dataclass
class Agent:
    name: str
    proc: Proc
    port: int
    home: Path
    data: Path
    env: dict[str, str]
    token: str = ""
    _conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def cli_argv(self, *args: str) -> list[str]:
        return [*ZTM, "--agent", self.address, *args]

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run `ztm --agent ADDR ARGS...` with this agent's HOME; raise with its output when it fails."""
        cp = subprocess.run(
            self.cli_argv(*args),
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.home,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if cp.returncode != 0:
            raise RuntimeError(f"ztm {' '.join(args)} failed ({cp.returncode}): {cp.stdout}{cp.stderr}")
        return cp

    def api(self, method: str, path: str, body: Any = None, *, timeout: float = 10.0) -> tuple[int, Any]:
        """One call on a kept-alive HTTP/1.1 connection to the agent's API (reconnects once if it was dropped)."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
                break
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        return resp.status, (json.loads(raw) if raw else None)

    def close_api(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Workspace:
    """A temporary directory plus every process started in it; cleaned up on exit (also on Ctrl-C / SIGTERM)."""

    def __init__(self, prefix: str, keep: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"ztm-bench-{prefix}-"))
        self.keep = keep
        self.procs: list[Proc] = []
        self._old_term: Any = None

    def __enter__(self) -> Workspace:
        self._old_term = signal.signal(signal.SIGTERM, _term_to_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        signal.signal(signal.SIGTERM, self._old_term)
        if self.keep:
            print(f"(kept {self.dir})")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def start_hub(
        self,
        *,
        extra: Sequence[str] = (),
        nofile: int | None = None,
        timeout: float = 30.0,
        name: str = "hub",
        src: Path = SRC,
    ) -> Hub:
        """A hub in the directory `name`, running the code under `src` (another revision's export for a baseline)."""
        port = free_port()
        base = self.dir / name
        home = base / "home"
        home.mkdir(parents=True)
        data, permit = base / "data", base / "root.json"
        argv = [*ZTM, "run", "hub", "--listen", f"{HOST}:{port}", "--permit", str(permit), "--data", str(data)]
        proc = Proc([*argv, *extra], log_path=base / "hub.out", env=bench_env(home, src=src), cwd=base, nofile=nofile)
        self.procs.append(proc)

        def ready() -> bool:
            proc.check_alive()
            return permit.exists() and tcp_accepts(port)

        _wait_or_raise(ready, timeout, "the hub to listen")
        return Hub(proc, port, permit, data)

    def start_agent(self, name: str, *, timeout: float = 30.0, extra: Sequence[str] = (), src: Path = SRC) -> Agent:
        """An agent in the directory `agent-NAME`, running the code under `src`; its CLI (`Agent.cli`) runs it too."""
        port = free_port()
        base = self.dir / f"agent-{name}"
        home = base / "home"
        home.mkdir(parents=True)
        data = base / "data"
        env = bench_env(home, src=src)
        argv = [*ZTM, "run", "agent", "--listen", f"{HOST}:{port}", "--data", str(data), *extra]
        proc = Proc(argv, log_path=base / "agent.out", env=env, cwd=base)
        self.procs.append(proc)
        agent = Agent(name, proc, port, home, data, env)
        token_file = data / "agent.token"

        def ready() -> bool:
            proc.check_alive()
            # read every time: the agent makes a new token at each start, the file may still hold the last run's
            agent.token = token_file.read_text().strip() if token_file.exists() else ""
            if not agent.token:
                return False
            status, _ = agent.api("GET", "/api/version", timeout=2.0)
            return status == 200

        _wait_or_raise(ready, timeout, f"agent {name} to answer")
        return agent


def _wait_or_raise(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (OSError, ValueError, http.client.HTTPException):
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def _term_to_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


# ----------------------------------------------------------------------------------------------------- /proc


CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB (from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` in seconds (from /proc/PID/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            parts = line.split()
            return f"{parts[3]}/{parts[4]}"
    return "?"


# ---------------------------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of `values`."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": min(values) if values else float("nan"),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable as plain text too), columns padded."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    out = [line(cells[0]), "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


STUNNEL_GLOBAL = "foreground = yes\npid =\nsyslog = no\ndebug = warning\n"
"""The stunnel4 baselines' global options: in the foreground, no pid file, warnings only."""
STUNNEL_SOCKET_OPTS = "socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\nsslVersionMin = TLSv1.3\n"
"""A stunnel4 baseline section's options: TCP_NODELAY on both sockets, TLS 1.3."""


def stunnel_cert(dir: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate and its key (`openssl`, 2 days, CN=bench) in `dir`, for the stunnel4
    baselines: (certificate, key)."""
    cert, key = dir / "cert.pem", dir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=bench"],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    return cert, key


def cpu_per_call(fn: Callable[[int], object], count: int, unit: float) -> float:
    """This process's CPU time per call of fn(i), i in range(count), in seconds times `unit` (1e6: µs, 1e9: ns)."""
    start = time.process_time()
    for i in range(count):
        fn(i)
    return (time.process_time() - start) / count * unit


def figures_table(runs: Sequence[Mapping[str, float]], digits: int) -> str:
    """A table of each figure of `runs` (one mapping a run, the first's keys): its median and min..max over the runs,
    with `digits` decimals."""
    rows = []
    for name in runs[0]:
        values = [run[name] for run in runs]
        median, low, high = statistics.median(values), min(values), max(values)
        rows.append([name, f"{median:.{digits}f}", f"{low:.{digits}f}..{high:.{digits}f}"])
    return table(["figure", "median", "min..max"], rows)


def machine_facts() -> str:
    """`nproc`, memory, CPU model, Python and kernel: one line each."""
    lines = [f"nproc: {os.cpu_count()}"]
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                lines.append(f"memory: {int(line.split()[1]) / 1024 / 1024:.1f} GiB")
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                lines.append(f"cpu: {line.split(':', 1)[1].strip()}")
                break
    lines.append(f"python: {platform.python_version()} ({PYTHON})")
    lines.append(f"kernel: {platform.release()}")
    with contextlib.suppress(OSError):
        lines.append(f"load average at start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return "\n".join(lines)


def src_digest(src: Path = SRC) -> str:
    """sha256 (first 12 hex digits) of `src/ztm/**/*.py`, names and contents: which code a process ran."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((src / "ztm").rglob("*.py")):
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def tree_facts() -> str:
    """Which code was measured: git HEAD (read-only), the files changed since, a hash of `src/ztm/**/*.py`."""

    def git(*args: str) -> str:
        try:
            cp = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "?"
        return cp.stdout.strip() if cp.returncode == 0 else "?"

    changed = [line.split(None, 1)[-1] for line in git("status", "--porcelain", "--", "src").splitlines()]
    h2 = SRC / "ztm" / "h2" / "connection.py"
    lib = "h2 library" if h2.exists() and "from h2." in h2.read_text() else "own codec"
    return (
        f"git HEAD: {git('rev-parse', '--short', 'HEAD')}; src/ztm sha256: {src_digest()}; "
        f"ztm.h2 on: {lib}\nuncommitted in src/: {', '.join(changed) or 'none'}"
    )


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """`with timed() as t: ...` then `t[0]` is the elapsed wall-clock seconds."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------------ py-spy


def py_spy() -> str | None:
    """The `py-spy` executable (next to this Python, or on PATH), or None: profiling is optional."""
    beside = Path(PYTHON).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Spy:
    """`py-spy record -f raw` on a running process until `stop()`; `summary()` reads the collapsed stacks."""

    def __init__(self, pid: int, out: Path, rate: int = 100, native: bool = False) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.out = out
        self.rate = rate
        self.started = time.perf_counter()
        self.seconds = 0.0
        argv = [exe, "record", "-p", str(pid), "-f", "raw", "-o", str(out), "-r", str(rate)]
        argv.append("--native" if native else "--nonblocking")  # py-spy cannot unwind C frames without pausing
        self.popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self.started
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def summary(self, top: int = 15) -> str:
        """The functions seen in most samples (inclusive) and the ones most often on top of the stack (self)."""
        inclusive: dict[str, int] = {}
        self_time: dict[str, int] = {}
        total = 0
        for line in self.out.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [_frame_name(f) for f in stack.split(";")]
            for name in set(frames):
                inclusive[name] = inclusive.get(name, 0) + count
            self_time[frames[-1]] = self_time.get(frames[-1], 0) + count
        if not total:
            return "(no samples)"
        possible = self.rate * self.seconds
        head = f"{total} samples of the busy process in {self.seconds:.1f}s at {self.rate}/s"
        if possible:
            head += f" (busy in ~{100 * total / possible:.0f}% of the samples)"
        rows = []
        # frames on (nearly) every sample are the program's entry and event loop: they say nothing
        by_inclusive = sorted(((k, v) for k, v in inclusive.items() if v < 0.85 * total), key=lambda kv: -kv[1])
        by_inclusive = by_inclusive[:top]
        by_self = sorted(self_time.items(), key=lambda kv: -kv[1])[:top]
        for i in range(max(len(by_inclusive), len(by_self))):
            a = by_inclusive[i] if i < len(by_inclusive) else ("", 0)
            b = by_self[i] if i < len(by_self) else ("", 0)
            rows.append([a[0], f"{100 * a[1] / total:.0f}%", b[0], f"{100 * b[1] / total:.0f}%"])
        head += "; inclusive list without the frames on over 85% of samples (entry point, event loop)"
        return head + "\n" + table(["function (inclusive)", "share", "function (self)", "share"], rows)


def _frame_name(frame: str) -> str:
    """`name (pkg/file.py:123)` -> `name (pkg/file.py)`: one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rpartition(":")[0] or where
    return f"{name} ({path})" if path else name
