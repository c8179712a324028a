"""Hub RSS and CPU with up to 1,000 connected agents heartbeating, and the endpoint list under that load.

The hub is a real `ztm run hub` process. The agents are simulated in `--workers` separate processes (never in the
hub's), each speaking the real protocol with the product's own client code:

1. enrol: write the mesh's TLS files with `ztm.agent.tls.MeshFiles` (root permit's user certificate and key, a fresh
   agent key per simulated agent) and call `ztm.agent.mesh.enroll` (a user-certificate connection, POST
   /api/enroll with a CSR, the connection closed) to get an endpoint certificate;
2. connect: `ztm.agent.link.dial` with the endpoint certificate (the kernel keepalive and PINGs as a real agent), open
   `GET /api/events`, wait for `hello` (= online), keep reading the event stream;
3. liveness as `HubLink` does it: the kernel's TCP keepalive (set by `dial`), an HTTP/2 PING every `heartbeat`
   seconds from `hello` when the hello says `"liveness": "ping"`, else `POST /api/heartbeat` at that interval.

Levels (default 0, 250, 500, 1000 agents): at each, the script adds the missing agents (enrol + connect, timed),
waits until every agent has received the `endpoint` event of every agent that came online after it (the hub's
fan-out is then done, so the window measures the steady state), then measures the hub over `--window` seconds:
CPU from /proc/PID/stat (utime+stime), VmRSS from /proc/PID/status, open fds. At the top level all agents call
`GET /api/endpoints` at once (the burst), then one agent calls it `--seq` times one after the other.

Hub CPU only is reported as the hub's load; the workers' CPU is shown so you can see whether they kept up.

Run:  .venv/bin/python -m bench.hub_load [--levels 0,250,500,1000] [--workers 4] [--window 30] [--hub-nofile N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    PYTHON,
    REPO,
    SRC,
    Proc,
    Spy,
    Workspace,
    bench_env,
    cpu_seconds,
    fd_limit,
    machine_facts,
    ms,
    open_fds,
    py_spy,
    raise_nofile,
    rss_kib,
    summary,
    table,
    tree_facts,
    wait_until,
)

# ------------------------------------------------------------------------------------------------------- worker


async def open_session(
    addresses: list[Any], mesh_id: str, files: Any, events: str | None = None
) -> tuple[Any, str, Any, dict[str, Any]]:
    """As `HubLink`: dial the first of `addresses` that answers as a hub of `mesh_id` with the endpoint certificate
    of `files`, open the event stream and wait for `hello`; (connection, hub id, event reader, hello). `events`: the
    `ztm-events` header (PROTOCOL.md section 5: `watched` as an agent that keeps no endpoint list, `all`); None sends
    none, as an agent of an earlier release (every `endpoint` event: what this script's levels wait for)."""
    from ztm.agent.link import CONNECT_TIMEOUT, EventReader, dial

    conn, hub_id = await dial(addresses, mesh_id, files.ep_context())
    try:
        stream = await conn.open_stream("GET", "/api/events", [("ztm-events", events)] if events else [])
        status, _ = await asyncio.wait_for(stream.response(), CONNECT_TIMEOUT)
        if status != 200:
            raise RuntimeError(f"event stream answered {status}")
        reader = EventReader(stream)
        hello = await asyncio.wait_for(reader.next(), CONNECT_TIMEOUT)
        if not hello or hello.get("type") != "hello":
            raise RuntimeError(f"no hello: {hello!r}")
    except BaseException:
        conn.close()
        raise
    return conn, hub_id, reader, hello


def needs_beats(conn: Any, hello: dict[str, Any]) -> bool:
    """As `HubLink._open`: a hub whose hello says `"liveness": "ping"` gets the connection's PINGs at its interval
    and no heartbeat requests (False); an older hub gets `POST /api/heartbeat` every interval (True)."""
    if hello.get("liveness") != "ping":
        return True
    from ztm.agent.link import KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT

    conn.set_keepalive(min(KEEPALIVE_INTERVAL, float(hello.get("heartbeat", 10.0))), KEEPALIVE_TIMEOUT)
    return False


class SimAgent:
    """One simulated agent: its TLS files, its hub connection, its event reader and heartbeat tasks."""

    def __init__(self, worker: Worker, index: int) -> None:
        self.worker = worker
        self.name = f"w{worker.number}-{index:04d}"
        self.ep_id = str(uuid.uuid4())
        self.dir = worker.dir / self.name
        self.conn: Any = None
        self.files: Any = None
        self.events = 0
        self.beats = 0
        self.beat_errors = 0
        self.lost = False
        self.tasks: list[asyncio.Task[None]] = []

    async def enroll(self) -> None:
        """Enrol as `ztm join` does: a user-certificate connection, POST /api/enroll, the connection closed."""
        from ztm import pki
        from ztm.agent.mesh import enroll
        from ztm.agent.tls import MeshFiles

        w = self.worker
        key = pki.new_key()
        self.files = MeshFiles(self.dir)
        self.files.write(
            ca=w.ca_pem, user_cert=w.user_cert_pem, user_key=w.user_key_pem, ep_cert=None, agent_key=pki.key_to_pem(key)
        )
        answer = await enroll(w.permit, self.files, key, ep_id=self.ep_id, name=self.name, labels=[])
        self.files.write_ep_cert(answer["certificate"])

    async def connect(self) -> None:
        """Connect as `HubLink` does: dial with the endpoint certificate, open the event stream, wait for hello."""
        w = self.worker
        conn, _hub_id, reader, hello = await open_session(list(w.permit.bootstraps), w.permit.mesh_id, self.files)
        self.conn = conn
        interval = float(hello.get("heartbeat", 5.0))
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._read(reader))]
        if needs_beats(conn, hello):
            self.tasks.append(loop.create_task(self._beat(interval)))

    async def _read(self, reader: Any) -> None:
        try:
            while (event := await reader.next()) is not None:
                if event.get("type") == "endpoint":
                    self.events += 1
        except Exception as exc:
            self.worker.note(f"{self.name}: event stream failed: {type(exc).__name__}: {exc}")
        self.lost = True

    async def _beat(self, interval: float) -> None:
        from ztm.agent.link import request

        while not self.conn.closed:
            await asyncio.sleep(interval)
            try:
                await request(self.conn, "POST", "/api/heartbeat", {}, timeout=max(2.0, 2 * interval))
                self.beats += 1
            except Exception as exc:
                self.beat_errors += 1
                self.worker.note(f"{self.name}: heartbeat failed: {type(exc).__name__}: {exc}")

    async def list_endpoints(self) -> tuple[float, int]:
        from ztm.agent.link import request

        start = time.perf_counter()
        eps = await request(self.conn, "GET", "/api/endpoints", timeout=120)
        return time.perf_counter() - start, len(eps)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.conn is not None:
            self.conn.close()


