"""Processes of terminal sessions on the target: spawned on a PTY or on pipes, in a session of their own, read and
written through non-blocking file descriptors on the event loop, and killed as a whole session.

`spawn_pty` gives the child a new session with the PTY as its controlling terminal (so Ctrl-C in the data becomes
SIGINT for the foreground job, and a resize becomes SIGWINCH); `spawn_pipes` gives it three pipes and a new session.
Either way the child's session id is its pid, which `kill_session` uses to reach every process it started (also
jobs a shell moved to process groups of their own). The process is spawned with `subprocess.Popen` (the same on
asyncio's loop and on uvloop) and its exit is awaited through a pidfd where Linux has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import subprocess
import termios
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

READ_CHUNK = 64 * 1024


@dataclass
class Child:
    """A running session process and our ends of its terminal or pipes (all non-blocking)."""

    proc: subprocess.Popen[bytes]
    stdin: int
    """The fd stdin bytes go to: the PTY master, or the write end of the stdin pipe (-1 once closed)."""
    outputs: dict[int, int]
    """protocol channel (STDOUT, STDERR) -> fd to read; a PTY has only STDOUT (the master)."""
    pty: bool
    _closed: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def resize(self, cols: int, rows: int) -> None:
        if self.pty:
            set_size(self.stdin, cols, rows)

    def send_signal(self, signum: int) -> None:
        """To the foreground process group of the PTY (the job at the prompt), or the command's group."""
        group = self.pid
        if self.pty:
            with contextlib.suppress(OSError):
                group = os.tcgetpgrp(self.stdin)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signum)

    def close_stdin(self) -> None:
        if not self.pty and self.stdin >= 0:
            self._close(self.stdin)
            self.stdin = -1

    def close(self) -> None:
        for fd in {self.stdin, *self.outputs.values()}:
            if fd >= 0:
                self._close(fd)

    def _close(self, fd: int) -> None:
        if fd in self._closed:
            return
        self._closed.add(fd)
        loop = asyncio.get_running_loop()
        loop.remove_reader(fd)
        loop.remove_writer(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


def set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _controlling_tty() -> None:  # pragma: no cover - runs in the child, between fork and exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def spawn_pty(argv: Sequence[str], env: Mapping[str, str], cwd: str, cols: int, rows: int) -> Child:
    """`argv` on a new PTY of `cols` x `rows` that becomes its controlling terminal; OSError if it cannot start."""
    master, slave = os.openpty()
    try:
        set_size(slave, cols, rows)
        proc = subprocess.Popen(
            list(argv),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_controlling_tty,  # after setsid, with fd 0 already the slave
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # the child has its copies: reading the master ends (EIO) when the last one closes
    os.set_blocking(master, False)
    return Child(proc, master, {1: master}, pty=True)


def spawn_pipes(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> Child:
    """`argv` with stdin, stdout and stderr on pipes, in a new session; OSError if it cannot start."""
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    fds = [os.dup(f.fileno()) for f in (proc.stdin, proc.stdout, proc.stderr)]
    for f in (proc.stdin, proc.stdout, proc.stderr):
        f.close()
    for fd in fds:
        os.set_blocking(fd, False)
    return Child(proc, fds[0], {1: fds[1], 2: fds[2]}, pty=False)


async def _ready(fd: int, *, write: bool = False) -> None:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await waiter
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def read_some(fd: int) -> bytes:
    """What `fd` has (up to READ_CHUNK bytes), waiting for some; b"" at the end (EOF, or EIO: the PTY's last
    user closed it)."""
    while True:
        try:
            return os.read(fd, READ_CHUNK)
        except BlockingIOError:
            await _ready(fd)
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EBADF):
                return b""
            raise


async def write_all(fd: int, data: bytes) -> None:
    """Write all of `data`, waiting while the PTY's or pipe's buffer is full (back-pressure to the stream)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await _ready(fd, write=True)
            continue
        view = view[n:]


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """Wait for the process to end without blocking the loop; its returncode (negative: killed by that signal)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = -1
    try:
        while proc.poll() is None:
            if pidfd >= 0:
                await _ready(pidfd)
            else:
                await asyncio.sleep(0.05)
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    return int(proc.returncode)


def session_members(sid: int) -> list[int]:
    """Pids of the processes in session `sid` (Linux /proc; empty elsewhere)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) > 3 and fields[3] == str(sid).encode():
                found.append(int(entry.name))
    return found


def kill_session(sid: int, signum: int = signal.SIGKILL) -> None:
    """Send `signum` to every process of session `sid` and to its process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signum)
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
