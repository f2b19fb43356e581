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


async def test_retention_keeps_the_newest_finished_operations_and_running_ones(
        tmp_path: Path) -> None:
    from fwrescue.console.records import (
        NodeState,
        OperationRecord,
        prune,
        save_node,
        save_operation,
    )

    db = await Database.open(tmp_path)
    node = NodeState(node_id="n1", url="http://127.0.0.1:1", board="b", power="On",
                     health="OK", policy_version=0, targets=())

    def fill(conn: sqlite3.Connection) -> list[bool]:
        save_node(conn, node, 1.0)
        counted = []
        for i in range(5):
            op = OperationRecord(op_id=f"op-{i}", kind="recovery", target="bios",
                                 state="Completed", percent=100, message="", started_at=None,
                                 ended_at=None, transcript=({"t": 1.0, "event": "start"},))
            counted.append(save_operation(conn, "n1", op, 10.0 + i))
            counted.append(save_operation(conn, "n1", op, 10.5 + i))  # seen again
        running = OperationRecord(op_id="op-run", kind="update", target="bios",
                                  state="Running", percent=5, message="", started_at=None,
                                  ended_at=None, transcript=())
        save_operation(conn, "n1", running, 1.0)
        return counted

    counted = await db.write(fill)
    assert counted == [True, False] * 5  # each finished operation is counted exactly once
    dropped = await db.write(lambda c: prune(c, keep_per_node=2, older_than=0.0))
    assert dropped == 3
    left = await db.read(lambda c: [r[0] for r in c.execute(
        "SELECT op_id FROM operations ORDER BY op_id")])
    assert left == ["op-3", "op-4", "op-run"]
    orphans = await db.read(lambda c: c.execute(
        "SELECT COUNT(*) FROM transcript WHERE op_id NOT IN ('op-3', 'op-4')").fetchone()[0])
    assert orphans == 0
    await db.close()


async def test_running_operations_an_agent_no_longer_lists_become_killed(
        tmp_path: Path) -> None:
    from fwrescue.console.records import (
        NodeState,
        OperationRecord,
        abandon_unlisted,
        fleet,
        save_node,
        save_operation,
    )

    db = await Database.open(tmp_path)
    node = NodeState(node_id="n1", url="http://127.0.0.1:1", board="b", power="On",
                     health="OK", policy_version=0, targets=())

    def running(op_id: str) -> OperationRecord:
        return OperationRecord(op_id=op_id, kind="recovery", target="bios", state="Running",
                               percent=40, message="", started_at=None, ended_at=None,
                               transcript=())

    def fill(conn: sqlite3.Connection) -> int:
        save_node(conn, node, 1.0)
        save_operation(conn, "n1", running("old"), 1.0)
        save_operation(conn, "n1", running("new"), 2.0)
        return abandon_unlisted(conn, "n1", {"new"}, 3.0)  # the agent restarted

    assert await db.write(fill) == 1
    states = await db.read(lambda c: dict(c.execute("SELECT op_id, state FROM operations")))
    assert states == {"old": "Killed", "new": "Running"}
    overview = await db.read(fleet)
    assert overview["nodes"][0]["healing"]["op_id"] == "new"
    await db.close()