class Worker:
    """A worker process: simulated agents, driven by JSON commands on stdin, answering JSON lines on stdout."""

    agent_class: type[SimAgent] = SimAgent
    """What `add` makes (tests/reliability/load.py uses a subclass that also accepts app streams)."""

    def __init__(self, number: int, directory: Path, permit_path: Path) -> None:
        from ztm import pki
        from ztm.permit import Permit

        self.number = number
        self.dir = directory
        self.permit = Permit.parse(permit_path.read_text())
        assert self.permit.private_key is not None, "the root permit carries the root user's key"
        self.ca_pem = pki.cert_to_pem(self.permit.ca)
        self.user_cert_pem = pki.cert_to_pem(self.permit.certificate)
        self.user_key_pem = pki.key_to_pem(self.permit.private_key)
        self.agents: list[SimAgent] = []
        self.problems: dict[str, int] = {}

    def note(self, text: str) -> None:
        """Count a problem under its text with agent names and ports taken out (full text to stderr)."""
        print(text, file=sys.stderr)
        key = re.sub(r"127\.0\.0\.1:\d+", "HUB", re.sub(r"w\d+-\d+", "AGENT", text))
        self.problems[key] = self.problems.get(key, 0) + 1

    async def add(self, count: int, concurrency: int, give_up: float) -> dict[str, Any]:
        """Enrol and connect `count` new agents, at most `concurrency` attempts in flight. A failed attempt is
        retried after HubLink's backoff (0.1 s doubling to 5 s, jittered) until `give_up` seconds have passed."""
        from ztm.aio import Backoff

        start = time.perf_counter()
        gate = asyncio.Semaphore(concurrency)
        counts = {"enroll_errors": 0, "connect_errors": 0}
        new = [self.agent_class(self, len(self.agents) + i) for i in range(count)]

        async def one(agent: SimAgent) -> float:
            backoff = Backoff(0.1, 5.0)
            t = time.perf_counter()
            enrolled = False
            while True:
                async with gate:
                    step = "enroll_errors" if not enrolled else "connect_errors"
                    try:
                        if not enrolled:
                            await agent.enroll()
                            enrolled = True
                            step = "connect_errors"
                        await agent.connect()
                    except Exception as exc:
                        counts[step] += 1
                        self.note(f"{agent.name}: {step[:-7]} attempt failed: {type(exc).__name__}: {exc}")
                    else:
                        self.agents.append(agent)
                        return time.perf_counter() - t
                if time.perf_counter() - start > give_up:
                    return -1.0
                await asyncio.sleep(backoff.next())

        times = await asyncio.gather(*(one(a) for a in new))
        return {
            "seconds": time.perf_counter() - start,
            "connect_times": [t for t in times if t >= 0],
            "failed": sum(1 for t in times if t < 0),
            **counts,
        }

    def stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "agents": len(self.agents),
            "online": sum(1 for a in self.agents if not a.lost and not a.conn.closed),
            "events": sum(a.events for a in self.agents),
            "beats": sum(a.beats + (a.conn.pings_answered if a.conn is not None else 0) for a in self.agents),
            "beat_errors": sum(a.beat_errors for a in self.agents),
            "lost": sum(1 for a in self.agents if a.lost),
            "cpu": usage.ru_utime + usage.ru_stime,
            "rss_kib": usage.ru_maxrss,
            "problems": self.problems,
        }

    async def burst(self) -> dict[str, Any]:
        results = await asyncio.gather(*(a.list_endpoints() for a in self.agents), return_exceptions=True)
        ok = [r for r in results if isinstance(r, tuple)]
        for r in results:
            if isinstance(r, BaseException):
                self.note(f"list in the burst failed: {type(r).__name__}: {r}")
        return {"latencies": [r[0] for r in ok], "sizes": [r[1] for r in ok], "failed": len(results) - len(ok)}

    async def seq(self, count: int) -> dict[str, Any]:
        latencies = []
        size = 0
        for _ in range(count):
            latency, size = await self.agents[0].list_endpoints()
            latencies.append(latency)
        return {"latencies": latencies, "sizes": [size]}

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """A command `serve` does not know; subclasses add their own (tests/reliability/load.py)."""
        return {"error": f"unknown command {cmd['cmd']}"}

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[str | None] = asyncio.Queue()

        def read_stdin() -> None:  # a thread: a blocking read of stdin is the simplest portable way
            for line in sys.stdin:
                loop.call_soon_threadsafe(commands.put_nowait, line)
            loop.call_soon_threadsafe(commands.put_nowait, None)

        threading.Thread(target=read_stdin, daemon=True).start()
        print(json.dumps({"ready": True}), flush=True)
        while (line := await commands.get()) is not None:
            cmd = json.loads(line)
            kind = cmd["cmd"]
            if kind == "add":
                answer = await self.add(cmd["count"], cmd["concurrency"], cmd["give_up"])
            elif kind == "stats":
                answer = self.stats()
            elif kind == "burst":
                answer = await self.burst()
            elif kind == "seq":
                answer = await self.seq(cmd["count"])
            elif kind == "quit":
                break
            else:
                answer = await self.command(cmd)
            print(json.dumps(answer), flush=True)
        for agent in self.agents:
            agent.close()
        await asyncio.sleep(0.2)  # let the GOAWAYs go out


