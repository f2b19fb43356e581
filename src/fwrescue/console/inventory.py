"""Fleet inventory: read every agent's Redfish service into the console database.

For each configured agent a watcher logs in (a Redfish session), reads ``Systems``,
``UpdateService/FirmwareInventory``, the agent's fleet policy and ``TaskService/Tasks``
(with each task's transcript), and keeps an ``EventService`` SSE stream open: any event
triggers an immediate re-read, so a recovery shows up within a second; without events it
re-reads every ``poll_s``.

Every reply is bounded (:data:`MAX_REPLY`) and validated; an agent that answers garbage,
refuses or stops answering is marked unreachable with the reason and retried with backoff —
it never stops the console or another watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from fwrescue.console.db import Database
from fwrescue.console.records import (
    NodeState,
    OperationRecord,
    TargetState,
    abandon_unlisted,
    mark_unreachable,
    prune,
    save_node,
    save_operation,
)

__all__ = ["AgentEndpoint", "Inventory", "InventoryError"]

log = logging.getLogger(__name__)

MAX_REPLY = 2 * 1024 * 1024
MAX_MEMBERS = 256
MAX_TRANSCRIPT = 2000
SSE_URI = "/redfish/v1/EventService/SSE"
TASKS_URI = "/redfish/v1/TaskService/Tasks"
FLEET_POLICY_URI = "/redfish/v1/UpdateService/Oem/Fwrescue/FleetPolicy"
SET_POLICY_URI = "/redfish/v1/UpdateService/Actions/Oem/Fwrescue.SetFleetPolicy"


class InventoryError(Exception):
    """An agent answered something the console cannot use (the reason is in the message)."""


@dataclass(frozen=True)
class AgentEndpoint:
    url: str  # e.g. http://127.0.0.1:8443 (no trailing slash)
    user: str
    password: str

    @classmethod
    def parse(cls, text: str) -> AgentEndpoint:
        """``URL,USER,PASSWORD`` (from ``--agent`` or an agents file line)."""
        parts = text.strip().split(",", 2)
        if len(parts) != 3 or not parts[0].startswith(("http://", "https://")) or not all(parts):
            raise ValueError(f"an agent is URL,USER,PASSWORD with an http(s) URL, got "
                             f"{text[:80]!r}")
        return cls(parts[0].rstrip("/"), parts[1], parts[2])


@dataclass(frozen=True)
class InventorySettings:
    """``agent_ca``: a PEM bundle that signs the agents' certificates (their self-signed
    ones, collected); ``verify_tls=False`` skips verification (lab use only)."""

    agent_ca: Path | None = None
    verify_tls: bool = True
    poll_s: float = 5.0
    retry_s: float = 2.0
    keep_operations: int = 50  # per node
    retention_s: float = 30 * 24 * 3600.0


OperationSink = Callable[[str, OperationRecord], None]


def _str(d: Any, key: str, default: str | None = None, limit: int = 256) -> str:
    value = d.get(key, default) if isinstance(d, dict) else None
    if not isinstance(value, str) or len(value) > limit:
        raise InventoryError(f"{key} must be a string of at most {limit} chars")
    return value


def _int(d: Any, key: str, default: int = 0) -> int:
    value = d.get(key, default) if isinstance(d, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise InventoryError(f"{key} must be an integer 0..2^32-1")
    return value


def _dict(d: Any, key: str) -> dict[str, Any]:
    value = d.get(key, {}) if isinstance(d, dict) else None
    if not isinstance(value, dict):
        raise InventoryError(f"{key} must be an object")
    return value


class AgentSession:
    """A Redfish session on one agent; bounded JSON reads."""

    def __init__(self, http: aiohttp.ClientSession, endpoint: AgentEndpoint) -> None:
        self._http = http
        self.endpoint = endpoint
        self.token: str | None = None

    async def login(self) -> None:
        async with self._http.post(
                f"{self.endpoint.url}/redfish/v1/SessionService/Sessions",
                json={"UserName": self.endpoint.user, "Password": self.endpoint.password}
        ) as resp:
            await resp.content.read(MAX_REPLY)
            if resp.status not in (200, 201):
                raise InventoryError(f"login refused (HTTP {resp.status})")
            token = resp.headers.get("X-Auth-Token")
        if not token or len(token) > 512:
            raise InventoryError("login returned no session token")
        self.token = token

    def headers(self) -> dict[str, str]:
        return {"X-Auth-Token": self.token or ""}

    async def get(self, path: str, *, missing_ok: bool = False) -> dict[str, Any]:
        async with self._http.get(f"{self.endpoint.url}{path}", headers=self.headers()) as resp:
            raw = await resp.content.read(MAX_REPLY + 1)
            if resp.status == 404 and missing_ok:
                return {}
            if resp.status == 401:
                self.token = None
                raise InventoryError("session expired")
            if resp.status != 200:
                raise InventoryError(f"GET {path[:100]}: HTTP {resp.status}")
        if len(raw) > MAX_REPLY:
            raise InventoryError(f"GET {path[:100]}: reply larger than {MAX_REPLY} bytes")
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise InventoryError(f"GET {path[:100]}: not JSON") from e
        if not isinstance(body, dict):
            raise InventoryError(f"GET {path[:100]}: not a JSON object")
        return body

    async def members(self, path: str) -> list[str]:
        refs = (await self.get(path)).get("Members", [])
        if not isinstance(refs, list) or len(refs) > MAX_MEMBERS:
            raise InventoryError(f"{path}: Members must be a list of at most {MAX_MEMBERS}")
        out = []
        for ref in refs:
            uri = _str(ref, "@odata.id")
            if not uri.startswith(path + "/"):
                raise InventoryError(f"{path}: member {uri[:80]!r} outside the collection")
            out.append(uri)
        return out

    async def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with self._http.post(f"{self.endpoint.url}{path}", json=body,
                                   headers=self.headers()) as resp:
            raw = await resp.content.read(MAX_REPLY)
            status = resp.status
        try:
            reply = json.loads(raw) if raw else {}
        except ValueError:
            reply = {}
        return status, reply if isinstance(reply, dict) else {}


async def read_agent(rf: AgentSession, known: dict[str, tuple[str, int]]) -> tuple[
        NodeState, list[OperationRecord], set[str]]:
    """One full read of an agent: the node, the operations that changed, and the ids of every
    task the agent lists now. ``known`` (op_id -> (state, transcript entries)) skips the
    transcripts that did not change since the last read; it is updated in place."""
    systems = await rf.members("/redfish/v1/Systems")
    if not systems:
        raise InventoryError("no ComputerSystem")
    system = await rf.get(systems[0])
    node_id = _str(system, "Id", limit=64)
    policy = await rf.get(FLEET_POLICY_URI, missing_ok=True)
    policy_targets = _dict(policy, "Targets")
    targets = []
    for uri in await rf.members("/redfish/v1/UpdateService/FirmwareInventory"):
        fw = await rf.get(uri)
        name = _str(fw, "Id", limit=64)
        status = _dict(fw, "Status")
        pt = _dict(policy_targets, name)
        baseline = pt.get("Baseline")
        targets.append(TargetState(
            name=name, version=_str(fw, "Version", limit=64),
            security_version=_int(_dict(_dict(fw, "Oem"), "Fwrescue"), "SecurityVersion"),
            floor=_int(pt, "Floor"),
            baseline=baseline if isinstance(baseline, str) else None,
            health=_str(status, "Health", "OK", 32), state=_str(status, "State", "", 32)))
    node = NodeState(
        node_id=node_id, url=rf.endpoint.url, board=_str(system, "Model", "", 64),
        power=_str(system, "PowerState", "Unknown", 32),
        health=_str(_dict(system, "Status"), "Health", "OK", 32),
        policy_version=_int(policy, "Version"), targets=tuple(targets))
    ops = []
    listed: set[str] = set()
    for uri in await rf.members(TASKS_URI):
        task = await rf.get(uri)
        op_id = _str(task, "Id", limit=64)
        listed.add(op_id)
        state = _str(task, "TaskState", limit=32)
        oem = _dict(_dict(task, "Oem"), "Fwrescue")
        entries = _int(oem, "TranscriptEntries")
        if known.get(op_id) == (state, entries):
            continue
        body = await rf.get(f"{uri}/Transcript", missing_ok=True)
        transcript = body.get("Entries", [])
        if not isinstance(transcript, list) or not all(isinstance(e, dict) for e in transcript):
            raise InventoryError(f"task {op_id}: transcript entries must be objects")
        messages = task.get("Messages", [])
        message = ""
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            message = str(messages[-1].get("Message", ""))[:500]
        end = task.get("EndTime")
        ops.append(OperationRecord(
            op_id=op_id, kind=_str(oem, "Kind", "recovery", 32),
            target=oem.get("Target") if isinstance(oem.get("Target"), str) else None,
            state=state, percent=min(100, _int(task, "PercentComplete")), message=message,
            started_at=_str(task, "StartTime", "", 64), ended_at=end if isinstance(end, str)
            else None, transcript=tuple(transcript[:MAX_TRANSCRIPT])))
        known[op_id] = (state, entries)
    return node, ops, listed


class Inventory:
    """Watches every agent; calls ``on_change()`` after each write and ``on_finished`` once
    per finished operation (metrics, rollouts)."""

    def __init__(self, db: Database, endpoints: list[AgentEndpoint], *,
                 settings: InventorySettings | None = None,
                 on_change: Callable[[], None] | None = None,
                 on_finished: OperationSink | None = None,
                 on_reachability: Callable[[str, bool], None] | None = None) -> None:
        self._db = db
        self.endpoints = list(endpoints)
        self.settings = settings or InventorySettings()
        self._on_change = on_change or (lambda: None)
        self._on_finished = on_finished or (lambda node, op: None)
        self._on_reachability = on_reachability or (lambda url, ok: None)
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self.sessions: dict[str, AgentSession] = {}  # url -> logged-in session
        self.node_urls: dict[str, str] = {}  # node id -> url

    async def start(self) -> None:
        ssl_option: ssl.SSLContext | bool = self.settings.verify_tls
        if self.settings.agent_ca is not None:
            ssl_option = ssl.create_default_context(cafile=str(self.settings.agent_ca))
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=10),
            connector=aiohttp.TCPConnector(ssl=ssl_option))
        for endpoint in self.endpoints:
            self.add(endpoint)

    def add(self, endpoint: AgentEndpoint) -> None:
        """Start watching another agent (a configured one, or one that announced itself)."""
        if self._http is None:
            raise RuntimeError("inventory not started")
        if endpoint not in self.endpoints:
            self.endpoints.append(endpoint)
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch(endpoint)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _watch(self, endpoint: AgentEndpoint) -> None:
        assert self._http is not None
        known: dict[str, tuple[str, int]] = {}
        node_id: str | None = None
        while True:
            rf = AgentSession(self._http, endpoint)
            stream: asyncio.Task[None] | None = None
            try:
                await rf.login()
                self.sessions[endpoint.url] = rf
                changed = asyncio.Event()
                stream = asyncio.create_task(self._events(rf, changed))
                while True:
                    node, ops, listed = await read_agent(rf, known)
                    node_id = node.node_id
                    self.node_urls[node_id] = endpoint.url
                    finished = await self._db.write(functools.partial(
                        self._save, node=node, ops=ops, listed=listed))
                    self._on_reachability(endpoint.url, True)
                    for op in finished:
                        self._on_finished(node.node_id, op)
                    self._on_change()
                    if stream.done():
                        raise InventoryError("event stream closed")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), self.settings.poll_s)
                    changed.clear()
                    await asyncio.sleep(0.05)  # coalesce a burst of events into one read
            except asyncio.CancelledError:
                raise
            except (InventoryError, aiohttp.ClientError, OSError, TimeoutError,
                    ValueError) as e:
                reason = str(e) or type(e).__name__
                log.info("agent %s unreachable: %s", endpoint.url, reason)
                self.sessions.pop(endpoint.url, None)
                known.clear()
                await self._db.write(functools.partial(
                    mark_unreachable, url=endpoint.url, node_id=node_id, error=reason,
                    now=time.time()))
                self._on_reachability(endpoint.url, False)
                self._on_change()
            finally:
                if stream is not None:
                    stream.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await stream
            await asyncio.sleep(self.settings.retry_s)

    def _save(self, conn: sqlite3.Connection, *, node: NodeState,
              ops: list[OperationRecord], listed: set[str]) -> list[OperationRecord]:
        now = time.time()
        save_node(conn, node, now)
        finished = [op for op in ops if save_operation(conn, node.node_id, op, now)]
        abandon_unlisted(conn, node.node_id, listed, now)
        prune(conn, keep_per_node=self.settings.keep_operations,
              older_than=now - self.settings.retention_s)
        return finished

    async def _events(self, rf: AgentSession, changed: asyncio.Event) -> None:
        """Follow the agent's SSE stream; every event sets ``changed``."""
        assert self._http is not None
        timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
        async with self._http.get(f"{rf.endpoint.url}{SSE_URI}", headers=rf.headers(),
                                  timeout=timeout) as resp:
            if resp.status != 200:
                return
            while True:
                line = await resp.content.readline()
                if not line:
                    return
                if line.startswith(b"data:"):
                    changed.set()
