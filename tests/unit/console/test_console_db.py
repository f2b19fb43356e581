"""console/db.py: migrations apply once and atomically; a failed write changes nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fwrescue.console.db import SCHEMA_VERSION, Database, migrations


async def test_migrations_apply_once_and_writes_are_atomic(tmp_path: Path) -> None:
    assert [n for n, _ in migrations()] == list(range(1, SCHEMA_VERSION + 1))
    db = await Database.open(tmp_path)
    assert await db.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
    assert await db.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == (
        SCHEMA_VERSION)

    def insert_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO nodes (id, url, updated_at) VALUES (?, ?, ?)",
                     ("n1", "http://127.0.0.1:1", 1.0))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await db.write(insert_then_fail)
    assert await db.read(lambda c: c.execute("SELECT COUNT(*) FROM nodes").fetchone()[0]) == 0
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced
        await db.write(lambda c: c.execute(
            "INSERT INTO targets (node_id, name) VALUES ('nobody', 'bios')"))
    await db.close()
    again = await Database.open(tmp_path)  # reopening re-applies nothing
    assert await again.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == (
        SCHEMA_VERSION)
    await again.close()