def worker_main(number: int, directory: str, permit: str) -> int:
    from ztm.aio import install_uvloop

    raise_nofile(1 << 16)
    install_uvloop()
    worker = Worker(number, Path(directory), Path(permit))
    asyncio.run(worker.serve())
    return 0


# -------------------------------------------------------------------------------------------------- coordinator


class WorkerHandle:
    def __init__(
        self, ws: Workspace, number: int, permit: Path, module: str = "bench.hub_load", src: Path = SRC
    ) -> None:
        """`module`: the script whose `--worker NUMBER DIR PERMIT` runs the worker (bench/cluster_scale.py has its
        own subclass of `Worker`); `src`: the `ztm` code it runs (a baseline's export, `bench.baseline`)."""
        directory = ws.dir / f"worker-{number}"
        directory.mkdir()
        argv = [PYTHON, "-m", module, "--worker", str(number), str(directory), str(permit)]
        env = bench_env(directory, src=src)
        env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(REPO)])  # so that `-m bench.hub_load` imports
        self.proc = Proc(argv, log_path=directory / "worker.err", env=env, cwd=directory, pipes=True)
        ws.procs.append(self.proc)
        assert self.proc.popen.stdin is not None and self.proc.popen.stdout is not None
        self.stdin: IO[bytes] = self.proc.popen.stdin
        self.stdout: IO[bytes] = self.proc.popen.stdout
        self.receive()  # {"ready": true}

    def send(self, **cmd: Any) -> None:
        self.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.stdin.flush()

    def receive(self) -> dict[str, Any]:
        line = self.stdout.readline()
        if not line:
            raise RuntimeError(f"worker ended; its stderr:\n{self.proc.tail()}")
        return dict(json.loads(line))


