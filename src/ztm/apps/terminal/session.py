"""One terminal session on the target: read the opener's `Open`, start the process, carry its data both ways over
the accepted mesh stream, report its exit, and make sure nothing of it outlives the session.

The process's output is read only as fast as the stream takes it, and the stream is read only as fast as the
process takes its input (both through `ztm.apps.terminal.process`), so a session holds at most a chunk and a stream
window in memory. When the process exits, its last output is drained: until EOF, however slowly the opener reads it,
but no more than `DRAIN` seconds of silence (a background job that keeps the terminal or a pipe open); then `Exit`
is sent and the stream ended. When the opener goes away first (stream
ended or reset, a malformed frame) or the agent stops (the task is cancelled), the whole process session gets
SIGHUP, and SIGKILL after `GRACE` seconds; leftovers of a session whose leader exited get SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import shlex
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ztm import h2
from ztm.agent.e2estream import E2EStream
from ztm.apps.terminal import process
from ztm.apps.terminal.protocol import (
    STDIN,
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
)

OPEN_WAIT = 10.0
"""Seconds the opener has to send its `Open` frame."""
DRAIN = 1.0
"""Seconds of silence after which the last output is not waited for any longer once the process exited (a background
job may keep the PTY or pipes open without writing)."""
GRACE = 1.0
"""Seconds between SIGHUP and SIGKILL when a session is cut off."""
LINGER = 10.0
"""Seconds to wait, after `Exit`, for the opener to end its side before the stream is reset."""


@dataclass(frozen=True)
class Plan:
    """What the app decided to run for an `Open`."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str


def describe_command(argv: Sequence[str]) -> str:
    """`argv` as one printable line for logs (control characters replaced, at most 300 characters)."""
    text = "".join(c if c.isprintable() else "?" for c in shlex.join(argv))
    return text if len(text) <= 300 else text[:297] + "..."


async def read_open(stream: E2EStream, decoder: Decoder) -> tuple[Open, list[Message]]:
    """The opener's first message, which must be `Open`, and any messages that came with it."""
    messages: list[Message] = []
    while not messages:
        data = await stream.read()
        if not data:
            raise ProtocolError("the stream ended before the session was opened")
        messages = decoder.feed(data)
    first = messages[0]
    if not isinstance(first, Open):
        raise ProtocolError("a session starts with an open frame")
    return first, messages[1:]


class Runner:
    """Carries one started process over one stream; `run()` returns what became of it (for the log)."""

    def __init__(self, stream: E2EStream, child: process.Child, decoder: Decoder) -> None:
        self.stream = stream
        self.child = child
        self.decoder = decoder
        self.stdin_broken = False
        self.idle_since: dict[int, float | None] = {}
        """Output channel -> since when its pump has been waiting for the process to write (None: busy)."""

    async def run(self, pending: list[Message]) -> str:
        child = self.child
        exit_task = asyncio.ensure_future(process.wait_exit(child.proc))
        input_task = asyncio.ensure_future(self._pump_input(pending))
        outputs = [asyncio.ensure_future(self._pump_output(ch, fd)) for ch, fd in child.outputs.items()]
        try:
            await asyncio.wait({exit_task, input_task}, return_when=asyncio.FIRST_COMPLETED)
            if exit_task.done():
                return await self._exited(exit_task.result(), outputs, input_task)
            return await self._cut_off(input_task)
        finally:
            tasks = (exit_task, input_task, *outputs)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # their failures are accounted for above
            await self._end_process(exit_task)
            child.close()
            self.stream.reset()  # a no-op once both sides ended

    async def _exited(
        self, returncode: int, outputs: Sequence[asyncio.Future[None]], input_task: asyncio.Future[None]
    ) -> str:
        await self._drain(outputs)
        process.kill_session(self.child.pid)  # what it left running (a background job holding the terminal)
        for task in outputs:
            task.cancel()
        if returncode >= 0:
            result = Exit(returncode, None)
        else:
            try:
                name = signal.Signals(-returncode).name.removeprefix("SIG")
            except ValueError:  # a real-time signal
                name = "UNKNOWN"
            result = Exit(None, name)
        try:
            await self.stream.write(encode(result))
            await self.stream.end()
        except h2.H2Error:
            return f"{result.describe()} (the opener was gone)"
        await asyncio.wait({input_task}, timeout=LINGER)
        return result.describe()

    async def _cut_off(self, input_task: asyncio.Future[None]) -> str:
        exc = input_task.exception()
        if isinstance(exc, ProtocolError):
            with contextlib.suppress(h2.H2Error):
                await self.stream.write(encode(Error(exc.code, exc.message)))
                await self.stream.end()
            return f"broken: {exc.message}"
        if exc is not None and not isinstance(exc, h2.H2Error | OSError):
            raise exc
        return "hung up: the opener closed the session"

    async def _end_process(self, exit_task: asyncio.Future[int]) -> None:
        child = self.child
        if child.proc.poll() is None:
            process.kill_session(child.pid, signal.SIGHUP)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait_exit(child.proc), GRACE)
        process.kill_session(child.pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait_exit(child.proc), GRACE)

    async def _drain(self, outputs: Sequence[asyncio.Future[None]]) -> None:
        """Wait for the output pumps to reach EOF while they deliver (at the opener's pace), up to `DRAIN` seconds
        of silence from the process side."""
        loop = asyncio.get_running_loop()
        while True:
            pending = [task for task in outputs if not task.done()]
            if not pending:
                return
            await asyncio.wait(pending, timeout=DRAIN / 4)
            now = loop.time()
            idle = [since for since in self.idle_since.values() if since is not None]
            busy = any(since is None for since in self.idle_since.values())
            if not busy and idle and now - max(idle) >= DRAIN:
                return

    async def _pump_output(self, channel: int, fd: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self.idle_since[channel] = loop.time()
                data = await process.read_some(fd)
                self.idle_since[channel] = None
                if not data:
                    return
                await self.stream.write(encode(Data(channel, data)))
        finally:
            self.idle_since.pop(channel, None)

    async def _pump_input(self, pending: list[Message]) -> None:
        for message in pending:
            await self._apply(message)
        while data := await self.stream.read():
            for message in self.decoder.feed(data):
                await self._apply(message)

    async def _apply(self, message: Message) -> None:
        child = self.child
        if isinstance(message, Data) and message.channel == STDIN:
            if child.stdin < 0 or self.stdin_broken or not message.data:
                return
            try:
                await process.write_all(child.stdin, message.data)
            except OSError as exc:  # the command closed its stdin (EPIPE): the rest of the input is dropped
                if exc.errno not in (errno.EPIPE, errno.EIO, errno.EBADF):
                    raise
                self.stdin_broken = True
        elif isinstance(message, Eof):
            child.close_stdin()
        elif isinstance(message, Resize):
            child.resize(message.cols, message.rows)
        elif isinstance(message, Signal):
            child.send_signal(signal.Signals[f"SIG{message.name}"])
        else:
            raise ProtocolError(f"unexpected {type(message).__name__.lower()} frame from the opener")


async def start(stream: E2EStream, plan: Plan, opened: Open) -> process.Child:
    """Spawn the process of `plan` and tell the opener (`Started`); OSError if it cannot start."""
    if opened.mode == "shell":
        child = process.spawn_pty(plan.argv, plan.env, plan.cwd, opened.cols, opened.rows)
    else:
        child = process.spawn_pipes(plan.argv, plan.env, plan.cwd)
    try:
        await stream.write(encode(Started(plan.argv, child.pty)))
    except BaseException:
        process.kill_session(child.pid)
        child.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait_exit(child.proc), GRACE)
        raise
    return child
