"""The terminal session protocol (ztm.apps.terminal.protocol), sans-IO: frames and WebSocket messages round-trip,
arrive whole however the bytes are split, and anything malformed is a `ProtocolError` (never another exception);
plus the spawned-process helpers (ztm.apps.terminal.process) on real PTYs and pipes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztm.apps.terminal import process
from ztm.apps.terminal.protocol import (
    DATA_CHUNK,
    MAX_PAYLOAD,
    SIGNALS,
    STDERR,
    STDIN,
    STDOUT,
    Data,
    Decoder,
    Eof,
    Error,
    Exit,
    Message,
    Open,
    ProtocolError,
    Resize,
    Signal,
    Started,
    encode,
    make_open,
    parse_ws_output,
    parse_ws_text,
    ws_output,
    ws_text,
)

FUZZ = settings(max_examples=300, deadline=None)

words = st.lists(st.text(st.characters(blacklist_characters="\0"), max_size=30), min_size=1, max_size=6)
sizes = st.integers(1, 9999)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        lambda c, r, t: Open("shell", (), c, r, t),
        sizes,
        sizes,
        st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
    ),
    words.filter(lambda w: any(x.strip() for x in w)).map(lambda w: Open("exec", tuple(w))),
    st.builds(lambda w, p: Started(tuple(w), p), words, st.booleans()),
    st.builds(Data, st.sampled_from([STDIN, STDOUT, STDERR]), st.binary(max_size=3 * DATA_CHUNK // 2)),
    st.just(Eof()),
    st.builds(Resize, sizes, sizes),
    st.sampled_from(SIGNALS).map(Signal),
    st.integers(0, 255).map(lambda c: Exit(c, None)),
    st.sampled_from(["KILL", "TERM", "SEGV", "UNKNOWN"]).map(lambda s: Exit(None, s)),
    st.builds(Error, st.sampled_from(["forbidden", "protocol", "unavailable"]), st.text(max_size=80)),
)


def merged(out: list[Message]) -> list[Message]:
    """Consecutive data of one channel joined (a large Data is sent as several frames)."""
    result: list[Message] = []
    for m in out:
        last = result[-1] if result else None
        if isinstance(m, Data) and isinstance(last, Data) and last.channel == m.channel:
            result[-1] = Data(m.channel, last.data + m.data)
        else:
            result.append(m)
    return result


def printable(m: Message) -> Message:
    return Error(m.code, "".join(c if c.isprintable() else "?" for c in m.message)) if isinstance(m, Error) else m


@FUZZ
@given(st.lists(messages, max_size=8), st.lists(st.integers(1, 5000), max_size=20))
def test_frames_round_trip_however_split(sent: list[Message], cuts: list[int]) -> None:
    wire = b"".join(encode(m) for m in sent)
    decoder = Decoder()
    out: list[Message] = []
    pos = 0
    for cut in cuts:
        out += decoder.feed(wire[pos : pos + cut])
        pos += cut
    out += decoder.feed(wire[pos:])
    assert decoder.pending == 0
    expected = [printable(m) for m in sent if not (isinstance(m, Data) and not m.data)]
    assert merged([m for m in out if not (isinstance(m, Data) and not m.data)]) == merged(expected)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_are_messages_or_a_protocol_error(data: bytes) -> None:
    try:
        Decoder().feed(data)
    except ProtocolError as exc:
        assert exc.message and "\n" not in exc.message


@FUZZ
@given(st.integers(0, 255), st.binary(max_size=200))
def test_any_frame_type_and_payload(kind: int, payload: bytes) -> None:
    try:
        out = Decoder().feed(struct.pack("!BI", kind, len(payload)) + payload)
    except ProtocolError:
        return
    assert len(out) == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=10,
)
keys = st.sampled_from(["type", "mode", "command", "cols", "rows", "term", "signal", "code", "error", "pty"])


@FUZZ
@given(st.dictionaries(keys, json_values | st.sampled_from(["open", "exec", "shell", "resize", "exit"]), max_size=6))
def test_random_json_objects_are_messages_or_a_protocol_error(obj: dict[str, object]) -> None:
    try:
        message = parse_ws_text(json.dumps(obj))
    except ProtocolError:
        return
    assert parse_ws_text(ws_text(message)) == message  # whatever is accepted is valid and survives a round trip
    assert Decoder().feed(encode(message)) == [message]


@FUZZ
@given(st.text(max_size=200))
def test_random_text_is_a_message_or_a_protocol_error(text: str) -> None:
    with contextlib.suppress(ProtocolError):
        parse_ws_text(text)


@FUZZ
@given(messages)
def test_ws_form_round_trips(message: Message) -> None:
    if isinstance(message, Data):
        if message.channel == STDIN:
            return
        assert parse_ws_output(ws_output(message)) == message
    else:
        assert parse_ws_text(ws_text(message)) == printable(message)


def test_limits_and_rules() -> None:
    with pytest.raises(ProtocolError, match="larger than"):
        Decoder().feed(struct.pack("!BI", 3, MAX_PAYLOAD + 1))
    with pytest.raises(ProtocolError, match="unknown frame type 0"):
        Decoder().feed(b"\x00\x00\x00\x00\x00")
    assert Decoder().feed(struct.pack("!BI", 3, 10) + b"abc") == []  # incomplete: waits
    for bad in (
        {"type": "open", "mode": "exec"},
        {"type": "open", "mode": "exec", "command": ["  "]},
        {"type": "open", "mode": "shell", "command": ["ls"]},
        {"type": "open", "mode": "shell", "cols": 0},
        {"type": "open", "mode": "shell", "rows": True},
        {"type": "open", "mode": "shell", "term": "x; rm"},
        {"type": "open", "mode": "ssh"},
        {"type": "open", "mode": "exec", "command": ["a\0b"]},
        {"type": "open", "mode": "exec", "command": ["x"] * 257},
        {"type": "signal", "signal": "STOP"},
        {"type": "exit", "code": 3, "signal": "KILL"},
        {"type": "exit", "code": None, "signal": None},
        {"type": "exit", "code": 256, "signal": None},
        {"type": "nope"},
        {},
    ):
        with pytest.raises(ProtocolError):
            parse_ws_text(json.dumps(bad))
    assert make_open("shell") == Open("shell", (), 80, 24, "xterm-256color")
    assert parse_ws_text('{"type": "signal", "signal": "sigint"}') == Signal("INT")
    assert len(encode(Data(STDOUT, b"x" * (DATA_CHUNK * 2 + 1)))) == DATA_CHUNK * 2 + 1 + 3 * 5
    assert Exit(3, None).status() == 3
    assert Exit(None, "KILL").status() == 128 + signal.SIGKILL
    assert Exit(None, "UNKNOWN").status() == 255
    with pytest.raises(ProtocolError):
        parse_ws_output(b"\x00stdin is not output")


# ---- the process helpers, on real PTYs and pipes ----


def test_pty_child_has_a_controlling_terminal_and_gets_resized() -> None:
    async def go() -> bytes:
        child = process.spawn_pty(
            ["/bin/sh", "-c", "stty size; read x; stty size; exit 7"], {"PATH": os.defpath}, "/", 101, 33
        )
        out = b""
        try:
            while b"33 101" not in out:
                out += await asyncio.wait_for(process.read_some(child.stdin), 10)
            child.resize(90, 20)
            await process.write_all(child.stdin, b"go\n")
            while chunk := await asyncio.wait_for(process.read_some(child.stdin), 10):
                out += chunk
            assert await asyncio.wait_for(process.wait_exit(child.proc), 10) == 7
        finally:
            process.kill_session(child.pid)
            child.close()
        return out

    out = asyncio.run(go())
    assert b"33 101" in out and b"20 90" in out


def test_pipes_child_and_session_kill() -> None:
    async def go() -> tuple[bytes, bytes, int, list[int]]:
        child = process.spawn_pipes(
            ["/bin/sh", "-c", "cat; echo err >&2; sleep 600 & echo $!; wait"], {"PATH": os.defpath}, "/"
        )
        try:
            await process.write_all(child.stdin, b"in\n")
            child.close_stdin()
            out = b""
            while out.count(b"\n") < 2:
                out += await asyncio.wait_for(process.read_some(child.outputs[STDOUT]), 10)
            err = await asyncio.wait_for(process.read_some(child.outputs[STDERR]), 10)
            members = process.session_members(child.pid)
            process.kill_session(child.pid)
            code = await asyncio.wait_for(process.wait_exit(child.proc), 10)
        finally:
            child.close()
        return out, err, code, members

    out, err, code, members = asyncio.run(go())
    first, sleeper = out.split(b"\n")[:2]
    assert first == b"in" and err == b"err\n" and code == -signal.SIGKILL
    assert int(sleeper) in members
    deadline = time.monotonic() + 10
    while Path(f"/proc/{int(sleeper)}").exists() and b") Z" not in _stat(int(sleeper)):
        assert time.monotonic() < deadline, "the background sleep survived the session kill"
        time.sleep(0.02)


def _stat(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return b") Z"