def ask_all(workers: list[WorkerHandle], **cmd: Any) -> list[dict[str, Any]]:
    for w in workers:
        w.send(**cmd)
    return [w.receive() for w in workers]


def totals(workers: list[WorkerHandle]) -> dict[str, Any]:
    answers = ask_all(workers, cmd="stats")
    out: dict[str, Any] = {
        k: sum(a[k] for a in answers) for k in ("agents", "online", "events", "beats", "beat_errors", "lost", "cpu")
    }
    problems: dict[str, int] = {}
    for a in answers:
        for key, n in a["problems"].items():
            problems[key] = problems.get(key, 0) + n
    out["problems"] = problems
    return out


def list_row(label: str, answers: list[dict[str, Any]], wall: float, cpu: float) -> list[object]:
    lat = [x for a in answers for x in a["latencies"]]
    sizes = sorted({x for a in answers for x in a["sizes"]})
    s = summary(lat)
    n = max(1, len(lat))
    return [
        label,
        len(lat),
        sum(a.get("failed", 0) for a in answers),
        ms(s["p50"]),
        ms(s["p90"]),
        ms(s["p99"]),
        ms(s["max"]),
        f"{wall:.1f}",
        f"{cpu:.1f}",
        ms(cpu / n),
        sizes,
    ]


