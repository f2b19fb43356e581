"""The console's SQLite database: one file under ``--state``, WAL, versioned migrations.

Contract:

* :meth:`Database.open` creates or opens the file, sets WAL mode, ``synchronous=FULL`` and
  foreign keys, and applies every migration in ``console/migrations/NNN_*.sql`` whose number
  is above ``PRAGMA user_version`` — each in one transaction that also bumps the version, so
  a crash leaves the schema at the old version or the new one.
* All SQL runs on one worker thread (never on the event loop): :meth:`read` runs a function
  with the connection; :meth:`write` runs it inside ``BEGIN IMMEDIATE … COMMIT`` (rolled back
  on any exception). A SIGKILL at any point leaves the last committed state (WAL).
* Callers use parameterized SQL only (``?`` placeholders); nothing here builds SQL from input.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import TypeVar

__all__ = ["SCHEMA_VERSION", "Database", "migrations"]

T = TypeVar("T")

DB_FILE = "console.sqlite3"
_MIGRATION = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def migrations() -> list[tuple[int, str]]:
    """(number, SQL) of every migration shipped in the package, in order."""
    found = []
    for entry in resources.files("fwrescue.console").joinpath("migrations").iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    found.sort()
    numbers = [n for n, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"console migrations must be numbered 1..N, found {numbers}")
    return found


SCHEMA_VERSION = len(migrations())


class Database:
    """One SQLite connection driven by one worker thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="console-db")

    @classmethod
    def open_sync(cls, path: Path) -> Database:
        """Open (creating if needed) and migrate; blocking."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=10.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        _migrate(conn)
        return cls(conn, path)

    @classmethod
    async def open(cls, state_dir: Path) -> Database:
        return await asyncio.to_thread(cls.open_sync, state_dir / DB_FILE)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._conn)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.write_sync, fn)

    def write_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in one immediate transaction (only from the worker, or before start)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self._conn)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        return result

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown(wait=True)


def _migrate(conn: sqlite3.Connection) -> None:
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    for number, sql in migrations():
        if number <= current:
            continue
        # executescript commits first; the script's own BEGIN…COMMIT makes the migration and
        # its version bump one transaction (a failure leaves it open: rolled back below).
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {number:d};\n"
                               "COMMIT;")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
