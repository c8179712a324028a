"""The terminal session protocol, sans-IO: its messages, their binary framing on a mesh stream, their WebSocket form.

No I/O here: bytes in, messages out (`Decoder.feed`), and messages in, bytes or text out (`encode`, `ws_text`,
`ws_output`). Every decoder validates what it returns and raises `ProtocolError` (a `BadInput`) for anything else, so
the code on either side only ever sees well-formed messages.

Mesh stream (opener's agent <-> target's agent, relayed by the hub): frames `TYPE (1 byte) | LENGTH (4 bytes,
big-endian) | PAYLOAD`, at most `MAX_PAYLOAD` bytes of payload. The opener sends `Open` first, then `Data(STDIN)`,
`Eof`, `Resize`, `Signal`; the target answers `Started` (or `Error`), then `Data(STDOUT|STDERR)`, and finally `Exit`
(or `Error`) before it ends the stream.

WebSocket (local API: the CLI and a browser terminal): text frames carry the JSON form of the control messages
(`{"type": "open"|"resize"|"signal"|"eof"|"started"|"exit"|"error", ...}`); binary frames carry data: from the client,
raw stdin bytes; to the client, one channel byte (1 = stdout, 2 = stderr) followed by the bytes.
"""

from __future__ import annotations

import json
import re
import signal as signals
import struct
from dataclasses import dataclass
from typing import Any

from ztm.errors import BadInput

STDIN, STDOUT, STDERR = 0, 1, 2
MODES = ("shell", "exec")
SIGNALS = ("INT", "TERM", "HUP", "KILL", "QUIT", "TSTP", "CONT", "WINCH", "USR1", "USR2")
"""Signals a client may send to the remote process (group)."""

MAX_PAYLOAD = 1 << 20
DATA_CHUNK = 64 * 1024
"""Largest data payload the senders put in one frame (a `Data` message larger than this is split by `encode`)."""
MAX_WORDS = 256
MAX_COMMAND = 64 * 1024
MAX_SIZE = 9999
"""Largest number of columns or rows."""
DEFAULT_COLS, DEFAULT_ROWS, DEFAULT_TERM = 80, 24, "xterm-256color"

_TERM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_SIGNAL_NAME = re.compile(r"[A-Z][A-Z0-9]{0,15}")
_ERROR_CODE = re.compile(r"[a-z][a-z_]{0,31}")
_HEADER = struct.Struct("!BI")
_SIZE = struct.Struct("!HH")


class ProtocolError(BadInput):
    """A malformed frame or message: the session ends with this error."""

    code = "protocol"


# ---- messages ----


@dataclass(frozen=True)
class Open:
    """Opener -> target, first: what to run. `shell`: the configured shell on a PTY of `cols` x `rows` with TERM
    `term`; `exec`: `command` through the configured shell's `-c`, without a PTY."""

    mode: str
    command: tuple[str, ...] = ()
    cols: int = DEFAULT_COLS
    rows: int = DEFAULT_ROWS
    term: str = DEFAULT_TERM


@dataclass(frozen=True)
class Started:
    """Target -> opener: the process runs; `command` is its argv on the target."""

    command: tuple[str, ...]
    pty: bool


@dataclass(frozen=True)
class Data:
    channel: int
    data: bytes


@dataclass(frozen=True)
class Eof:
    """Opener -> target: no more stdin (exec: the command's stdin is closed; shell: ignored, send Ctrl-D as data)."""


@dataclass(frozen=True)
class Resize:
    cols: int
    rows: int


@dataclass(frozen=True)
class Signal:
    """Opener -> target: deliver signal `name` (one of `SIGNALS`, without `SIG`) to the remote foreground process
    group (shell: the PTY's foreground job; exec: the command's process group)."""

    name: str


@dataclass(frozen=True)
class Exit:
    """Target -> opener, last: the process ended with exit `code`, or was killed by `signal` (a name without SIG)."""

    code: int | None
    signal: str | None

    def status(self) -> int:
        """The exit status a shell would report: the code, or 128 + the signal's number (255 if unknown here)."""
        if self.code is not None:
            return self.code
        number = getattr(signals.Signals, f"SIG{self.signal}", None)
        return 128 + int(number) if number is not None else 255

    def describe(self) -> str:
        return f"exit status {self.code}" if self.code is not None else f"killed by signal {self.signal}"


@dataclass(frozen=True)
class Error:
    """Target -> opener (or the local agent -> its client): the session could not start or broke."""

    code: str
    message: str


Message = Open | Started | Data | Eof | Resize | Signal | Exit | Error

