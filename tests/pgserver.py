"""A real PostgreSQL server for the tests, from the Debian packages, in a temporary directory.

`PgServer()` runs `initdb` and `pg_ctl` (as the `postgres` user via `runuser` when the tests run as root, directly
otherwise) on a free loopback TCP port with `listen_addresses=127.0.0.1` and fsync off. Two ways in:

* the role `ztm` with a random password over TCP (`scram-sha-256`): what hubs use, so the password paths are real;
* the superuser `postgres` by trust on the Unix socket inside the temporary directory only (`psql()`, `create_db()`).

`PgServer(netns=NS, listen=ADDR, clients=[CIDR, ...])` runs it inside a network namespace (the lab's `db` host,
`Lab.start_db()`), listening on that namespace's address ADDR, port 5432, and taking the `ztm` role only from the
given client networks; the Unix socket is a file, so `psql()` works from the host namespace all the same.

`stop()` and `start()` keep the data directory and the port, so store-outage tests can take the server away under a
running store and bring it back. `close()` (or leaving the `with` block) stops it and removes the directory.
`unavailable_reason()` says why no server can be started here (no binaries), for a clean skip.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

try:
    from ports import free_port  # the tests have tests/ on sys.path
except ImportError:  # bench/ imports this module as tests.pgserver
    from tests.ports import free_port

_SEARCH = ("/usr/lib/postgresql/15/bin",)


def bindir() -> Path | None:
    """Where `initdb`, `pg_ctl` and `psql` are: `pg_config --bindir`, the Debian 15 directory, or PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += [Path(p) for p in _SEARCH]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for cand in candidates:
        if all((cand / tool).exists() for tool in ("initdb", "pg_ctl", "postgres", "psql")):
            return cand
    return None


def unavailable_reason() -> str | None:
    if bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) not found: apt-get install postgresql"
    if os.geteuid() == 0 and not _has_user("postgres"):
        return "running as root without a 'postgres' user to run the server as: apt-get install postgresql"
    return None


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class PgServer:
    """One PostgreSQL cluster in a temporary directory (see the module docstring)."""

    def __init__(
        self, *, netns: str | None = None, listen: str = "127.0.0.1", clients: Sequence[str] = ("127.0.0.1/32",)
    ) -> None:
        found = bindir()
        if found is None:
            raise RuntimeError(unavailable_reason() or "no PostgreSQL binaries")
        self.bin = found
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="ztm-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.netns = netns
        self.host = listen
        self.clients = list(clients)
        self.port = 5432 if netns else free_port()  # a namespace of its own has every port free
        self.password = secrets.token_urlsafe(18)
        self._dbs = 0
        self.running = False
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        try:
            self._initdb()
            self.start()
            self.psql("postgres", f"CREATE ROLE ztm LOGIN PASSWORD '{self.password}'")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------------ lifecycle

    def _run(self, argv: list[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        if self.netns:  # the lab's database host (tests/lab/netlab.py); benches import this module without it
            from support import in_netns

            argv = in_netns(argv, self.netns)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root, env=env)
        if cp.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed ({cp.returncode}): {cp.stderr.strip()}\n{log}")
        return cp

    def _initdb(self) -> None:
        self._run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-sync",
             "--auth-local=trust", "--auth-host=scram-sha-256"]
        )  # fmt: skip
        conf = (
            f"port = {self.port}\n"
            f"listen_addresses = '{self.host}'\n"
            f"unix_socket_directories = '{self.root}'\n"
            "unix_socket_permissions = 0700\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            "max_connections = 200\n"
            "password_encryption = 'scram-sha-256'\n"
        )
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\n# ztm tests\n" + conf)
        hba = "".join(f"host all ztm {cidr} scram-sha-256\n" for cidr in self.clients)
        (self.data / "pg_hba.conf").write_text("local all postgres trust\n" + hba)

    def start(self) -> None:
        """Start (again) on the same data directory and port."""
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"])
        self.running = True

    def stop(self) -> None:
        """Stop at once (fast shutdown: every client connection is cut)."""
        if self.running:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])
            self.running = False

    def close(self) -> None:
        try:
            if self.data.exists():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ use

    def url(self, db: str) -> str:
        return f"postgresql://ztm@{self.host}:{self.port}/{db}"

    def psql(self, db: str, sql: str) -> str:
        """Run `sql` as the superuser over the Unix socket; return psql's unaligned output."""
        argv = [str(self.bin / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-d", db, "-c", sql]  # fmt: skip
        return self._run(argv).stdout

    def create_db(self) -> str:
        """A new empty database owned by `ztm`; returns its name."""
        self._dbs += 1
        name = f"t{self._dbs}_{secrets.token_hex(3)}"
        self.psql("postgres", f"CREATE DATABASE {name} OWNER ztm")
        return name
