"""Client of the agent's local REST API (docs/agent-api.md) on stdlib `http.client`.

Every request has a deadline that covers connecting, sending and reading the whole answer, and every failure becomes
a one-line `ZtmError` that names the agent's address and says what to do.

API token discovery, first found wins:
1. env `ZTM_TOKEN`;
2. `~/.ztm/agents/HOST_PORT.token`, the copy an agent leaves for the OS user who started it (for a loopback address,
   also the names of the other loopback spellings and of the wildcard addresses, since an agent listening on
   `0.0.0.0:7777` answers on `127.0.0.1:7777`);
3. `$ZTM_DATA/agent.token` or `~/.ztm/agent.token`, when the address is the default `127.0.0.1:7777`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from ztm.addr import Address
from ztm.config import DEFAULT_AGENT_LISTEN, agents_registry_dir, default_data_dir, token_file_name
from ztm.errors import Timeout, Unauthorized, Unavailable, ZtmError, from_json
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
    """Where it came from: `env ZTM_TOKEN` or a file path."""


def segment(value: str) -> str:
    """`value` quoted as one path segment."""
    return quote(value, safe="")


def token_files(address: Address) -> list[Path]:
    """Files that may hold the API token of the agent at `address`, in the order they are tried."""
    hosts = [address.host]
    if address.host in _LOOPBACK:
        hosts += [h for h in (*_LOOPBACK, *_WILDCARD) if h != address.host]
    registry = agents_registry_dir()
    files = [registry / token_file_name(Address(host, address.port)) for host in hosts]
    if address.port == DEFAULT_AGENT_LISTEN.port and address.host in _LOOPBACK:
        files.append(default_data_dir() / "agent.token")
    return files


def discover_token(address: Address) -> tuple[Token | None, list[str]]:
    """The API token for `address` and the problems met while looking (unreadable files)."""
    env = os.environ.get(ENV_TOKEN, "").strip()
    if env:
        return Token(env, f"env {ENV_TOKEN}"), []
    problems: list[str] = []
    for path in token_files(address):
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(f"cannot read {path}: {reason}")
            continue
        if value:
            return Token(value, str(path)), problems
    return None, problems


class AgentClient:
    """Talks JSON to one agent. `timeout` bounds each whole request unless a call passes its own."""

    def __init__(self, address: Address, timeout: float, token: Token | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self._token = token

    def token(self) -> Token:
        if self._token is None:
            found, problems = discover_token(self.address)
            if found is None:
                self._probe()
                why = f" ({'; '.join(problems)})" if problems else ""
                raise Unauthorized(
                    f"no API token for the agent at {self.address}{why}: run ztm as the OS user who started "
                    f"that agent, or set {ENV_TOKEN}"
                )
            self._token = found
        return self._token

    def _probe(self) -> None:
        """With no token to send: make sure an agent answers there at all, so a wrong address is named as such."""
        limit = min(self.timeout, 3.0)
        _status, raw = self._exchange("GET", "/api/version", None, {"Accept": "application/json"}, limit)
        value = self._decode(raw)
        if not isinstance(value, dict) or "error" not in value:
            raise self._not_agent()

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
        token = self.token()
        limit = self.timeout if timeout is None else timeout
        url = path + (f"?{urlencode(query)}" if query else "")
        headers = {
            "Authorization": f"Bearer {token.value}",
            "Accept": "application/json",
            "User-Agent": f"ztm-cli/{__version__}",
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        status, raw = self._exchange(method, url, data, headers, limit)
        value = self._decode(raw)
        if status == 401:
            said = value.get("error") if isinstance(value, dict) else None
            detail = f"{token.source}: {said}" if isinstance(said, str) else token.source
            raise Unauthorized(
                f"the agent at {self.address} refused the API token ({one_line(detail)}): run ztm as the OS user "
                f"who started that agent, or set {ENV_TOKEN} to the content of its DATA/agent.token"
            )
        if not 200 <= status < 300:
            err = from_json(status, value)
            err.message = one_line(err.message)
            err.args = (err.message,)
            raise err
        return value

    def _exchange(
        self, method: str, url: str, data: bytes | None, headers: dict[str, str], limit: float
    ) -> tuple[int, bytes]:
        import http.client

        deadline = time.monotonic() + limit
        conn = http.client.HTTPConnection(self.address.host, self.address.port, timeout=limit)
        try:
            conn.connect()
            sock = conn.sock
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
        except ConnectionRefusedError:
            raise Unavailable(
                f"cannot reach the agent at {self.address} (connection refused): start one with "
                "'ztm start agent', or point --agent / ZTM_AGENT at a running agent"
            ) from None
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
            raise Unavailable(
                f"cannot reach the agent at {self.address} ({reason}): check --agent / ZTM_AGENT"
            ) from None
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
