"""One terminal session on the target (ztm.apps.terminal.session.Runner) with real processes and a stand-in for the
mesh stream: the last output reaches a slow opener whole, the exit comes last, a silent background job does not hold
the session open, a vanished opener hangs the process up, and a malformed frame ends the session with an error."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from ztm import h2
from ztm.apps.terminal import process, session
from ztm.apps.terminal.protocol import STDOUT, Data, Decoder, Error, Exit, Message, encode

ENV = {"PATH": os.defpath}


class FakeStream:
    """The opener's side as the runner sees it: `write` takes `delay` seconds per call (a slow reader); `read` gives
    what `feed` queued, b"" after `end`, StreamReset after `reset`."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.received = Decoder()
        self.messages: list[Message] = []
        self.ended = False
        self.was_reset = False
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def write(self, data: bytes, *, end_stream: bool = False) -> None:
        if self.was_reset:
            raise h2.StreamReset(8)
        if self.delay:
            await asyncio.sleep(self.delay)
        self.messages += self.received.feed(data)
        self.ended = self.ended or end_stream

    async def end(self) -> None:
        self.ended = True

    def reset(self) -> None:
        self.was_reset = True
        self.inbox.put_nowait(None)

    async def read(self) -> bytes:
        item = await self.inbox.get()
        if item is None:
            if self.was_reset and not self.ended:
                raise h2.StreamReset(8)
            return b""
        return item


def output(stream: FakeStream) -> bytes:
    return b"".join(m.data for m in stream.messages if isinstance(m, Data) and m.channel == STDOUT)


async def serve(argv: list[str], stream: FakeStream) -> tuple[str, process.Child]:
    child = process.spawn_pipes(argv, ENV, "/")
    runner = session.Runner(stream, child, Decoder())  # type: ignore[arg-type]
    task = asyncio.ensure_future(runner.run([]))
    # the opener ends its side once it has the exit
    while not any(isinstance(m, Exit | Error) for m in stream.messages) and not task.done():
        await asyncio.sleep(0.01)
    stream.inbox.put_nowait(None)
    return await asyncio.wait_for(task, 30), child


def test_a_slow_opener_gets_all_the_output_then_the_exit() -> None:
    async def go() -> tuple[str, FakeStream, float]:
        stream = FakeStream(delay=0.8)  # 0.8 s per 64 KiB: the last two chunks outlast DRAIN
        started = time.monotonic()
        result, _ = await serve(["/bin/sh", "-c", "head -c 200000 /dev/zero; exit 3"], stream)
        return result, stream, time.monotonic() - started

    result, stream, took = asyncio.run(go())
    assert len(output(stream)) == 200000
    assert stream.messages[-1] == Exit(3, None)
    assert result == "exit status 3" and took > session.DRAIN


def test_a_silent_background_job_does_not_hold_the_session() -> None:
    async def go() -> tuple[str, FakeStream, list[int]]:
        stream = FakeStream()
        child = process.spawn_pipes(["/bin/sh", "-c", "sleep 600 & echo $!; exit 0"], ENV, "/")
        runner = session.Runner(stream, child, Decoder())  # type: ignore[arg-type]
        task = asyncio.ensure_future(runner.run([]))
        while not any(isinstance(m, Exit) for m in stream.messages):
            await asyncio.sleep(0.01)
        stream.inbox.put_nowait(None)
        return await asyncio.wait_for(task, 30), stream, [int(output(stream))]

    started = time.monotonic()
    result, stream, (sleeper,) = asyncio.run(go())
    assert result == "exit status 0" and stream.messages[-1] == Exit(0, None)
    assert time.monotonic() - started < 10
    assert _gone(sleeper), "the background job outlived its session"


def test_a_vanished_opener_hangs_the_process_up() -> None:
    async def go() -> tuple[str, int]:
        stream = FakeStream()
        child = process.spawn_pipes(["/bin/sh", "-c", "echo $$; exec sleep 600"], ENV, "/")
        runner = session.Runner(stream, child, Decoder())  # type: ignore[arg-type]
        task = asyncio.ensure_future(runner.run([]))
        while not output(stream).endswith(b"\n"):
            await asyncio.sleep(0.01)
        stream.reset()
        return await asyncio.wait_for(task, 30), int(output(stream))

    result, pid = asyncio.run(go())
    assert result == "hung up: the opener closed the session"
    assert _gone(pid)


def test_a_malformed_frame_ends_the_session_with_an_error() -> None:
    async def go() -> tuple[str, FakeStream]:
        stream = FakeStream()
        child = process.spawn_pipes(["/bin/sh", "-c", "exec sleep 600"], ENV, "/")
        runner = session.Runner(stream, child, Decoder())  # type: ignore[arg-type]
        task = asyncio.ensure_future(runner.run([]))
        stream.inbox.put_nowait(b"\x63\x00\x00\x00\x00")
        result = await asyncio.wait_for(task, 30)
        assert child.proc.poll() is not None
        return result, stream

    result, stream = asyncio.run(go())
    assert result.startswith("broken: unknown frame type 99")
    assert isinstance(stream.messages[-1], Error) and stream.messages[-1].code == "protocol"


def test_stdin_after_the_command_closed_it_is_dropped() -> None:
    async def go() -> tuple[str, FakeStream]:
        stream = FakeStream()
        child = process.spawn_pipes(["/bin/sh", "-c", "exec 0<&-; sleep 0.2; echo done"], ENV, "/")
        runner = session.Runner(stream, child, Decoder())  # type: ignore[arg-type]
        task = asyncio.ensure_future(runner.run([]))
        stream.inbox.put_nowait(encode(Data(0, b"x" * 200_000)))
        while not any(isinstance(m, Exit) for m in stream.messages):
            await asyncio.sleep(0.01)
        stream.inbox.put_nowait(None)
        return await asyncio.wait_for(task, 30), stream

    result, stream = asyncio.run(go())
    assert result == "exit status 0" and output(stream) == b"done\n"


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat[stat.rfind(")") + 2] == "Z":
            return True
        time.sleep(0.02)
    return False
