"""Client of the agent's local REST API (docs/agent-api.md) on stdlib `http.client`.

Every request has a deadline that covers connecting, sending and reading the whole answer, and every failure becomes
a one-line `ZtmError` that names the agent's address and says what to do.

How the CLI reaches the agent at HOST:PORT, first found wins:
1. the agent's local UNIX socket, through `~/.ztm/agents/HOST_PORT.sock` (the link an agent leaves for the OS user
   who started it; for a loopback address also the other loopback spellings and the wildcard addresses, since an
   agent listening on `0.0.0.0:7777` answers on `127.0.0.1:7777`), or `$ZTM_DATA/agent.sock` / `~/.ztm/agent.sock`
   for the default address. The kernel says who serves it (`SO_PEERCRED`): the CLI talks only to a socket of its
   own OS user (or root), and sends no secret at all there: the agent knows the caller the same way;
2. TCP with the token in env `ZTM_TOKEN` (another OS user's agent, or a remote one): the token is the agent's
   `DATA/agent.token`, made anew at every agent start.
A token is never read from a file and sent over TCP: whoever holds the port while the agent is down would get it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from ztm import localsock
from ztm.addr import Address
from ztm.config import DEFAULT_AGENT_LISTEN, agents_registry_dir, default_data_dir, socket_link_name
from ztm.errors import Forbidden, Timeout, Unauthorized, Unavailable, ZtmError, from_json
from ztm.version import __version__

ENV_TOKEN = "ZTM_TOKEN"  # noqa: S105 - the name of a variable, not a secret
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_WILDCARD = ("0.0.0.0", "::")


class NotAgent(Unavailable):
    """Something answered on the agent's address, but not the ztm agent API."""

    code = "not_agent"


@dataclass(frozen=True)
class Token:
    value: str
    source: str
    """Where it came from: `env ZTM_TOKEN`."""


def segment(value: str) -> str:
    """`value` quoted as one path segment."""
    return quote(value, safe="")


def socket_files(address: Address) -> list[Path]:
    """Paths that may lead to the local socket of the agent at `address`, in the order they are tried."""
    hosts = [address.host]
    if address.host in _LOOPBACK:
        hosts += [h for h in (*_LOOPBACK, *_WILDCARD) if h != address.host]
    registry = agents_registry_dir()
    files = [registry / socket_link_name(Address(host, address.port)) for host in hosts]
    if address.port == DEFAULT_AGENT_LISTEN.port and address.host in _LOOPBACK:
        files.append(default_data_dir() / localsock.SOCKET_NAME)
    return files


def env_token() -> Token | None:
    """The token given in env `ZTM_TOKEN`, if any."""
    env = os.environ.get(ENV_TOKEN, "").strip()
    return Token(env, f"env {ENV_TOKEN}") if env else None


class NotOurs(Forbidden):
    """The agent's socket is served by another OS user: the CLI will not talk to it."""

    code = "not_ours"


def open_local(address: Address, timeout: float) -> tuple[socket.socket, Path] | None:
    """A socket connected to the local socket of the agent at `address`, served by this OS user (or root); None when
    no such socket answers. Raises `NotOurs` for a socket of another user."""
    for path in socket_files(address):
        try:
            sock = localsock.connect(path, timeout)
        except OSError:
            continue  # missing, or a stale file of an agent that is gone
        try:
            uid = localsock.peer_uid(sock)
        except OSError:
            sock.close()
            continue
        if not localsock.trusted_uid(uid):
            sock.close()
            raise NotOurs(
                f"{path} is served by OS user id {uid}, not by you (uid {os.getuid()}): refusing to talk to it; "
                f"remove it, or set {ENV_TOKEN} to reach that agent over TCP"
            )
        return sock, path
    return None


class _Connected(http.client.HTTPConnection):
    """`HTTPConnection` over an already connected socket (UNIX or TCP; the Host header is the agent's address)."""

    def __init__(self, address: Address, sock: socket.socket, timeout: float) -> None:
        super().__init__(address.host, address.port, timeout=timeout)
        self._given: socket.socket | None = sock

    def connect(self) -> None:
        if self._given is None:
            raise ConnectionError("this connection to the agent was used already")
        self.sock, self._given = self._given, None
        self.sock.settimeout(self.timeout)


