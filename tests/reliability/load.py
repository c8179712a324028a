"""Load on one real hub: simulated agents (bench/hub_load.py's `Worker` / `SimAgent`, which speak the real protocol
with the product's own client code) enrol, stay online with heartbeats, list the endpoints all at once, and hold
thousands of app streams open through the hub at the same time, each then echoing bytes byte-exact; one agent more
than `--max-agents` is refused with a clear error while the others keep being served. The hub's CPU and RSS come
from /proc.

Used two ways:
* test_load.py runs it at CI size (100 agents, 1,000 streams), the simulated agents inside the test process
  (`workers=0`); RELIABILITY.md's mid-size figures are the same in-process run by hand:
  `.venv/bin/python tests/reliability/load.py --agents 300 --streams 3000 --workers 0 --window 6`;
* by hand at full size, the agents spread over worker processes (one Python loop cannot keep a thousand agents'
  keepalives on time while parsing a thousand endpoint lists), figures for RELIABILITY.md:
  `.venv/bin/python tests/reliability/load.py --agents 1000 --streams 10000 --workers 4`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

_TESTS = Path(__file__).resolve().parents[1]
for _p in (_TESTS, _TESTS.parent, _TESTS.parent / "src"):  # support, bench, ztm importable (also as a script)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench.common import cpu_seconds, raise_nofile, rss_kib  # noqa: E402
from bench.hub_load import SimAgent, Worker  # noqa: E402

APP = "load"
SERVICE = "echo"
OPEN_TIMEOUT = 60.0


class StreamAgent(SimAgent):
    """A simulated agent that also accepts the app streams the hub announces, and echoes their bytes back."""

    async def _read(self, reader: Any) -> None:
        try:
            while (event := await reader.next()) is not None:
                kind = event.get("type")
                if kind == "endpoint":
                    self.events += 1
                elif kind == "stream":
                    self.tasks.append(asyncio.get_running_loop().create_task(self._echo(str(event["id"]))))
        except Exception as exc:
            self.worker.note(f"{self.name}: event stream failed: {type(exc).__name__}: {exc}")
        self.lost = True

    async def _echo(self, stream_id: str) -> None:
        from ztm import h2

        try:
            stream = await self.conn.open_stream("CONNECT", "hub", [("ztm-accept", stream_id)])
            status, _ = await asyncio.wait_for(stream.response(), OPEN_TIMEOUT)
            if status != 200:
                raise RuntimeError(f"accepting answered {status}")
            while data := await stream.read():
                await stream.write(data)
            await stream.end()
        except (h2.H2Error, RuntimeError, TimeoutError) as exc:
            self.worker.note(f"{self.name}: accepting a stream failed: {type(exc).__name__}: {exc}")


class StreamWorker(Worker):
    """bench's worker with stream commands: `ids`, `open` (open and hold streams), `echo` (use and close them)."""

    agent_class = StreamAgent

    def __init__(self, number: int, directory: Path, permit_path: Path) -> None:
        super().__init__(number, directory, permit_path)
        self.held: list[Any] = []

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        kind = cmd["cmd"]
        if kind == "add":
            return await self.add(cmd["count"], cmd["concurrency"], cmd["give_up"])
        if kind == "stats":
            return self.stats()
        if kind == "burst":
            return await self.burst()
        return await self.command(cmd)

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        kind = cmd["cmd"]
        if kind == "ids":
            return {"ids": [a.ep_id for a in self.agents]}
        if kind == "open":
            return await self.open_streams(cmd["sources"], cmd["targets"], cmd["count"], cmd["opening"])
        if kind == "echo":
            return await self.echo(cmd["payload"])
        return await super().command(cmd)

    async def open_streams(self, sources: list[int], targets: list[str], count: int, opening: int) -> dict[str, Any]:
        """Open `count` streams from our agents `sources` (indexes) to endpoint ids `targets`, at most `opening`
        at a time (the hub gives a target 5 s to accept), and hold them open."""
        from ztm import h2

        gate = asyncio.Semaphore(opening)
        failed = 0

        async def one(i: int) -> None:
            nonlocal failed
            src = self.agents[sources[i % len(sources)]]
            dst = targets[(i // len(sources) + i) % len(targets)]
            try:
                async with gate:
                    stream = await src.conn.open_stream("CONNECT", dst, [("ztm-app", APP), ("ztm-service", SERVICE)])
                    status, _ = await asyncio.wait_for(stream.response(), OPEN_TIMEOUT)
                    if status != 200:
                        raise RuntimeError(f"opening answered {status}: {await stream.read_all(4096)!r}")
                self.held.append(stream)
            except (h2.H2Error, RuntimeError, TimeoutError) as exc:
                failed += 1
                self.note(f"opening a stream failed: {type(exc).__name__}: {exc}")

        await asyncio.gather(*(one(i) for i in range(count)))
        return {"opened": len(self.held), "failed": failed}

    async def echo(self, payload: int) -> dict[str, Any]:
        """Send `payload` random bytes on every held stream, half-close, read the echo; count byte-exact ones."""
        from ztm import h2

        async def one(stream: Any) -> bool:
            data = os.urandom(payload)
            try:
                await stream.write(data, end_stream=True)
                return bool(await asyncio.wait_for(stream.read_all(payload + 1), OPEN_TIMEOUT) == data)
            except (h2.H2Error, TimeoutError) as exc:
                self.note(f"echo on a stream failed: {type(exc).__name__}: {exc}")
                return False

        results = await asyncio.gather(*(one(s) for s in self.held))
        self.held = []
        return {"exact": sum(results), "failed": len(results) - sum(results)}


# ---------------------------------------------------------------------------------------------- the coordinator

Ask = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ProcessWorker:
    """A `StreamWorker` in its own process (this file run with --worker), commands as JSON lines."""

    def __init__(self, number: int, directory: Path, permit: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.err = open(directory / "worker.err", "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(number), str(directory), str(permit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
        )  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        self._receive()  # {"ready": true}

    def _receive(self) -> dict[str, Any]:
        line = self.stdout.readline()
        if not line:
            raise RuntimeError(f"worker ended; see {self.err.name}")
        return dict(json.loads(line))

    def _ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.stdin.flush()
        return self._receive()

    async def ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._ask, cmd)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ask({"cmd": "quit"})
        with contextlib.suppress(Exception):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for f in (self.stdin, self.stdout, self.err):
            f.close()


@dataclass
class Figures:
    agents: int = 0
    workers: int = 0
    connect_seconds: float = 0.0
    idle_rss_mib: float = 0.0
    online_rss_mib: float = 0.0
    steady_window_s: float = 0.0
    steady_cpu_percent: float = 0.0
    heartbeats_in_window: int = 0
    list_burst_seconds: float = 0.0
    list_burst_cpu_seconds: float = 0.0
    list_burst_failed: int = 0
    list_entries: list[int] = field(default_factory=list)
    streams: int = 0
    streams_open_seconds: float = 0.0
    streams_open_at_once: int = 0
    streams_open_failed: int = 0
    streams_rss_mib: float = 0.0
    streams_open_cpu_seconds: float = 0.0
    streams_echo_seconds: float = 0.0
    streams_echo_cpu_seconds: float = 0.0
    streams_bytes_exact: int = 0
    streams_echo_failed: int = 0
    newcomer_refused: str = ""
    after_refusal_list_failed: int = 0
    beat_errors: int = 0
    lost: int = 0
    lost_after: dict[str, int] = field(default_factory=dict)
    """Sessions lost so far, after each phase (where a problem started)."""
    beat_errors_after: dict[str, int] = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)


async def _all(asks: list[Ask], cmds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(ask(cmd) for ask, cmd in zip(asks, cmds, strict=True))))


