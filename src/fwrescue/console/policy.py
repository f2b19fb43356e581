"""Signed fleet policies on the console: store them, and roll them out in stages.

The console never signs: :meth:`PolicyDesk.upload` accepts only a document that verifies
against the console's trust store (the same release keys the agents trust), so an operator
error is caught before any agent sees it; every agent verifies again.

A rollout delivers one board's policy (Redfish Oem ``Fwrescue.SetFleetPolicy``) to the first
``fraction`` of that board's nodes (by node id, at least one), waits until each of them is
done (policy version in force, every baseline reached) or failed (a policy-driven update
ended in ``Exception``: the image did not flash or boot), then to the rest. When failures
reach ``halt_after`` the rollout halts — nothing more is delivered — until an operator
resumes it (which allows ``halt_after`` further failures). A node unreachable before its
delivery does not hold its stage up; it and nodes discovered later get the newest completed
policy from :mod:`fwrescue.console.catchup`. State lives in the database, so a
restarted console carries on where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from fwrescue.console.catchup import PolicyCatchUp, deliver_policy
from fwrescue.console.db import Database
from fwrescue.console.inventory import Inventory
from fwrescue.protocol.policy import version_key
from fwrescue.trust.keys import TrustStore
from fwrescue.trust.policy import FleetPolicy, PolicyError, parse_policy, verify_policy

__all__ = ["PolicyDesk", "RolloutError"]

log = logging.getLogger(__name__)

ACTIVE = ("running", "paused", "halted")
UNREACHABLE_DETAIL = "unreachable during its stage: catch-up delivers the policy when it is back"


class RolloutError(ValueError):
    """A policy or rollout request refused; the message says why (nothing changed)."""


class PolicyDesk:
    def __init__(self, db: Database, trust: TrustStore, inventory: Inventory, *,
                 on_change: Callable[[], None] | None = None, tick_s: float = 0.5,
                 catch_up_retry_s: float = 5.0) -> None:
        self._db = db
        self._trust = trust
        self._inventory = inventory
        self._on_change = on_change or (lambda: None)
        self._tick_s = tick_s
        self._task: asyncio.Task[None] | None = None
        self.catch_up = PolicyCatchUp(db, inventory, retry_s=catch_up_retry_s)

    # --- documents ----------------------------------------------------------------------------

    async def upload(self, raw: bytes, username: str) -> FleetPolicy:
        try:
            parsed, _, _ = parse_policy(raw)
            policy = verify_policy(raw, self._trust, board=parsed.board,
                                   targets=list(parsed.targets))
        except PolicyError as e:
            raise RolloutError(f"policy refused ({e.reason}): {e.message}") from e
        summary = ", ".join(f"{t}: baseline {p.baseline or '-'}, floor {p.floor}"
                            for t, p in sorted(policy.targets.items()))

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute("INSERT INTO policies (board, version, document, summary, "
                             "uploaded_by, uploaded_at) VALUES (?, ?, ?, ?, ?, ?)",
                             (policy.board, policy.version, policy.raw, summary, username,
                              time.time()))
            except sqlite3.IntegrityError as e:
                raise RolloutError(f"policy v{policy.version} for {policy.board} is already "
                                   "stored") from e

        await self._db.write(insert)
        self._on_change()
        return policy

    async def overview(self) -> dict[str, Any]:
        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            policies = [dict(r) for r in conn.execute(
                "SELECT board, version, summary, uploaded_by, uploaded_at FROM policies "
                "ORDER BY board, version DESC")]
            rollouts = [dict(r) for r in conn.execute(
                "SELECT * FROM rollouts ORDER BY id DESC LIMIT 50")]
            for rollout in rollouts:
                rollout["deliveries"] = [dict(r) for r in conn.execute(
                    "SELECT node_id, stage, state, detail FROM deliveries WHERE rollout_id = ? "
                    "ORDER BY stage, node_id", (rollout["id"],))]
                rollout["failures"] = sum(d["state"] == "failed" for d in rollout["deliveries"])
            return {"policies": policies, "rollouts": rollouts}

        return await self._db.read(read)

    # --- rollouts -----------------------------------------------------------------------------

    async def start_rollout(self, board: str, version: int, fraction: float,
                            halt_after: int) -> int:
        if not (isinstance(fraction, float | int) and 0 < fraction <= 1):
            raise RolloutError("fraction: a number in (0, 1]")
        if isinstance(halt_after, bool) or not isinstance(halt_after, int) or not (
                1 <= halt_after <= 1000):
            raise RolloutError("halt_after: an integer 1..1000")

        def insert(conn: sqlite3.Connection) -> int:
            if conn.execute("SELECT 1 FROM policies WHERE board = ? AND version = ?",
                            (board, version)).fetchone() is None:
                raise RolloutError(f"no stored policy v{version} for board {board!r}")
            if conn.execute("SELECT 1 FROM rollouts WHERE board = ? AND state IN "
                            "('running','paused','halted')", (board,)).fetchone():
                raise RolloutError(f"a rollout for {board!r} is active; let it complete first")
            now = time.time()
            cur = conn.execute(
                "INSERT INTO rollouts (board, version, state, fraction, halt_after, "
                "failures_allowed, created_at, updated_at) VALUES (?, ?, 'running', ?, ?, ?, "
                "?, ?)", (board, version, float(fraction), halt_after, halt_after, now, now))
            return int(cur.lastrowid or 0)

        rollout_id = await self._db.write(insert)
        self._on_change()
        return rollout_id

    async def pause(self, rollout_id: int) -> None:
        await self._set_state(rollout_id, "paused", ("running",))

    async def resume(self, rollout_id: int) -> None:
        await self._set_state(rollout_id, "running", ("paused", "halted"))

    async def _set_state(self, rollout_id: int, state: str, allowed: tuple[str, ...]) -> None:
        def update(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT state, halt_after FROM rollouts WHERE id = ?",
                               (rollout_id,)).fetchone()
            if row is None:
                raise RolloutError(f"no rollout {rollout_id}")
            if row["state"] not in allowed:
                raise RolloutError(f"rollout {rollout_id} is {row['state']}; only a "
                                   f"{' or '.join(allowed)} one can become {state}")
            failures = conn.execute("SELECT COUNT(*) FROM deliveries WHERE rollout_id = ? AND "
                                    "state = 'failed'", (rollout_id,)).fetchone()[0]
            allowance = failures + row["halt_after"]
            conn.execute("UPDATE rollouts SET state = ?, updated_at = ?, reason = NULL, "
                         "failures_allowed = CASE WHEN ? = 'running' THEN ? ELSE "
                         "failures_allowed END WHERE id = ?",
                         (state, time.time(), state, allowance, rollout_id))

        await self._db.write(update)
        self._on_change()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the console
                log.exception("rollout tick failed")
            await asyncio.sleep(self._tick_s)

    async def tick(self) -> None:
        """Advance every running rollout one step (deliver, observe, halt, next stage), then
        catch up nodes that missed a completed one (:mod:`fwrescue.console.catchup`)."""
        running = await self._db.read(lambda c: [dict(r) for r in c.execute(
            "SELECT r.*, p.document FROM rollouts r JOIN policies p USING (board, version) "
            "WHERE r.state = 'running' ORDER BY r.id")])
        for rollout in running:
            await self._advance(rollout)
        if await self.catch_up.tick():
            self._on_change()

    async def _advance(self, rollout: dict[str, Any]) -> None:
        rid, board = rollout["id"], rollout["board"]
        policy, _, _ = parse_policy(rollout["document"])
        now = time.time()

        def plan(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            nodes = [r[0] for r in conn.execute(
                "SELECT id FROM nodes WHERE board = ? AND id NOT LIKE 'url:%' ORDER BY id",
                (board,))]
            first = max(1, math.ceil(rollout["fraction"] * len(nodes))) if nodes else 0
            have = {r[0] for r in conn.execute(
                "SELECT node_id FROM deliveries WHERE rollout_id = ?", (rid,))}
            conn.executemany(
                "INSERT INTO deliveries (rollout_id, node_id, stage, state, updated_at) "
                "VALUES (?, ?, ?, 'pending', ?)",
                [(rid, n, 1 if i < first else 2, now) for i, n in enumerate(nodes)
                 if n not in have])
            return [dict(r) for r in conn.execute(
                "SELECT d.*, n.url, n.reachable, n.policy_version FROM deliveries d "
                "JOIN nodes n ON n.id = d.node_id WHERE d.rollout_id = ? AND d.stage <= ?",
                (rid, rollout["stage"]))]

        deliveries = await self._db.write(plan)
        for d in deliveries:
            if d["state"] == "pending":
                await self._deliver(rid, d, policy)
            elif d["state"] == "delivered":
                await self._observe(rid, d, policy)
        await self._db.write(lambda c: self._conclude(c, rollout))
        self._on_change()

    async def _deliver(self, rid: int, d: dict[str, Any], policy: FleetPolicy) -> None:
        outcome = await deliver_policy(self._inventory, d["url"], d["node_id"], policy)
        if outcome is None:
            return  # unreachable, busy or restarting: stays pending, tried again next tick
        state, detail = outcome
        await self._db.write(lambda c: c.execute(
            "UPDATE deliveries SET state = ?, detail = ?, delivered_at = ?, updated_at = ? "
            "WHERE rollout_id = ? AND node_id = ?",
            (state, detail, time.time(), time.time(), rid, d["node_id"])))

    async def _observe(self, rid: int, d: dict[str, Any], policy: FleetPolicy) -> None:
        since = float(d["delivered_at"] or 0) - 1.0

        def read(conn: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            targets = conn.execute("SELECT name, version FROM targets WHERE node_id = ?",
                                   (d["node_id"],)).fetchall()
            ops = conn.execute(
                "SELECT op_id, state, message FROM operations WHERE node_id = ? AND "
                "kind = 'update' AND first_seen >= ? ORDER BY first_seen",
                (d["node_id"], since)).fetchall()
            return targets, ops

        targets, ops = await self._db.read(read)
        versions = {t[0]: t[1] for t in targets}
        failed = [op for op in ops if op["state"] == "Exception"]
        if failed:
            state, detail = "failed", f"{failed[0][0]}: {failed[0][2]}"[:300]
        elif any(op["state"] == "Running" for op in ops):
            return  # an update is under way (its flash may show the new version before boot)
        elif d["policy_version"] >= policy.version and all(
                p.baseline is None or (versions.get(t) not in (None, "unknown") and
                                       version_key(versions[t]) >= version_key(p.baseline))
                for t, p in policy.targets.items()):
            state, detail = "done", None
        else:
            return
        await self._db.write(lambda c: c.execute(
            "UPDATE deliveries SET state = ?, detail = ?, updated_at = ? WHERE rollout_id = ? "
            "AND node_id = ?", (state, detail, time.time(), rid, d["node_id"])))

    @staticmethod
    def _conclude(conn: sqlite3.Connection, rollout: dict[str, Any]) -> None:
        rid = rollout["id"]
        rows = conn.execute(
            "SELECT d.node_id, d.stage, d.state, n.reachable FROM deliveries d "
            "JOIN nodes n ON n.id = d.node_id WHERE d.rollout_id = ?", (rid,)).fetchall()
        failures = sum(r["state"] == "failed" for r in rows)
        now = time.time()
        if failures >= rollout["failures_allowed"]:
            conn.execute("UPDATE rollouts SET state = 'halted', reason = ?, updated_at = ? "
                         "WHERE id = ? AND state = 'running'",
                         (f"halted: {failures} failed update(s), halt after "
                          f"{rollout['failures_allowed']}", now, rid))
            return
        stage = rollout["stage"]
        # a node unreachable before it got the policy does not hold the stage up: the
        # catch-up (PolicyCatchUp) delivers the completed policy when it is back
        open_ = [r for r in rows if r["stage"] <= stage and (
            r["state"] == "delivered" or (r["state"] == "pending" and r["reachable"]))]
        if rows and not open_:
            conn.execute("UPDATE deliveries SET detail = ?, updated_at = ? WHERE rollout_id "
                         "= ? AND stage <= ? AND state = 'pending'",
                         (UNREACHABLE_DETAIL, now, rid, stage))
            if stage == 1 and any(r["stage"] == 2 for r in rows):
                conn.execute("UPDATE rollouts SET stage = 2, updated_at = ? WHERE id = ?",
                             (now, rid))
            else:
                conn.execute("UPDATE rollouts SET state = 'completed', updated_at = ? "
                             "WHERE id = ? AND state = 'running'", (now, rid))
