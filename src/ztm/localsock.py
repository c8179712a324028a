"""The agent's local UNIX socket: bind, connect, and the peer's OS user from the kernel (`SO_PEERCRED`).

The CLI talks to its own agent over `DATA/agent.sock` (data directory 0700, socket 0600) instead of sending a secret
to whatever holds the TCP port: both ends ask the kernel who the other is, and each accepts only its own OS user (or
root, who can read both anyway). Paths longer than `sun_path` allows are reached through `/proc/self/fd/N/NAME` of
an open directory, so a deep data directory still works.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from pathlib import Path

SOCKET_NAME = "agent.sock"
_MAX_PATH = 100
"""Bytes of a socket path used as is; longer ones go through /proc/self/fd (sun_path holds 108 with the NUL)."""


def peer_uid(sock: socket.socket) -> int:
    """The OS user id of the process at the other end of a connected UNIX socket, as the kernel records it."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def trusted_uid(uid: int) -> bool:
    """A peer this process's user may trust with its secrets: itself, or root."""
    return uid in (os.getuid(), 0)


def _with_short_path(path: Path, action: str, sock: socket.socket) -> None:
    """`sock.bind(path)` or `sock.connect(path)`, through /proc/self/fd when `path` is too long for sun_path."""
    text = os.fsencode(path)
    if len(text) <= _MAX_PATH:
        getattr(sock, action)(text)
        return
    dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        getattr(sock, action)(f"/proc/self/fd/{dir_fd}/{path.name}")
    finally:
        os.close(dir_fd)


def bind(path: Path) -> socket.socket:
    """A listening UNIX socket at `path` (a stale socket file is replaced), mode 0600; the caller owns the socket."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_socket():
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            _with_short_path(path, "bind", sock)
        finally:
            os.umask(old)
        path.chmod(0o600)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def connect(path: Path, timeout: float) -> socket.socket:
    """A blocking socket connected to `path`. Raises OSError (FileNotFoundError, ConnectionRefusedError...)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        _with_short_path(path, "connect", sock)
    except BaseException:
        sock.close()
        raise
    return sock