async def run(
    hub_pid: int, asks: list[Ask], *, agents: int, streams: int, window: float, payload: int = 1024
) -> Figures:
    """Connect `agents` (the hub's --max-agents) over the workers, measure, list, open `streams`, echo through them,
    try one agent too many, list again."""
    fig = Figures(workers=len(asks))
    n = len(asks)
    fig.idle_rss_mib = rss_kib(hub_pid) / 1024
    t0 = time.perf_counter()
    added = await _all(asks, [
        {"cmd": "add", "count": agents // n + (1 if i < agents % n else 0), "concurrency": 25, "give_up": 180.0}
        for i in range(n)
    ])  # fmt: skip
    fig.connect_seconds = time.perf_counter() - t0
    if any(a["failed"] for a in added):
        raise AssertionError(f"some agents could not connect: {added}")
    fig.online_rss_mib = rss_kib(hub_pid) / 1024

    async def stats() -> list[dict[str, Any]]:
        return await _all(asks, [{"cmd": "stats"}] * n)

    async def phase(name: str) -> None:
        now = await stats()
        fig.lost_after[name] = sum(s["lost"] for s in now)
        fig.beat_errors_after[name] = sum(s["beat_errors"] for s in now)

    before = await stats()
    cpu0, t0 = cpu_seconds(hub_pid), time.perf_counter()
    await asyncio.sleep(window)  # a measurement window, not a wait for state
    fig.steady_window_s = time.perf_counter() - t0
    fig.steady_cpu_percent = 100 * (cpu_seconds(hub_pid) - cpu0) / fig.steady_window_s
    after = await stats()
    fig.agents = sum(s["agents"] for s in after)
    fig.heartbeats_in_window = sum(s["beats"] for s in after) - sum(s["beats"] for s in before)
    await phase("steady window")

    cpu0, t0 = cpu_seconds(hub_pid), time.perf_counter()
    bursts = await _all(asks, [{"cmd": "burst"}] * n)
    fig.list_burst_seconds = time.perf_counter() - t0
    fig.list_burst_cpu_seconds = cpu_seconds(hub_pid) - cpu0
    fig.list_burst_failed = sum(b["failed"] for b in bursts)
    fig.list_entries = sorted({s for b in bursts for s in b["sizes"]})
    await phase("list burst")

    ids = [r["ids"] for r in await _all(asks, [{"cmd": "ids"}] * n)]
    cmds = []
    for i in range(n):
        share = streams // n + (1 if i < streams % n else 0)
        if n == 1:  # one worker: its first half opens streams to its second half
            half = len(ids[0]) // 2
            cmds.append({"cmd": "open", "sources": list(range(half)), "targets": ids[0][half:], "count": share})
        else:  # to the agents of the next worker
            cmds.append({"cmd": "open", "sources": list(range(len(ids[i]))), "targets": ids[(i + 1) % n],
                         "count": share})  # fmt: skip
    for c in cmds:
        c["opening"] = 500
    cpu0, t0 = cpu_seconds(hub_pid), time.perf_counter()
    opened = await _all(asks, cmds)
    fig.streams_open_seconds = time.perf_counter() - t0
    fig.streams_open_cpu_seconds = cpu_seconds(hub_pid) - cpu0
    fig.streams = streams
    fig.streams_open_at_once = sum(o["opened"] for o in opened)
    fig.streams_open_failed = sum(o["failed"] for o in opened)
    fig.streams_rss_mib = rss_kib(hub_pid) / 1024
    await phase("streams open")
    cpu0, t0 = cpu_seconds(hub_pid), time.perf_counter()
    echoed = await _all(asks, [{"cmd": "echo", "payload": payload}] * n)
    fig.streams_echo_seconds = time.perf_counter() - t0
    fig.streams_echo_cpu_seconds = cpu_seconds(hub_pid) - cpu0
    fig.streams_bytes_exact = sum(e["exact"] for e in echoed)
    fig.streams_echo_failed = sum(e["failed"] for e in echoed)
    await phase("streams echoed")

    problems_before = dict((await asks[0]({"cmd": "stats"}))["problems"])  # a copy: in process it is the live dict
    newcomer = await asks[0]({"cmd": "add", "count": 1, "concurrency": 1, "give_up": 2.0})
    if newcomer["failed"]:
        problems = (await asks[0]({"cmd": "stats"}))["problems"]
        fresh = [k for k, v in problems.items() if v > problems_before.get(k, 0)]
        fig.newcomer_refused = fresh[0] if fresh else "refused without a reason"
    await phase("newcomer refused")
    fig.after_refusal_list_failed = sum(b["failed"] for b in await _all(asks, [{"cmd": "burst"}] * n))

    final = await stats()
    fig.beat_errors = sum(s["beat_errors"] for s in final)
    fig.lost = sum(s["lost"] for s in final)
    for s in final:
        for key, count in s["problems"].items():
            fig.problems[key] = fig.problems.get(key, 0) + count
    return fig


async def run_in_process(hub_pid: int, permit: Path, workdir: Path, **kw: Any) -> Figures:
    """`run` with one `StreamWorker` in this process (CI size)."""
    worker = StreamWorker(0, workdir, permit)
    try:
        return await run(hub_pid, [worker.handle], **kw)
    finally:
        for agent in worker.agents:
            agent.close()
        await asyncio.sleep(0.2)  # let the GOAWAYs go out


def main() -> int:
    import support

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=4, help="agent processes (0: all in this process)")
    parser.add_argument("--window", type=float, default=20.0, help="steady-state measurement window, seconds")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_nofile(1 << 16)
    from ztm.aio import install_uvloop

    install_uvloop()
    if args.worker:
        worker = StreamWorker(int(args.worker[0]), Path(args.worker[1]), Path(args.worker[2]))
        asyncio.run(worker.serve())
        return 0
    with tempfile.TemporaryDirectory(prefix="ztm-load-") as tmp:
        hub = support.start_hub(Path(tmp), extra=["--max-agents", str(args.agents)])
        workers: list[ProcessWorker] = []
        kw = {"agents": args.agents, "streams": args.streams, "window": args.window}
        try:
            work = Path(tmp) / "agents"
            if args.workers:
                workers = [ProcessWorker(i, work / f"worker-{i}", hub.permit) for i in range(args.workers)]
                figures = asyncio.run(run(hub.proc.pid, [w.ask for w in workers], **kw))
            else:
                work.mkdir()
                figures = asyncio.run(run_in_process(hub.proc.pid, hub.permit, work, **kw))
            hub.proc.assert_alive()
        finally:
            for w in workers:
                w.close()
            with contextlib.suppress(Exception):
                hub.proc.stop()
    print(json.dumps(asdict(figures), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
