"""Automatic recoveries become Tasks and events (SSE and push); stores stay bounded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import ADMIN, READER
from tests.fakes.redfish_backend import FakeBackend

from fwrescue.redfish.backend import OperationEvent
from fwrescue.redfish.messages import Registries
from fwrescue.redfish.tasks import TaskStore

Client = TestClient[web.Request, web.Application]


def auth(user_pw: tuple[str, str] = ADMIN) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(*user_pw)}


async def test_automatic_recovery_appears_as_a_task_with_transcript(
    client: Client, backend: FakeBackend
) -> None:
    backend.emit_recovery("rec-7")
    task = await (await client.get("/redfish/v1/TaskService/Tasks/rec-7", headers=auth())).json()
    assert (task["TaskState"], task["TaskStatus"]) == ("Completed", "OK")
    assert task["Oem"]["Fwrescue"]["Kind"] == "recovery"
    transcript = await (
        await client.get(task["Oem"]["Fwrescue"]["TranscriptUri"], headers=auth(READER))
    ).json()
    assert [e["event"] for e in transcript["Entries"]] == ["SOLICIT", "ACCEPT"]
    assert transcript["Entries"][1]["donor"] == "peer-7"


async def test_failed_recovery_task_is_exception_critical(
    client: Client, backend: FakeBackend
) -> None:
    backend.emit_recovery("rec-8", fail=True)
    task = await (await client.get("/redfish/v1/TaskService/Tasks/rec-8", headers=auth())).json()
    assert (task["TaskState"], task["TaskStatus"]) == ("Exception", "Critical")


async def read_sse_events(resp: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for _ in range(200):
        line = await asyncio.wait_for(resp.content.readline(), 5)
        if line.startswith(b"data: "):
            events.append(json.loads(line[6:]))
            if len(events) >= count:
                break
    return events


async def test_recovery_events_stream_over_sse(client: Client, backend: FakeBackend) -> None:
    es = await (await client.get("/redfish/v1/EventService", headers=auth())).json()
    resp = await client.get(es["ServerSentEventUri"], headers=auth(READER))
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    backend.emit_recovery("rec-9")
    events = await read_sse_events(resp, 3)
    records = [r for e in events for r in e["Events"]]
    ids = [r["MessageId"] for r in records]
    assert ids[:2] == ["TaskEvent.1.0.TaskStarted", "Update.1.3.UpdateInProgress"]
    assert all(r["OriginOfCondition"]["@odata.id"].endswith("/rec-9") for r in records)
    resp.close()


async def test_push_subscription_receives_task_events_with_context(
    client: Client, backend: FakeBackend, posted: list[tuple[str, dict[str, Any]]]
) -> None:
    resp = await client.post(
        "/redfish/v1/EventService/Subscriptions",
        headers=auth(),
        json={"Destination": "http://127.0.0.1:9/events", "Context": "ops"},
    )
    assert resp.status == 201
    backend.emit_recovery("rec-10")
    for _ in range(100):
        if len(posted) >= 3:
            break
        await asyncio.sleep(0.01)
    assert posted[0][0] == "http://127.0.0.1:9/events"
    assert posted[0][1]["Context"] == "ops"
    assert posted[-1][1]["Events"][-1]["MessageId"] == "TaskEvent.1.0.TaskCompletedOK"


@pytest.mark.parametrize(
    "dest",
    ["ftp://127.0.0.1/x", "file:///tmp/x", "127.0.0.1:80/x", "http://", 7, "http://h:99999/"],
)
async def test_subscription_destination_must_be_http_url(client: Client, dest: object) -> None:
    resp = await client.post(
        "/redfish/v1/EventService/Subscriptions", headers=auth(), json={"Destination": dest}
    )
    assert resp.status == 400
    coll = await (await client.get("/redfish/v1/EventService/Subscriptions", headers=auth())).json()
    assert coll["Members@odata.count"] == 0


async def test_readonly_cannot_subscribe(client: Client) -> None:
    resp = await client.post(
        "/redfish/v1/EventService/Subscriptions",
        headers=auth(READER),
        json={"Destination": "http://127.0.0.1:9/"},
    )
    assert resp.status == 403


def event(op: str, state: str = "Running", **kw: Any) -> OperationEvent:
    return OperationEvent(
        op_id=op,
        kind="update",
        state=state,  # type: ignore[arg-type]
        percent=kw.pop("percent", 10),
        message_id=kw.pop("message_id", "Update.1.3.UpdateInProgress"),
        message=kw.pop("message", ""),
        **kw,
    )


def test_task_store_evicts_oldest_finished_tasks_first() -> None:
    store = TaskStore(Registries(), max_tasks=2, max_transcript=4)
    store.apply(event("a"), 0.0)
    store.apply(
        event(
            "b",
            "Completed",
            percent=100,
            message_id="Update.1.3.UpdateSuccessful",
            args=("bios", "img"),
        ),
        1.0,
    )
    store.apply(event("c"), 2.0)
    assert [t.id for t in store.all()] == ["a", "c"]


def test_task_store_bounds_transcript_and_ignores_late_events() -> None:
    store = TaskStore(Registries(), max_tasks=8, max_transcript=2)
    for i in range(5):
        store.apply(event("t", transcript_entry={"n": i}), float(i))
    task = store.get("t")
    assert task is not None
    assert len(task.transcript) == 2 and task.dropped_transcript == 3
    store.apply(
        event("t", "Exception", message_id="Update.1.3.ApplyFailed", args=("i", "bios")), 9.0
    )
    store.apply(event("t", "Completed", percent=100), 10.0)
    assert task.state == "Exception"


def test_unknown_message_id_from_backend_still_renders_a_valid_message() -> None:
    store = TaskStore(Registries(), max_tasks=8, max_transcript=2)
    _, added = store.apply(
        event("u", message_id="Update.1.3.NoSuchMessage", message="custom text"), 0.0
    )
    assert added[-1]["Message"] == "custom text"
    assert added[-1]["MessageId"] == "Base.1.22.GeneralError"


def test_operation_event_rejects_bad_fields() -> None:
    with pytest.raises(ValueError):
        event("bad id/with slash")
    with pytest.raises(ValueError):
        event("x", percent=101)


async def test_settings_reject_no_accounts(tmp_path: Path) -> None:
    from fwrescue.errors import ConfigError
    from fwrescue.redfish.settings import RedfishServiceSettings

    with pytest.raises(ConfigError):
        RedfishServiceSettings(accounts=(), upload_dir=tmp_path)