_OPEN, _STARTED, _STDIN, _STDOUT, _STDERR, _EOF, _RESIZE, _SIGNAL, _EXIT, _ERROR = range(1, 11)
_DATA_KIND = {STDIN: _STDIN, STDOUT: _STDOUT, STDERR: _STDERR}
_KIND_CHANNEL = {v: k for k, v in _DATA_KIND.items()}


# ---- validation (shared by the binary and the JSON forms) ----


def _dimension(value: object, what: str) -> int:
    if type(value) is not int or not 1 <= value <= MAX_SIZE:
        raise ProtocolError(f"{what} must be a whole number from 1 to {MAX_SIZE}")
    return value


def _words(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(w, str) for w in value):
        raise ProtocolError("command must be a list of strings")
    if len(value) > MAX_WORDS or sum(len(w) for w in value) > MAX_COMMAND:
        raise ProtocolError(f"command too long: at most {MAX_WORDS} words and {MAX_COMMAND} characters")
    if any("\0" in w for w in value):
        raise ProtocolError("command must not contain NUL characters")
    return tuple(value)


def make_open(
    mode: object, command: object = (), cols: object = None, rows: object = None, term: object = None
) -> Open:
    """A validated `Open`; None means the default for cols, rows and term."""
    if mode not in MODES:
        raise ProtocolError(f"mode must be one of {', '.join(MODES)}")
    words = _words(list(command) if isinstance(command, tuple) else command)
    if mode == "exec" and (not words or not any(w.strip() for w in words)):
        raise ProtocolError("exec needs a command")
    if mode == "shell" and words:
        raise ProtocolError("a shell session takes no command (use exec)")
    term = DEFAULT_TERM if term is None else term
    if not isinstance(term, str) or not _TERM.fullmatch(term):
        raise ProtocolError("term must be a terminal type such as xterm-256color")
    return Open(
        str(mode),
        words,
        DEFAULT_COLS if cols is None else _dimension(cols, "cols"),
        DEFAULT_ROWS if rows is None else _dimension(rows, "rows"),
        term,
    )


def make_signal(name: object) -> Signal:
    if not isinstance(name, str) or name.upper().removeprefix("SIG") not in SIGNALS:
        raise ProtocolError(f"signal must be one of {', '.join(SIGNALS)}")
    return Signal(name.upper().removeprefix("SIG"))


def make_exit(code: object, signal: object) -> Exit:
    if code is not None and (type(code) is not int or not 0 <= code <= 255):
        raise ProtocolError("exit code must be a whole number from 0 to 255, or null")
    if signal is not None and (not isinstance(signal, str) or not _SIGNAL_NAME.fullmatch(signal)):
        raise ProtocolError("exit signal must be a signal name such as KILL, or null")
    if (code is None) == (signal is None):
        raise ProtocolError("an exit has either a code or a signal")
    return Exit(code, signal)


def make_error(code: object, message: object) -> Error:
    if not isinstance(code, str) or not _ERROR_CODE.fullmatch(code):
        raise ProtocolError("error code must be a lowercase word")
    if not isinstance(message, str):
        raise ProtocolError("error message must be a string")
    return Error(code, "".join(c if c.isprintable() else "?" for c in message)[:1000])


def make_started(command: object, pty: object) -> Started:
    if not isinstance(pty, bool):
        raise ProtocolError("pty must be true or false")
    return Started(_words(command), pty)


# ---- JSON bodies ----


