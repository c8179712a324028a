"""Shared by the hub-cluster benches: a throwaway PostgreSQL and several `ztm run hub` processes serving one mesh on it.

`ClusterHubs.start(ws, count)` starts a PostgreSQL 15 from the Debian packages in a temporary directory
(`tests/pgserver.py`, the one the tests use: loopback TCP, scram password for role `ztm`, fsync off), makes one
database, and starts `count` hubs on it as an operator would: the first with `--store URL` creates the mesh, its CA
and `DATA/ca.key`; every later hub gets a 0600 copy of that key through `--ca-key-file`. Each hub has its own data
directory, port (`--listen` = `--names`) and process group; the password reaches the hubs through `PGPASSWORD`.

`kill9(i)` SIGKILLs hub `i` (nothing of it runs any more, its sockets close), `restart(i)` runs the very same command
again. `permit_for([i, j, ...])` writes a copy of the root permit whose `bootstraps` list those hubs in that order, so
an agent can be pointed at a given hub first. `pg_cpu_seconds()` sums the CPU of the PostgreSQL server's processes.

Stdlib plus `tests/pgserver.py`; nothing from `ztm`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import HOST, REPO, SRC, ZTM, Hub, Proc, Workspace, bench_env, cpu_seconds, free_port, tcp_accepts

if str(REPO) not in sys.path:  # the tests' PostgreSQL helper: `tests` is a namespace package under REPO
    sys.path.insert(0, str(REPO))
from tests.pgserver import PgServer, unavailable_reason


@dataclass
class ClusterHub(Hub):
    """A hub of the cluster: `Hub` plus what it takes to kill and restart it."""

    index: int = 0
    argv: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    base: Path = Path()
    nofile: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


class ClusterHubs:
    """A PostgreSQL server, one database on it, and the hubs serving one mesh from it."""

    def __init__(self, ws: Workspace, pg: PgServer, url: str) -> None:
        self.ws = ws
        self.pg = pg
        self.url = url
        self.hubs: list[ClusterHub] = []

    @classmethod
    def start(
        cls,
        ws: Workspace,
        count: int,
        *,
        zones: list[str] | None = None,
        extra: list[str] | None = None,
        nofile: int | None = None,
        timeout: float = 60.0,
        src: Path = SRC,
    ) -> ClusterHubs:
        """PostgreSQL and `count` hubs on it, running the `ztm` of `src` (a baseline's export, `bench.baseline`)."""
        reason = unavailable_reason()
        if reason:
            raise SystemExit(f"cannot start PostgreSQL: {reason}")
        pg = PgServer()
        try:
            url = pg.url(pg.create_db())
            cluster = cls(ws, pg, url)
            for i in range(count):
                cluster._add(i, (zones or [""] * count)[i], extra or [], nofile, timeout, src)
        except BaseException:
            for proc in reversed(ws.procs):
                with contextlib.suppress(Exception):
                    proc.stop()
            pg.close()
            raise
        return cluster

    def _add(self, i: int, zone: str, extra: list[str], nofile: int | None, timeout: float, src: Path = SRC) -> None:
        port = free_port()
        base = self.ws.dir / f"hub-{i}"
        home = base / "home"
        home.mkdir(parents=True)
        data, permit = base / "data", base / "root.json"
        argv = [*ZTM, "run", "hub", "--listen", f"{HOST}:{port}", "--names", f"{HOST}:{port}"]
        argv += ["--permit", str(permit), "--data", str(data), "--store", self.url, *extra]
        if zone:
            argv += ["--zone", zone]
        if self.hubs:
            key = base / "ca.key"
            key.write_bytes((self.hubs[0].data / "ca.key").read_bytes())
            key.chmod(0o600)
            argv += ["--ca-key-file", str(key)]
        env = bench_env(home, {"PGPASSWORD": self.pg.password}, src=src)
        hub = ClusterHub(
            proc=self._spawn(argv, env, base, nofile),
            port=port,
            permit=permit,
            data=data,
            index=i,
            argv=tuple(argv),
            env=env,
            base=base,
            nofile=nofile,
        )
        self.hubs.append(hub)
        self._wait_ready(hub, timeout)

    def _spawn(self, argv: list[str], env: dict[str, str], base: Path, nofile: int | None) -> Proc:
        n = sum(1 for p in base.glob("hub*.out"))
        proc = Proc(argv, log_path=base / f"hub{n or ''}.out", env=env, cwd=base, nofile=nofile)
        self.ws.procs.append(proc)
        return proc

    def _wait_ready(self, hub: ClusterHub, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not (hub.permit.exists() and tcp_accepts(hub.port)):
            hub.proc.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"hub {hub.index} did not listen within {timeout:g}s:\n{hub.proc.tail()}")
            time.sleep(0.02)

    # ------------------------------------------------------------------------------------------------ faults

    def kill9(self, i: int) -> float:
        """SIGKILL hub `i`'s process group; returns the monotonic time of the kill (before the signal)."""
        hub = self.hubs[i]
        t = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(hub.proc.pid, signal.SIGKILL)
        hub.proc.popen.wait(10)
        return t

    def restart(self, i: int, timeout: float = 60.0) -> None:
        """Run hub `i`'s command again (same data directory, port, store and key file); return once it listens."""
        hub = self.hubs[i]
        hub.proc.stop()
        assert hub.env is not None
        hub.proc = self._spawn(list(hub.argv), hub.env, hub.base, hub.nofile)
        self._wait_ready(hub, timeout)

    # ------------------------------------------------------------------------------------------------ helpers

    def addresses(self, order: list[int] | None = None) -> list[str]:
        return [self.hubs[i].address for i in (order if order is not None else range(len(self.hubs)))]

    def permit_for(self, order: list[int], path: Path) -> Path:
        """A copy of the root permit listing the hubs `order` (indexes) as its bootstraps, in that order (0600)."""
        permit = json.loads(self.hubs[0].permit.read_text())
        permit["bootstraps"] = self.addresses(order)
        path.write_text(json.dumps(permit))
        path.chmod(0o600)
        return path

    def pg_pids(self) -> list[int]:
        """The PostgreSQL postmaster and its children (backends, checkpointer, ...)."""
        try:
            master = int((self.pg.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        pids = [master]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = (entry / "stat").read_text()
                    if int(stat[stat.rindex(")") + 2 :].split()[1]) == master:
                        pids.append(int(entry.name))
        return pids

    def pg_cpu_seconds(self) -> dict[int, float]:
        out = {}
        for pid in self.pg_pids():
            with contextlib.suppress(OSError):
                out[pid] = cpu_seconds(pid)
        return out

    def close(self) -> None:
        for hub in reversed(self.hubs):
            with contextlib.suppress(Exception):
                hub.proc.stop()
        self.pg.close()


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two `pg_cpu_seconds()` samples (processes that started in between count whole)."""
    return sum(after[p] - before.get(p, 0.0) for p in after)
