"""Redfish Tasks built from backend :class:`OperationEvent` s. Sans-IO: ``now`` is a parameter.

Each distinct ``op_id`` is one Task (an operator's update or an automatic recovery). The store
keeps at most ``max_tasks`` tasks (finished ones are dropped oldest first), at most
``max_messages`` messages and ``max_transcript_entries`` transcript records per task.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fwrescue.errors import FwRescueError
from fwrescue.redfish.backend import OperationEvent
from fwrescue.redfish.messages import Registries, message_for_error

__all__ = ["MONITORS_URI", "TASKS_URI", "Task", "TaskStore", "iso_time", "task_json"]

TASKS_URI = "/redfish/v1/TaskService/Tasks"
MONITORS_URI = "/redfish/v1/TaskService/TaskMonitors"
# Messages per task: the first few (started, targets) and the latest ones are kept.
_MAX_MESSAGES = 32
# Transcript entries must be small JSON records; anything larger is a backend bug.
_MAX_ENTRY_BYTES = 4096


def iso_time(now: float) -> str:
    """Seconds since the epoch as a Redfish DateTime (UTC)."""
    return dt.datetime.fromtimestamp(now, tz=dt.UTC).isoformat(timespec="seconds")


@dataclass
class Task:
    id: str
    kind: str
    start: float
    state: str = "Running"  # Redfish TaskState
    status: str = "OK"  # Redfish Health
    percent: int = 0
    end: float | None = None
    target: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    dropped_transcript: int = 0
    name: str = ""

    @property
    def finished(self) -> bool:
        return self.state in ("Completed", "Exception", "Cancelled", "Killed")

    @property
    def uri(self) -> str:
        return f"{TASKS_URI}/{self.id}"

    @property
    def monitor_uri(self) -> str:
        return f"{MONITORS_URI}/{self.id}"


class _EventError(FwRescueError):
    """Wraps an event's MessageId that the registries cannot render as-is."""


class TaskStore:
    def __init__(self, registries: Registries, max_tasks: int, max_transcript: int) -> None:
        self._reg = registries
        self._max_tasks = max_tasks
        self._max_transcript = max_transcript
        self._tasks: OrderedDict[str, Task] = OrderedDict()

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def all(self) -> list[Task]:
        return list(self._tasks.values())

    def ensure(self, task_id: str, kind: str, now: float, target: str | None = None) -> Task:
        """The task for ``task_id``, created Running (with TaskStarted) if new."""
        task = self._tasks.get(task_id)
        if task is not None:
            return task
        task = Task(id=task_id, kind=kind, start=now, target=target)
        task.name = f"{'Firmware update' if kind == 'update' else 'Firmware recovery'} {task_id}"
        self._add_message(task, self._reg.message("TaskEvent.1.0.TaskStarted", (task_id,)))
        self._tasks[task_id] = task
        self._evict()
        return task

    def apply(self, event: OperationEvent, now: float) -> tuple[Task, list[dict[str, Any]]]:
        """Fold one event into its task; return the task and the messages it added."""
        existed = event.op_id in self._tasks
        task = self.ensure(event.op_id, event.kind, now, event.target)
        added: list[dict[str, Any]] = [] if existed else [task.messages[0]]
        if task.finished:
            # A finished task is final; late events are ignored rather than rewriting history.
            return task, []
        task.percent = max(task.percent, event.percent)
        if event.target and not task.target:
            task.target = event.target
        msg = self._render(event)
        added.append(self._add_message(task, msg))
        if event.transcript_entry is not None:
            self._add_transcript(task, dict(event.transcript_entry), now)
        if event.state == "Completed":
            task.state, task.percent, task.end = "Completed", 100, now
            task.status = "Warning" if msg["MessageSeverity"] == "Warning" else "OK"
            done = "TaskCompletedWarning" if task.status == "Warning" else "TaskCompletedOK"
            added.append(
                self._add_message(task, self._reg.message(f"TaskEvent.1.0.{done}", (task.id,)))
            )
        elif event.state == "Cancelled":
            task.state, task.status, task.end = "Cancelled", "Warning", now
            added.append(
                self._add_message(
                    task, self._reg.message("TaskEvent.1.0.TaskCancelled", (task.id,))
                )
            )
        elif event.state == "Exception":
            task.state, task.status, task.end = "Exception", "Critical", now
            added.append(
                self._add_message(task, self._reg.message("TaskEvent.1.0.TaskAborted", (task.id,)))
            )
        return task, added

    def fail(
        self, task_id: str, error: FwRescueError, now: float, context: tuple[str, ...]
    ) -> Task:
        """Mark a task failed by a service-side error (download failed, backend raised)."""
        task = self.ensure(task_id, "update", now)
        if not task.finished:
            self._add_message(task, message_for_error(self._reg, error, context))
            task.state, task.status, task.end = "Exception", "Critical", now
            self._add_message(task, self._reg.message("TaskEvent.1.0.TaskAborted", (task.id,)))
        return task

    def _render(self, event: OperationEvent) -> dict[str, Any]:
        try:
            msg = self._reg.message(event.message_id, event.args)
        except ValueError:
            err = _EventError(event.message)
            err.message_id = event.message_id
            msg = message_for_error(self._reg, err, event.args)
            msg["Message"] = event.message
            return msg
        if event.message:
            msg["Message"] = event.message
        return msg

    def _add_message(self, task: Task, msg: dict[str, Any]) -> dict[str, Any]:
        task.messages.append(msg)
        if len(task.messages) > _MAX_MESSAGES:
            del task.messages[4]  # keep the opening messages and the newest
        return msg

    def _add_transcript(self, task: Task, entry: dict[str, Any], now: float) -> None:
        try:
            size = len(json.dumps(entry, default=str))
        except (TypeError, ValueError):
            size = _MAX_ENTRY_BYTES + 1
        if size > _MAX_ENTRY_BYTES or len(task.transcript) >= self._max_transcript:
            task.dropped_transcript += 1
            return
        task.transcript.append(
            {"Time": iso_time(now), **json.loads(json.dumps(entry, default=str))}
        )

    def _evict(self) -> None:
        while len(self._tasks) > self._max_tasks:
            victim = next((t.id for t in self._tasks.values() if t.finished), None)
            if victim is None:
                return
            del self._tasks[victim]


def task_json(task: Task) -> dict[str, Any]:
    """The Task resource."""
    body: dict[str, Any] = {
        "@odata.id": task.uri,
        "@odata.type": "#Task.v1_7_4.Task",
        "Id": task.id,
        "Name": task.name,
        "TaskState": task.state,
        "TaskStatus": task.status,
        "PercentComplete": task.percent,
        "StartTime": iso_time(task.start),
        "TaskMonitor": task.monitor_uri,
        "HidePayload": True,
        "Messages": list(task.messages),
        "Oem": {
            "Fwrescue": {
                "Kind": task.kind,
                "Target": task.target,
                "TranscriptUri": f"{task.uri}/Transcript",
                "TranscriptEntries": len(task.transcript),
            }
        },
    }
    if task.end is not None:
        body["EndTime"] = iso_time(task.end)
    return body

