"""SQLite settings and numbered, append-only migrations, in one place for hub and agent.

Each process owns its database file (WAL mode, a busy timeout, foreign keys on). A migration list is append-only:
released entries are never edited; `user_version` records how many ran. `Database.lock_exclusive()` takes an
advisory lock beside the file so that two processes never serve one data directory.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ztm import datadir
from ztm.errors import Unavailable, ZtmError


class Database:
    """One SQLite connection used from the owning process's event loop thread."""

    def __init__(self, path: Path, migrations: Sequence[str]) -> None:
        self.path = path
        self._lock_fd: int | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        try:
            self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ZtmError(f"cannot open database {path}: {exc}") from None
        if not existed:
            path.chmod(0o600)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self._migrate(migrations)

    def lock_exclusive(self, what: str) -> None:
        """Refuse to run beside another process that serves the same database."""
        self._lock_fd = datadir.lock(self.path.parent, what, self.path.with_suffix(self.path.suffix + ".lock"))

    def _migrate(self, migrations: Sequence[str]) -> None:
        version = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(migrations):
            raise ZtmError(
                f"{self.path} was written by a newer ztm (schema {version}, this one knows {len(migrations)}); "
                "upgrade ztm"
            )
        for number in range(version, len(migrations)):
            with self.transaction():
                for statement in _split(migrations[number]):
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version={number + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception. A full disk or an I/O error becomes
        `Unavailable` with a one-line message (nothing was saved; the caller must not change its view either)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                if self.conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
                raise
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise Unavailable(f"cannot save to {self.path}: {exc}; free some space on that disk") from None

    def one(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        return list(self.conn.execute(sql, params).fetchall())

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        self.conn.execute(sql, params)

    def close(self) -> None:
        self.conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
