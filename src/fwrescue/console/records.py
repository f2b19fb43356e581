"""Inventory reads and writes (parameterized SQL over a :class:`sqlite3.Connection`).

Every function takes the connection first and runs inside the caller's transaction
(:meth:`Database.write`) or read (:meth:`Database.read`). Values come from agents and are
validated by :mod:`fwrescue.console.inventory` before they get here.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

__all__ = ["NodeState", "OperationRecord", "TargetState"]

FINISHED = ("Completed", "Exception", "Cancelled", "Killed")


@dataclass(frozen=True)
class TargetState:
    name: str
    version: str
    security_version: int
    floor: int
    baseline: str | None
    health: str
    state: str


@dataclass(frozen=True)
class NodeState:
    node_id: str
    url: str
    board: str
    power: str
    health: str
    policy_version: int
    targets: tuple[TargetState, ...]


@dataclass(frozen=True)
class OperationRecord:
    op_id: str
    kind: str
    target: str | None
    state: str
    percent: int
    message: str
    started_at: str | None
    ended_at: str | None
    transcript: tuple[dict[str, Any], ...]

    @property
    def donor(self) -> tuple[str | None, str | None]:
        """The donor that delivered the image (the last ACKed offer), and its kind."""
        donor: tuple[str | None, str | None] = (None, None)
        for entry in self.transcript:
            offer = entry.get("offer")
            if entry.get("event") == "DonorAcked" and isinstance(offer, dict):
                donor = (str(offer.get("donor_id") or "") or None,
                         str(offer.get("donor_kind") or "") or None)
        return donor


def save_node(conn: sqlite3.Connection, node: NodeState, now: float) -> None:
    conn.execute("DELETE FROM nodes WHERE id = ? AND url = ?", (f"url:{node.url}", node.url))
    conn.execute(
        "INSERT INTO nodes (id, url, board, power, health, reachable, last_error, last_seen, "
        "policy_version, updated_at) VALUES (?, ?, ?, ?, ?, 1, NULL, ?, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET url=excluded.url, board=excluded.board, "
        "power=excluded.power, health=excluded.health, reachable=1, last_error=NULL, "
        "last_seen=excluded.last_seen, policy_version=excluded.policy_version, "
        "updated_at=excluded.updated_at",
        (node.node_id, node.url, node.board, node.power, node.health, now,
         node.policy_version, now))
    conn.execute("DELETE FROM targets WHERE node_id = ?", (node.node_id,))
    conn.executemany(
        "INSERT INTO targets (node_id, name, version, security_version, floor, baseline, "
        "health, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(node.node_id, t.name, t.version, t.security_version, t.floor, t.baseline, t.health,
          t.state) for t in node.targets])


def mark_unreachable(conn: sqlite3.Connection, url: str, node_id: str | None, error: str,
                     now: float) -> None:
    """Flag the agent at ``url`` unreachable (creating a placeholder row if never reached)."""
    if node_id is None:
        conn.execute(
            "INSERT INTO nodes (id, url, reachable, last_error, updated_at) "
            "VALUES (?, ?, 0, ?, ?) ON CONFLICT(id) DO UPDATE SET reachable=0, "
            "last_error=excluded.last_error, updated_at=excluded.updated_at",
            (f"url:{url}", url, error[:500], now))
    else:
        conn.execute("UPDATE nodes SET reachable=0, last_error=?, updated_at=? WHERE id=?",
                     (error[:500], now, node_id))


def save_operation(conn: sqlite3.Connection, node_id: str, op: OperationRecord,
                   now: float) -> bool:
    """Upsert ``op`` and append its new transcript entries; True exactly once per operation:
    the first time it is seen finished (so metrics count each outcome once)."""
    donor, donor_kind = op.donor
    conn.execute(
        "INSERT INTO operations (node_id, op_id, kind, target, state, percent, donor, "
        "donor_kind, message, started_at, ended_at, first_seen, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(node_id, op_id) DO UPDATE "
        "SET state=excluded.state, percent=excluded.percent, "
        "donor=COALESCE(excluded.donor, donor), donor_kind=COALESCE(excluded.donor_kind, "
        "donor_kind), message=excluded.message, ended_at=excluded.ended_at, "
        "updated_at=excluded.updated_at",
        (node_id, op.op_id, op.kind, op.target, op.state, op.percent, donor, donor_kind,
         op.message[:500], op.started_at, op.ended_at, now, now))
    have = conn.execute("SELECT COUNT(*) FROM transcript WHERE node_id=? AND op_id=?",
                        (node_id, op.op_id)).fetchone()[0]
    conn.executemany(
        "INSERT OR IGNORE INTO transcript (node_id, op_id, seq, entry) VALUES (?, ?, ?, ?)",
        [(node_id, op.op_id, seq, json.dumps(entry))
         for seq, entry in enumerate(op.transcript) if seq >= have])
    if op.state not in FINISHED:
        return False
    changed = conn.execute(
        "UPDATE operations SET counted=1 WHERE node_id=? AND op_id=? AND counted=0",
        (node_id, op.op_id)).rowcount
    return bool(changed)


def abandon_unlisted(conn: sqlite3.Connection, node_id: str, listed: set[str],
                     now: float) -> int:
    """Operations still Running here that the agent no longer lists (it restarted, or its
    task store dropped them) become ``Killed``: they can never finish on their own."""
    running = [r[0] for r in conn.execute(
        "SELECT op_id FROM operations WHERE node_id = ? AND state = 'Running'", (node_id,))]
    gone = [op for op in running if op not in listed]
    conn.executemany(
        "UPDATE operations SET state = 'Killed', message = 'no longer listed by the agent "
        "(restarted?)', updated_at = ? WHERE node_id = ? AND op_id = ?",
        [(now, node_id, op) for op in gone])
    return len(gone)


def prune(conn: sqlite3.Connection, *, keep_per_node: int, older_than: float) -> int:
    """Retention: drop finished operations beyond the newest ``keep_per_node`` per node, and
    any finished one last updated before ``older_than``. Returns how many were dropped."""
    rows = conn.execute(
        "DELETE FROM operations WHERE state IN ('Completed','Exception','Cancelled','Killed') "
        "AND (updated_at < ? OR rowid IN (SELECT rowid FROM (SELECT rowid, ROW_NUMBER() "
        "OVER (PARTITION BY node_id ORDER BY updated_at DESC) AS n FROM operations) "
        "WHERE n > ?))", (older_than, keep_per_node)).rowcount
    return int(rows)


# --- reads -----------------------------------------------------------------------------------


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    return [dict(row) for row in cursor.fetchall()]


def fleet(conn: sqlite3.Connection) -> dict[str, Any]:
    """The overview: nodes with their targets, any running operation (``healing``) and the
    latest finished one (``last_operation``: kind, state, donor), and counts."""
    nodes = _dicts(conn.execute(
        "SELECT id, url, board, power, health, reachable, last_error, last_seen, "
        "policy_version FROM nodes ORDER BY id"))
    targets = _dicts(conn.execute("SELECT * FROM targets ORDER BY node_id, name"))
    running = _dicts(conn.execute(
        "SELECT node_id, op_id, kind, target, percent, message, donor FROM operations "
        "WHERE state = 'Running' ORDER BY first_seen"))
    finished = _dicts(conn.execute(
        "SELECT o.node_id, o.op_id, o.kind, o.target, o.state, o.donor, o.donor_kind, "
        "o.ended_at FROM operations o WHERE o.state != 'Running' AND o.first_seen = ("
        "SELECT MAX(p.first_seen) FROM operations p WHERE p.node_id = o.node_id AND "
        "p.state != 'Running')"))
    by_node: dict[str, dict[str, Any]] = {n["id"]: {**n, "targets": [], "healing": None,
                                                    "last_operation": None}
                                          for n in nodes}
    for op in finished:
        if op["node_id"] in by_node:
            by_node[op["node_id"]]["last_operation"] = op
    for t in targets:
        if t["node_id"] in by_node:
            by_node[t["node_id"]]["targets"].append(t)
    for op in running:
        if op["node_id"] in by_node:
            by_node[op["node_id"]]["healing"] = op
    counts: dict[str, dict[str, int]] = {"state": {}, "board": {}, "version": {}}
    for node in by_node.values():
        state = ("unreachable" if not node["reachable"] else
                 "healing" if node["healing"] else
                 "critical" if node["health"] == "Critical" else "ok")
        node["state"] = state
        counts["state"][state] = counts["state"].get(state, 0) + 1
        board = node["board"] or "unknown"
        counts["board"][board] = counts["board"].get(board, 0) + 1
        for t in node["targets"]:
            key = f"{t['name']} {t['version']}"
            counts["version"][key] = counts["version"].get(key, 0) + 1
    return {"nodes": list(by_node.values()), "counts": counts}


def node_detail(conn: sqlite3.Connection, node_id: str, limit: int = 20) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM nodes WHERE id = ?", (node_id,)).fetchone()
    if row is None:
        return None
    ops = _dicts(conn.execute(
        "SELECT op_id, kind, target, state, percent, donor, donor_kind, message, started_at, "
        "ended_at FROM operations WHERE node_id = ? ORDER BY first_seen DESC LIMIT ?",
        (node_id, limit)))
    targets = _dicts(conn.execute("SELECT * FROM targets WHERE node_id = ? ORDER BY name",
                                  (node_id,)))
    return {**dict(row), "targets": targets, "operations": ops}


def transcript(conn: sqlite3.Connection, node_id: str, op_id: str) -> list[dict[str, Any]]:
    return [json.loads(r[0]) for r in conn.execute(
        "SELECT entry FROM transcript WHERE node_id = ? AND op_id = ? ORDER BY seq",
        (node_id, op_id))]


def operations_since(conn: sqlite3.Connection, node_id: str, since: float) -> list[dict[str, Any]]:
    return _dicts(conn.execute(
        "SELECT op_id, kind, state, first_seen FROM operations WHERE node_id = ? "
        "AND first_seen >= ? ORDER BY first_seen", (node_id, since)))