def _json_object(payload: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        raise ProtocolError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _body(message: Message) -> dict[str, Any]:
    """The JSON form of a control message (without its `type`)."""
    if isinstance(message, Open):
        body: dict[str, Any] = {"mode": message.mode, "cols": message.cols, "rows": message.rows}
        body["term"] = message.term
        if message.command:
            body["command"] = list(message.command)
        return body
    if isinstance(message, Started):
        return {"command": list(message.command), "pty": message.pty}
    if isinstance(message, Resize):
        return {"cols": message.cols, "rows": message.rows}
    if isinstance(message, Signal):
        return {"signal": message.name}
    if isinstance(message, Exit):
        return {"code": message.code, "signal": message.signal}
    if isinstance(message, Error):
        return {"code": message.code, "error": message.message}
    return {}


def _from_body(kind: str, body: dict[str, Any]) -> Message:
    if kind == "open":
        return make_open(
            body.get("mode"), body.get("command", []), body.get("cols"), body.get("rows"), body.get("term")
        )
    if kind == "started":
        return make_started(body.get("command"), body.get("pty"))
    if kind == "resize":
        return Resize(_dimension(body.get("cols"), "cols"), _dimension(body.get("rows"), "rows"))
    if kind == "signal":
        return make_signal(body.get("signal"))
    if kind == "eof":
        return Eof()
    if kind == "exit":
        return make_exit(body.get("code"), body.get("signal"))
    if kind == "error":
        return make_error(body.get("code"), body.get("error"))
    raise ProtocolError(f"unknown message type {kind[:40]!r}")


_TYPE_NAMES: dict[type, str] = {
    Open: "open",
    Started: "started",
    Eof: "eof",
    Resize: "resize",
    Signal: "signal",
    Exit: "exit",
    Error: "error",
}


# ---- mesh stream frames ----


def _frame(kind: int, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def encode(message: Message) -> bytes:
    """The frame(s) of `message` on a mesh stream (data larger than `DATA_CHUNK` becomes several frames)."""
    if isinstance(message, Data):
        kind = _DATA_KIND[message.channel]
        data = message.data
        if len(data) <= DATA_CHUNK:
            return _frame(kind, data)
        return b"".join(_frame(kind, data[i : i + DATA_CHUNK]) for i in range(0, len(data), DATA_CHUNK))
    if isinstance(message, Eof):
        return _frame(_EOF, b"")
    if isinstance(message, Resize):
        return _frame(_RESIZE, _SIZE.pack(message.cols, message.rows))
    if isinstance(message, Signal):
        return _frame(_SIGNAL, message.name.encode("ascii"))
    kind = {Open: _OPEN, Started: _STARTED, Exit: _EXIT, Error: _ERROR}[type(message)]
    return _frame(kind, json.dumps(_body(message), separators=(",", ":")).encode())


def _decode_frame(kind: int, payload: bytes) -> Message:
    channel = _KIND_CHANNEL.get(kind)
    if channel is not None:
        return Data(channel, payload)
    if kind == _EOF:
        if payload:
            raise ProtocolError("an EOF frame has no payload")
        return Eof()
    if kind == _RESIZE:
        if len(payload) != _SIZE.size:
            raise ProtocolError("a resize frame holds 4 bytes")
        cols, rows = _SIZE.unpack(payload)
        return Resize(_dimension(cols, "cols"), _dimension(rows, "rows"))
    if kind == _SIGNAL:
        try:
            name = payload.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("a signal frame holds an ASCII signal name") from None
        return make_signal(name)
    names = {_OPEN: "open", _STARTED: "started", _EXIT: "exit", _ERROR: "error"}
    if kind not in names:
        raise ProtocolError(f"unknown frame type {kind}")
    return _from_body(names[kind], _json_object(payload, f"the {names[kind]} frame"))


class Decoder:
    """Splits a mesh stream's bytes into messages; `ProtocolError` for a malformed frame (the stream is then
    unusable: the caller ends the session)."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        buf = self._buf
        buf += data
        out: list[Message] = []
        while len(buf) >= _HEADER.size:
            kind, size = _HEADER.unpack_from(buf)
            if not _OPEN <= kind <= _ERROR:
                raise ProtocolError(f"unknown frame type {kind}")
            if size > self.max_payload:
                raise ProtocolError(f"frame of {size} bytes is larger than {self.max_payload}")
            end = _HEADER.size + size
            if len(buf) < end:
                break
            payload = bytes(buf[_HEADER.size : end])
            del buf[:end]
            out.append(_decode_frame(kind, payload))
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)


# ---- WebSocket form ----


def ws_text(message: Message) -> str:
    """The JSON text frame of a control message."""
    if isinstance(message, Data):
        raise ValueError("data travels in binary WebSocket frames")
    return json.dumps({"type": _TYPE_NAMES[type(message)], **_body(message)}, separators=(",", ":"))


def parse_ws_text(text: str) -> Message:
    """A control message from a JSON text frame; `ProtocolError` if it is not one."""
    if len(text) > MAX_PAYLOAD:
        raise ProtocolError(f"text message larger than {MAX_PAYLOAD} characters")
    body = _json_object(text, "the message")
    kind = body.get("type")
    if not isinstance(kind, str):
        raise ProtocolError('the message needs a "type": open, resize, signal, eof, started, exit or error')
    return _from_body(kind, body)


def ws_output(message: Data) -> bytes:
    """The binary frame for output to a WebSocket client: the channel byte (1 stdout, 2 stderr), then the data."""
    return bytes((message.channel,)) + message.data


def parse_ws_output(payload: bytes) -> Data:
    if not payload or payload[0] not in (STDOUT, STDERR):
        raise ProtocolError("an output frame starts with its channel: 1 (stdout) or 2 (stderr)")
    return Data(payload[0], payload[1:])
