"""Policy catch-up: nodes that missed a completed rollout get the policy in force.

A node discovered after its board's rollout completed, or unreachable while it ran, reports
an older policy version than the fleet. On every desk tick :meth:`PolicyCatchUp.tick`:

* takes, per board, the **newest completed** rollout (only a completed one: the version of
  a running, paused or halted rollout is never delivered here, so a halt is never bypassed);
* delivers its signed policy to every reachable node of that board whose reported policy
  version is older, at most once per ``retry_s`` per node (an agent that is busy or answers
  an error is tried again later, never in a tight loop);
* records the delivery on that rollout's delivery list (``delivered``, detail
  ``catch-up``), marks it ``done`` once the node reports the version, and leaves a node that
  refused the document (``refused`` with the agent's reason) alone.

The agent verifies the document as always; catch-up adds no trust.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from typing import Any

import aiohttp

from fwrescue.console.db import Database
from fwrescue.console.inventory import SET_POLICY_URI, Inventory, InventoryError
from fwrescue.trust.policy import FleetPolicy, parse_policy

__all__ = ["CATCH_UP_DETAIL", "PolicyCatchUp", "deliver_policy"]

log = logging.getLogger(__name__)

CATCH_UP_DETAIL = "catch-up: joined after the rollout or was unreachable during it"

_LATE_NODES = """
SELECT r.id AS rollout_id, r.board, r.version, p.document, n.id AS node_id, n.url
FROM rollouts r
JOIN policies p USING (board, version)
JOIN nodes n ON n.board = r.board
WHERE r.state = 'completed'
  AND r.version = (SELECT MAX(version) FROM rollouts WHERE board = r.board
                   AND state = 'completed')
  AND n.id NOT LIKE 'url:%' AND n.reachable = 1 AND n.policy_version < r.version
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.rollout_id = r.id
                  AND d.node_id = n.id AND d.state = 'refused')
ORDER BY r.board, n.id
"""


class PolicyCatchUp:
    def __init__(self, db: Database, inventory: Inventory, *, retry_s: float = 5.0) -> None:
        self._db = db
        self._inventory = inventory
        self._retry_s = retry_s
        self._next_try: dict[tuple[str, int], float] = {}  # (node, version) -> monotonic

    async def tick(self) -> bool:
        """One catch-up pass; True when anything changed (for the dashboard)."""
        changed = await self._db.write(_mark_done)
        late = await self._db.read(lambda c: [dict(r) for r in c.execute(_LATE_NODES)])
        now = time.monotonic()
        wanted = {(row["node_id"], row["version"]) for row in late}
        for key in list(self._next_try):  # bounded: only nodes that still lag
            if key not in wanted:
                del self._next_try[key]
        for row in late:
            key = (row["node_id"], row["version"])
            if self._next_try.get(key, 0.0) > now:
                continue
            self._next_try[key] = now + self._retry_s
            policy, _, _ = parse_policy(row["document"])
            outcome = await deliver_policy(self._inventory, row["url"], row["node_id"], policy)
            if outcome is None:
                continue
            state, detail = outcome
            await self._db.write(functools.partial(_record, row=row, state=state,
                                                   detail=detail))
            changed = True
        return changed


def _record(conn: sqlite3.Connection, *, row: dict[str, Any], state: str,
            detail: str | None) -> None:
    now = time.time()
    conn.execute(
        "INSERT INTO deliveries (rollout_id, node_id, stage, state, detail, delivered_at, "
        "updated_at) VALUES (?, ?, 2, ?, ?, ?, ?) ON CONFLICT(rollout_id, node_id) DO UPDATE "
        "SET state = excluded.state, detail = excluded.detail, "
        "delivered_at = excluded.delivered_at, updated_at = excluded.updated_at",
        (row["rollout_id"], row["node_id"], state, detail or CATCH_UP_DETAIL, now, now))


def _mark_done(conn: sqlite3.Connection) -> bool:
    """Deliveries of completed rollouts whose node now reports the version become done."""
    cur = conn.execute(
        "UPDATE deliveries SET state = 'done', updated_at = ? WHERE state IN "
        "('pending', 'delivered') AND rollout_id IN (SELECT id FROM rollouts WHERE state = "
        "'completed') AND (SELECT policy_version FROM nodes WHERE id = deliveries.node_id) >= "
        "(SELECT version FROM rollouts WHERE id = deliveries.rollout_id)", (time.time(),))
    return cur.rowcount > 0


async def deliver_policy(inventory: Inventory, url: str, node_id: str,
                         policy: FleetPolicy) -> tuple[str, str | None] | None:
    """POST ``policy`` to the agent at ``url``: ``("delivered", None)`` when it is in force
    there (accepted, or refused as not newer), ``("refused", why)`` for any other refusal,
    None when the agent cannot be asked now (no session, network error, 5xx)."""
    session = inventory.sessions.get(url)
    if session is None:
        return None
    try:
        status, reply = await session.post_json(
            SET_POLICY_URI, {"Policy": policy.raw.decode("utf-8")})
    except (aiohttp.ClientError, OSError, TimeoutError, InventoryError) as e:
        log.info("delivery of %s v%d to %s failed: %s", policy.board, policy.version,
                 node_id, e)
        return None
    reason, detail = _refusal(reply)
    if status == 200 or (status == 400 and reason == "not-newer"):
        return "delivered", None
    if status == 400:
        return "refused", detail
    return None


def _refusal(reply: dict[str, Any]) -> tuple[str | None, str | None]:
    """The agent's stable refusal code and message from a Redfish error body."""
    error = reply.get("error")
    if not isinstance(error, dict):
        return None, None
    infos = error.get("@Message.ExtendedInfo")
    reason = None
    if isinstance(infos, list) and infos and isinstance(infos[0], dict):
        oem = infos[0].get("Oem", {})
        fw = oem.get("Fwrescue", {}) if isinstance(oem, dict) else {}
        reason = fw.get("Reason") if isinstance(fw, dict) else None
    message = error.get("message")
    return (reason if isinstance(reason, str) else None,
            message[:300] if isinstance(message, str) else None)