class AgentClient:
    """Talks JSON to one agent. `timeout` bounds each whole request unless a call passes its own."""

    def __init__(self, address: Address, timeout: float, token: Token | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self._token = token
        self._local: Path | None = None
        """The local socket that answered first, once one did."""

    def dial(self, timeout: float) -> tuple[socket.socket, dict[str, str]]:
        """A connected socket to the agent and the headers that authenticate on it: none on the agent's local
        socket (the kernel names the caller), the token from `ZTM_TOKEN` over TCP. Raises a one-line `ZtmError`."""
        if self._token is None:
            if self._local is not None:
                return self._dial_local(self._local, timeout), {}
            found = open_local(self.address, timeout)
            if found is not None:
                sock, self._local = found
                return sock, {}
            token = env_token()
            if token is None:
                self._probe()
                raise Unauthorized(
                    f"no local socket of the agent at {self.address} for your OS user (looked for "
                    f"{', '.join(map(str, socket_files(self.address)[:1]))} and the like): run ztm as the OS user "
                    f"who started that agent, or set {ENV_TOKEN} to the content of its DATA/agent.token"
                )
            self._token = token
        return self._dial_tcp(timeout), {"Authorization": f"Bearer {self._token.value}"}

    def _dial_local(self, path: Path, timeout: float) -> socket.socket:
        try:
            sock = localsock.connect(path, timeout)
        except OSError as exc:
            raise Unavailable(
                f"the agent at {self.address} went away ({path}: {exc.strerror or exc}); is it restarting?"
            ) from None
        uid = localsock.peer_uid(sock)
        if not localsock.trusted_uid(uid):
            sock.close()
            raise NotOurs(f"{path} is now served by OS user id {uid}, not by you: refusing to talk to it")
        return sock

    def _dial_tcp(self, timeout: float) -> socket.socket:
        try:
            sock = socket.create_connection((self.address.host, self.address.port), timeout=timeout)
        except ConnectionRefusedError:
            raise Unavailable(
                f"cannot reach the agent at {self.address} (connection refused): start one with "
                "'ztm start agent', or point --agent / ZTM_AGENT at a running agent"
            ) from None
        except TimeoutError:
            raise Timeout(f"the agent at {self.address} did not answer within {timeout:g}s") from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise Unavailable(
                f"cannot reach the agent at {self.address} ({reason}): check --agent / ZTM_AGENT"
            ) from None
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _probe(self) -> None:
        """With no way to authenticate: make sure an agent answers there at all, so a wrong address is named as such.
        Sends no secret."""
        limit = min(self.timeout, 3.0)
        sock = self._dial_tcp(limit)
        _status, raw = self._exchange(sock, "GET", "/api/version", None, {"Accept": "application/json"}, limit)
        value = self._decode(raw)
        if not isinstance(value, dict) or "error" not in value:
            raise self._not_agent()

    def connection(self, timeout: float) -> tuple[http.client.HTTPConnection, dict[str, str]]:
        """A new `HTTPConnection` to the agent on `dial()`'s socket, and the headers that authenticate on it."""
        sock, headers = self.dial(timeout)
        return _Connected(self.address, sock, timeout), headers

    def get(self, path: str, *, query: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        return self.request("GET", path, query=query, timeout=timeout)

    def post(self, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        return self.request("POST", path, {} if body is None else body, timeout=timeout)

    def delete(self, path: str, *, timeout: float | None = None) -> Any:
        return self.request("DELETE", path, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request; returns the decoded JSON answer (None for an empty one) or raises `ZtmError`."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        sock, auth = self.dial(limit)
        url = path + (f"?{urlencode(query)}" if query else "")
        headers = {
            **auth,
            "Accept": "application/json",
            "User-Agent": f"ztm-cli/{__version__}",
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        status, raw = self._exchange(sock, method, url, data, headers, limit, deadline)
        value = self._decode(raw)
        if status == 401 and self._token is not None:
            said = value.get("error") if isinstance(value, dict) else None
            detail = f"{self._token.source}: {said}" if isinstance(said, str) else self._token.source
            raise Unauthorized(
                f"the agent at {self.address} refused the API token ({one_line(detail)}): the agent makes a new one "
                f"at every start; set {ENV_TOKEN} to the current content of its DATA/agent.token, or run ztm as "
                "the OS user who started that agent"
            )
        if not 200 <= status < 300:
            err = from_json(status, value)
            err.message = one_line(err.message)
            err.args = (err.message,)
            raise err
        return value

    def _exchange(
        self,
        sock: socket.socket,
        method: str,
        url: str,
        data: bytes | None,
        headers: dict[str, str],
        limit: float,
        deadline: float | None = None,
    ) -> tuple[int, bytes]:
        """One request on `sock` (closed after), within `deadline` (default: `limit` seconds from now)."""
        deadline = time.monotonic() + limit if deadline is None else deadline
        conn = _Connected(self.address, sock, limit)
        try:
            conn.connect()
            _remaining(sock, deadline)
            conn.request(method, url, body=data, headers=headers)
            _remaining(sock, deadline)
            resp = conn.getresponse()
            chunks: list[bytes] = []
            while not resp.isclosed():
                _remaining(sock, deadline)
                chunk = resp.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            return resp.status, b"".join(chunks)
        except TimeoutError:
            raise Timeout(f"the agent at {self.address} did not answer within {limit:g}s") from None
        except http.client.RemoteDisconnected:
            raise NotAgent(
                f"{self.address} closed the connection without answering (is another program on that port?)"
            ) from None
        except http.client.HTTPException:
            raise self._not_agent() from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise Unavailable(f"the connection to the agent at {self.address} broke off ({reason})") from None
        finally:
            conn.close()

    def _decode(self, raw: bytes) -> Any:
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise self._not_agent() from None

    def _not_agent(self) -> ZtmError:
        return NotAgent(
            f"{self.address} answered something that is not the ztm agent API (is another program on that port?)"
        )


def _remaining(sock: Any, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    if sock is not None:
        with contextlib.suppress(OSError):  # closed once the answer was read in full
            sock.settimeout(left)


def one_line(text: str) -> str:
    """Messages from a peer are shown on one line."""
    return " ".join(text.split())