class Run:
    """The coordinator: the hub, the workers, the measurements and the tables."""

    def __init__(self, args: argparse.Namespace, ws: Workspace) -> None:
        self.args = args
        self.ws = ws
        self.hub = ws.start_hub(nofile=args.hub_nofile)
        self.pid = self.hub.proc.pid
        print(f"hub pid {self.pid}, its open-files limit (soft/hard) {fd_limit(self.pid)}")
        self.workers = [WorkerHandle(ws, i, self.hub.permit) for i in range(args.workers)]
        self.current = 0
        self.ramps: list[list[object]] = []
        self.steady: list[list[object]] = []
        self.lists: list[list[object]] = []
        self.profiles: list[str] = []
        self.notes: list[str] = []
        self.problems: dict[str, int] = {}

    def spy(self, name: str) -> Spy | None:
        return Spy(self.pid, self.ws.dir / f"py-spy-{name}.txt") if self.args.py_spy else None

    def end_spy(self, spy: Spy | None, title: str) -> None:
        if spy is not None:
            spy.stop()
            self.profiles.append(f"hub profile, {title}: {spy.summary()}")

    def ramp_to(self, level: int) -> None:
        add = level - self.current
        if add <= 0:
            return
        n = len(self.workers)
        spy = self.spy(f"ramp-{level}") if level == max(self.levels) else None
        cpu0, t0 = cpu_seconds(self.pid), time.perf_counter()
        for i, w in enumerate(self.workers):
            count = add // n + (1 if i < add % n else 0)
            w.send(cmd="add", count=count, concurrency=self.args.concurrency, give_up=120.0)
        answers = [w.receive() for w in self.workers]
        connected = time.perf_counter() - t0
        before = self.current
        online = self.current = totals(self.workers)["agents"]
        expected = online * (online - 1) // 2  # each agent hears of every agent that came online after it
        seen = [0]

        def settled() -> bool:
            self.hub.proc.check_alive()
            seen[0] = totals(self.workers)["events"]
            return seen[0] >= expected

        try:
            wait_until(settled, 60, f"every agent to hear of all {online}", interval=0.2)
        except TimeoutError as exc:
            self.notes.append(f"{exc} (received {seen[0]} of {expected} endpoint events)")
        fanout = time.perf_counter() - t0
        cpu = cpu_seconds(self.pid) - cpu0
        self.end_spy(spy, f"{before} -> {online} agents connecting (enrolment, event stream, fan-out)")
        s = summary([t for a in answers for t in a["connect_times"]])
        self.ramps.append(
            [
                f"{before} -> {online}",
                f"{connected:.1f}",
                f"{fanout:.1f}",
                f"{cpu:.1f}",
                ms(cpu / add),
                ms(s["p50"]),
                ms(s["max"]),
                sum(a["enroll_errors"] for a in answers),
                sum(a["connect_errors"] for a in answers),
                sum(a["failed"] for a in answers),
            ]
        )
        print(f"{online} agents: connected in {connected:.1f}s, fan-out done at {fanout:.1f}s", file=sys.stderr)

    def window(self, label: object) -> None:
        before = totals(self.workers)
        spy = self.spy(f"steady-{label}") if self.current == max(self.levels) and self.current else None
        cpu0, t0 = cpu_seconds(self.pid), time.perf_counter()
        peak = 0
        length = self.args.window if self.current else min(self.args.window, 5.0)  # an idle hub: 5 s tell all
        while time.perf_counter() - t0 < length:  # a measurement window, not a wait for state
            self.hub.proc.check_alive()
            peak = max(peak, rss_kib(self.pid))
            time.sleep(min(1.0, max(0.0, length - (time.perf_counter() - t0))))
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(self.pid) - cpu0
        self.end_spy(spy, f"{self.current} agents, steady state")
        after = totals(self.workers)
        beats = after["beats"] - before["beats"]
        self.problems = after["problems"]
        self.steady.append(
            [
                label,
                after["online"],
                f"{rss_kib(self.pid) / 1024:.1f}",
                f"{peak / 1024:.1f}",
                open_fds(self.pid),
                f"{100 * cpu / elapsed:.1f}",
                f"{cpu:.2f}",
                beats,
                f"{beats / elapsed:.0f}",
                f"{1e6 * cpu / beats:.0f}" if beats else "-",
                f"{100 * (after['cpu'] - before['cpu']) / elapsed:.0f}",
                after["beat_errors"],
                after["lost"],
            ]
        )
        print(f"{self.current} agents: window done, hub CPU {100 * cpu / elapsed:.1f}%", file=sys.stderr)

    def list_calls(self) -> None:
        cpu0, t0 = cpu_seconds(self.pid), time.perf_counter()
        self.workers[0].send(cmd="seq", count=self.args.seq)
        answer = self.workers[0].receive()
        label = f"one agent, {self.args.seq} calls in a row"
        self.lists.append(list_row(label, [answer], time.perf_counter() - t0, cpu_seconds(self.pid) - cpu0))
        spy = self.spy("burst")
        cpu0, t0 = cpu_seconds(self.pid), time.perf_counter()
        answers = ask_all(self.workers, cmd="burst")
        wall, cpu = time.perf_counter() - t0, cpu_seconds(self.pid) - cpu0
        self.end_spy(spy, f"all {self.current} agents list at once")
        self.lists.append(list_row(f"all {self.current} agents at once", answers, wall, cpu))
        # what the burst cost the others: heartbeats that failed, sessions the hub dropped (seen one sweep later)
        deadline = time.perf_counter() + 10.0
        while time.perf_counter() < deadline:  # an observation window after the burst, not a wait for state
            self.hub.proc.check_alive()
            time.sleep(0.5)
        final = totals(self.workers)
        self.problems = final["problems"]
        self.steady.append(
            [
                "after the burst (+10 s)",
                final["online"],
                f"{rss_kib(self.pid) / 1024:.1f}",
                "",
                open_fds(self.pid),
                "",
                "",
                "",
                "",
                "",
                "",
                final["beat_errors"],
                final["lost"],
            ]
        )

    def run(self, levels: list[int]) -> None:
        self.levels = levels
        for level in levels:
            self.ramp_to(level)
            self.window(level)
        if self.current:
            self.list_calls()

    def report(self) -> None:
        args = self.args
        print()
        print(f"workers: {args.workers}, enrolments in flight per worker: {args.concurrency}, window {args.window:g}s")
        print()
        print("Connecting (enrol + event stream) and the hub's fan-out of `endpoint` events to everyone:")
        print(
            table(
                [
                    "agents",
                    "all online s",
                    "fan-out done s",
                    "hub CPU s",
                    "hub CPU ms/agent",
                    "connect p50 ms",
                    "connect max ms",
                    "enrol errors",
                    "connect errors",
                    "gave up",
                ],
                self.ramps,
            )
        )
        print()
        print("Steady state (the liveness the hub asks for); hub process only unless noted:")
        print(
            table(
                [
                    "agents",
                    "online",
                    "RSS MiB",
                    "peak RSS MiB",
                    "fds",
                    "hub CPU %",
                    "hub CPU s",
                    "heartbeats",
                    "beats/s",
                    "hub CPU us/beat",
                    "workers CPU %",
                    "beat errors",
                    "lost",
                ],
                self.steady,
            )
        )
        if self.lists:
            print()
            print("GET /api/endpoints (the whole list) from connected agents:")
            print(
                table(
                    [
                        "calls",
                        "answered",
                        "failed",
                        "p50 ms",
                        "p90 ms",
                        "p99 ms",
                        "max ms",
                        "wall s",
                        "hub CPU s",
                        "hub CPU ms/call",
                        "entries",
                    ],
                    self.lists,
                )
            )
        log_path = self.hub.data / "hub.log"
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        missed = text.count("missed its heartbeats")
        problems = [line for line in text.splitlines() if " ERROR " in line or " WARNING " in line]
        print()
        print(f"hub log: {missed} sessions closed for missed heartbeats; {len(problems)} warning/error lines")
        for line in problems[:5]:
            print("  " + line[:200])
        for profile in self.profiles:
            print()
            print(profile)
        print("(latencies are over the answered calls; the hub's CPU per call over all of them)")
        if self.problems:
            print()
            print("problems the simulated agents met (counted, agent names and ports taken out):")
            for text, n in sorted(self.problems.items(), key=lambda kv: -kv[1])[:12]:
                print(f"  {n:6d} x {text[:170]}")
        if self.notes:
            print()
            print("notes:")
            for n in self.notes[:15]:
                print("  " + n[:200])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="0,250,500,1000", help="agent counts to measure at (default %(default)s)")
    parser.add_argument("--workers", type=int, default=4, help="client processes (default %(default)s)")
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured per level (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=25, help="enrolments in flight per worker (default 25)")
    parser.add_argument("--seq", type=int, default=20, help="list calls in a row from one agent (default 20)")
    parser.add_argument(
        "--hub-nofile",
        type=int,
        default=None,
        help="the hub's soft open-files limit (default: "
        "inherited from this script, which raises its own to 65536 or the hard limit)",
    )
    parser.add_argument("--py-spy", action="store_true", help="profile the hub at the top level and in the burst")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(int(args.worker[0]), args.worker[1], args.worker[2])
    if args.py_spy and py_spy() is None:
        parser.error("--py-spy needs py-spy: .venv/bin/pip install py-spy")
    levels = sorted({int(x) for x in args.levels.split(",")})
    soft, hard = raise_nofile(1 << 16)
    print(machine_facts())
    print(tree_facts())
    print(f"this script's open-files limit (soft/hard): {soft}/{hard}")
    started = time.perf_counter()
    with Workspace("hubload", keep=args.keep) as ws:
        run = Run(args, ws)
        try:
            run.run(levels)
        finally:
            with contextlib.suppress(Exception):
                ask_all(run.workers, cmd="quit")
            run.report()
    print(f"\ntotal run time {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
