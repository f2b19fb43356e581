"""Update flows: multipart push and SimpleUpdate, trust refusals, tasks and monitors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import ADMIN, OPERATOR
from tests.fakes.redfish_backend import FakeBackend, make_package

Client = TestClient[web.Request, web.Application]
PUSH = "/redfish/v1/UpdateService/MultipartUpload"
SIMPLE = "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate"


def auth(user_pw: tuple[str, str] = ADMIN) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(*user_pw)}


def multipart(params: dict[str, Any], payload: bytes | None) -> aiohttp.MultipartWriter:
    writer = aiohttp.MultipartWriter("form-data")
    part = writer.append_json(params)
    part.set_content_disposition("form-data", name="UpdateParameters")
    if payload is not None:
        part = writer.append(payload, {"Content-Type": "application/octet-stream"})
        part.set_content_disposition("form-data", name="UpdateFile", filename="bios.pkg")
    return writer


async def wait_done(client: Client, monitor: str) -> dict[str, Any]:
    for _ in range(200):
        resp = await client.get(monitor, headers=auth())
        if resp.status != 202:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
            return body
        assert resp.headers["Retry-After"] == "1"
        await asyncio.sleep(0.01)
    raise AssertionError("task never finished")


def uploads(tmp_path: Path) -> list[Path]:
    d = tmp_path / "uploads"
    return list(d.iterdir()) if d.exists() else []


async def bios(client: Client) -> dict[str, Any]:
    resp = await client.get("/redfish/v1/UpdateService/FirmwareInventory/bios", headers=auth())
    body: dict[str, Any] = await resp.json()
    return body


async def test_multipart_push_runs_a_task_to_completion_and_new_version_shows(
    client: Client, backend: FakeBackend, tmp_path: Path
) -> None:
    pkg = make_package(tmp_path / "p.pkg", version="2.0.0", svn=2).read_bytes()
    backend.gate = asyncio.Event()
    resp = await client.post(PUSH, data=multipart({"Targets": ["bios"]}, pkg), headers=auth())
    assert resp.status == 202
    monitor = resp.headers["Location"]
    running = await client.get(monitor, headers=auth())
    assert running.status == 202 and (await running.json())["TaskState"] == "Running"
    backend.gate.set()
    task = await wait_done(client, monitor)
    assert (task["TaskState"], task["TaskStatus"], task["PercentComplete"]) == (
        "Completed",
        "OK",
        100,
    )
    ids = [m["MessageId"] for m in task["Messages"]]
    assert ids[0] == "TaskEvent.1.0.TaskStarted" and ids[-1] == "TaskEvent.1.0.TaskCompletedOK"
    assert "Update.1.3.UpdateSuccessful" in ids
    inv = await bios(client)
    assert inv["Version"] == "2.0.0" and inv["LowestSupportedVersion"] == "2.0.0"
    assert backend.received[0][1:] == (["bios"], False, "Immediate")
    sysbody = await (await client.get("/redfish/v1/Systems/system", headers=auth())).json()
    assert sysbody["BiosVersion"] == "2.0.0"


async def test_badly_signed_package_is_400_with_no_task_and_no_file_left(
    client: Client, tmp_path: Path
) -> None:
    pkg = make_package(tmp_path / "p.pkg", sig="forged").read_bytes()
    resp = await client.post(PUSH, data=multipart({}, pkg), headers=auth())
    body = await resp.json()
    assert resp.status == 400
    assert body["error"]["code"] == "Update.1.3.VerificationFailed"
    assert "trusted key" in body["error"]["message"]
    tasks = await (await client.get("/redfish/v1/TaskService/Tasks", headers=auth())).json()
    assert tasks["Members@odata.count"] == 0
    assert uploads(tmp_path) == []
    assert (await bios(client))["Version"] == "1.0.0"


async def test_backend_rollback_error_is_400_version_too_low_even_with_force(
    client: Client, tmp_path: Path
) -> None:
    pkg = make_package(tmp_path / "p.pkg", version="0.9.0", svn=0).read_bytes()
    resp = await client.post(PUSH, data=multipart({"ForceUpdate": True}, pkg), headers=auth())
    body = await resp.json()
    assert resp.status == 400
    assert body["error"]["code"] == "Update.1.3.UpdateSkippedVersionTooLow"
    assert (await bios(client))["Version"] == "1.0.0"


async def test_force_update_parameter_reaches_the_backend(
    client: Client, tmp_path: Path
) -> None:
    pkg = make_package(tmp_path / "p.pkg", version="1.0.0", svn=1).read_bytes()
    refused = await client.post(PUSH, data=multipart({}, pkg), headers=auth())
    assert refused.status == 400
    forced = await client.post(PUSH, data=multipart({"ForceUpdate": True}, pkg), headers=auth())
    assert forced.status == 202
    task = await wait_done(client, forced.headers["Location"])
    assert task["TaskState"] == "Completed"


async def test_update_failing_later_ends_task_in_exception(client: Client, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "p.pkg", fail="late").read_bytes()
    resp = await client.post(PUSH, data=multipart({}, pkg), headers=auth(OPERATOR))
    assert resp.status == 202
    task = await wait_done(client, resp.headers["Location"])
    assert (task["TaskState"], task["TaskStatus"]) == ("Exception", "Critical")
    assert task["Messages"][-1]["MessageId"] == "TaskEvent.1.0.TaskAborted"
    assert (await bios(client))["Version"] == "1.0.0"


async def test_oversize_push_is_413_and_leaves_nothing(
    client: Client, backend: FakeBackend, tmp_path: Path
) -> None:
    pkg = make_package(tmp_path / "p.pkg", payload=b"\0" * (200 * 1024)).read_bytes()
    resp = await client.post(PUSH, data=multipart({}, pkg), headers=auth())
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "Base.1.22.PayloadTooLarge"
    assert uploads(tmp_path) == [] and backend.received == []
    # the service is still up and serving
    assert (await client.get("/redfish/v1/UpdateService", headers=auth())).status == 200


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"Targets": "bios"}, "Base.1.22.ActionParameterValueTypeError"),
        ({"Targets": ["nic9"]}, "Base.1.22.ActionParameterValueNotInList"),
        ({"Targets": ["cpld"]}, "Base.1.22.ActionParameterValueNotInList"),
        ({"@Redfish.OperationApplyTime": "Never"}, "Base.1.22.ActionParameterValueNotInList"),
        ({"Bogus": 1}, "Base.1.22.ActionParameterUnknown"),
    ],
)
async def test_bad_update_parameters_are_rejected_before_the_backend(
    client: Client, backend: FakeBackend, tmp_path: Path, params: dict[str, Any], code: str
) -> None:
    pkg = make_package(tmp_path / "p.pkg").read_bytes()
    resp = await client.post(PUSH, data=multipart(params, pkg), headers=auth())
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == code
    assert uploads(tmp_path) == [] and backend.received == []


async def test_push_without_update_file_is_400(client: Client) -> None:
    resp = await client.post(PUSH, data=multipart({}, None), headers=auth())
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "Base.1.22.ActionParameterMissing"


@pytest.fixture
async def image_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    files = tmp_path / "www"
    files.mkdir()

    async def serve(request: web.Request) -> web.StreamResponse:
        path = files / request.match_info["name"]
        if not path.exists():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/{name}", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/")).rstrip("/"), files
    finally:
        await server.close()


async def test_simple_update_downloads_image_uri_and_completes(
    client: Client, image_server: tuple[str, Path]
) -> None:
    base, files = image_server
    make_package(files / "bios.pkg", version="3.1.0", svn=3)
    resp = await client.post(
        SIMPLE, json={"ImageURI": f"{base}/bios.pkg", "TransferProtocol": "HTTP"}, headers=auth()
    )
    assert resp.status == 202, await resp.text()
    task = await wait_done(client, resp.headers["Location"])
    assert task["TaskState"] == "Completed"
    assert (await bios(client))["Version"] == "3.1.0"


async def test_simple_update_oversize_image_is_413_and_leaves_nothing(
    client: Client, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, files = image_server
    make_package(files / "big.pkg", payload=b"\0" * (200 * 1024))
    resp = await client.post(SIMPLE, json={"ImageURI": f"{base}/big.pkg"}, headers=auth())
    assert resp.status == 413
    assert uploads(tmp_path) == []


async def test_simple_update_missing_image_is_transfer_failure(
    client: Client, image_server: tuple[str, Path]
) -> None:
    base, _ = image_server
    resp = await client.post(SIMPLE, json={"ImageURI": f"{base}/nope.pkg"}, headers=auth())
    body = await resp.json()
    assert resp.status == 502 and body["error"]["code"] == "Update.1.3.TransferFailed"


@pytest.mark.parametrize(
    "body",
    [
        {"ImageURI": "ftp://127.0.0.1/x.pkg"},
        {"ImageURI": "file:///etc/passwd"},
        {"ImageURI": "http://127.0.0.1/x.pkg", "TransferProtocol": "TFTP"},
        {"ImageURI": 5},
        {},
    ],
)
async def test_simple_update_refuses_non_http_image_uris(
    client: Client, body: dict[str, Any]
) -> None:
    resp = await client.post(
        SIMPLE, data=json.dumps(body), headers={**auth(), "Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"].startswith("Base.1.22.ActionParameter")


async def test_update_service_advertises_limits_and_protocols(client: Client) -> None:
    us = await (await client.get("/redfish/v1/UpdateService", headers=auth())).json()
    assert us["MaxImageSizeBytes"] == 64 * 1024
    assert us["MultipartHttpPushUri"] == PUSH
    action = us["Actions"]["#UpdateService.SimpleUpdate"]
    assert action["TransferProtocol@Redfish.AllowableValues"] == ["HTTP", "HTTPS"]
    sw = await (
        await client.get("/redfish/v1/UpdateService/SoftwareInventory", headers=auth())
    ).json()
    assert sw["Members@odata.count"] == 1
