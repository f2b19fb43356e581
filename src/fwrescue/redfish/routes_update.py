"""UpdateService (SimpleUpdate, multipart push), Firmware/Software inventory, TaskService.

Both update flows stream the package to ``upload_dir`` (bounded by ``MaxImageSizeBytes``),
then call ``backend.start_update``. A package the backend refuses synchronously gets a 400
with the error's MessageId and no Task; an accepted one answers 202 with ``Location`` set
to the Task's monitor, which answers 202 + ``Retry-After`` while running and the Task (200)
once it finished.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from aiohttp import web

from fwrescue.errors import FwRescueError
from fwrescue.redfish.backend import FleetNotices, ImageInfo, TargetInfo
from fwrescue.redfish.http import (
    SERVICE,
    Service,
    found,
    json_response,
    not_found,
    read_json,
    require,
)
from fwrescue.redfish.messages import RequestError, error_body
from fwrescue.redfish.routes_core import collection
from fwrescue.redfish.routes_policy import with_policy_links
from fwrescue.redfish.tasks import MONITORS_URI, TASKS_URI, task_json
from fwrescue.redfish.upload import (
    TRANSFER_PROTOCOLS,
    UpdateRequest,
    check_image_uri,
    download_image,
    parse_update_parameters,
    receive_multipart,
)

__all__ = ["MULTIPART_URI", "add_update_routes"]

V1 = "/redfish/v1"
US = f"{V1}/UpdateService"
MULTIPART_URI = f"{US}/MultipartUpload"
# A multipart body is the image plus small JSON parts and boundaries.
_MULTIPART_OVERHEAD = 64 * 1024


def _firmware_json(t: TargetInfo) -> dict[str, Any]:
    return {
        "@odata.id": f"{US}/FirmwareInventory/{t.name}",
        "@odata.type": "#SoftwareInventory.v1_13_0.SoftwareInventory",
        "Id": t.name,
        "Name": f"{t.name} firmware",
        "Version": t.version,
        "SoftwareId": t.name,
        "LowestSupportedVersion": t.lowest_supported_version,
        "Updateable": t.updateable,
        "Status": {"State": t.state, "Health": t.health},
        "Oem": {"Fwrescue": {"SecurityVersion": t.security_version}},
    }


def _image_id(i: ImageInfo) -> str:
    return f"{i.target}-{i.sha256[:16]}"


def _software_json(i: ImageInfo) -> dict[str, Any]:
    return {
        "@odata.id": f"{US}/SoftwareInventory/{_image_id(i)}",
        "@odata.type": "#SoftwareInventory.v1_13_0.SoftwareInventory",
        "Id": _image_id(i),
        "Name": f"{i.target} image {i.version} (donatable)",
        "Version": i.version,
        "SoftwareId": i.target,
        "Updateable": False,
        "Status": {"State": "Enabled", "Health": "OK"},
        "Oem": {
            "Fwrescue": {
                "Sha256": i.sha256,
                "SizeBytes": i.size,
                "MachineNames": list(i.machine_names),
            }
        },
    }


async def _start(
    svc: Service, request: web.Request, package: Path, upd: UpdateRequest, image: str
) -> web.Response:
    """Hand a saved package to the backend; answer 202 + Location, or the error (400…)."""
    known = {t.name: t for t in svc.backend.targets()}
    try:
        for name in upd.targets or []:
            t = known.get(name)
            if t is None or not t.updateable:
                raise RequestError(
                    400,
                    "Base.1.22.ActionParameterValueNotInList",
                    name,
                    "Targets",
                    "UpdateService.SimpleUpdate",
                )
        op_id = await svc.backend.start_update(package, upd.targets, upd.force, upd.apply_time)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            package.unlink()
        if isinstance(e, FwRescueError) and not isinstance(e, RequestError):
            where = ",".join(upd.targets or []) or "all targets"
            return json_response(error_body(svc.registries, e, (image, where)), e.http_status)
        raise
    target = upd.targets[0] if upd.targets and len(upd.targets) == 1 else None
    task = svc.tasks.ensure(op_id, "update", svc.clock(), target)
    headers = {"Location": task.monitor_uri, "Retry-After": str(svc.settings.retry_after_s)}
    # The body is a message, not the Task: clients such as sushy poll a body's @odata.id
    # instead of the Location header, and the Task URI answers 200 even while running.
    started = svc.registries.message("TaskEvent.1.0.TaskStarted", (task.id,))
    return json_response({"@Message.ExtendedInfo": [started]}, 202, headers)


def add_update_routes(app: web.Application) -> None:
    svc = app[SERVICE]
    limit = svc.settings.max_image_size

    def withheld_oem() -> dict[str, Any]:
        """The fleet circuit breaker's withheld images, under ``Oem.Fwrescue``."""
        backend = svc.backend
        images = backend.withheld_images() if isinstance(backend, FleetNotices) else []
        return {"Fwrescue": {"WithheldImages": [
            {"ManifestDigest": w.manifest_digest, "Target": w.target,
             "BootFailures": w.failures, "Recipients": list(w.recipients)}
            for w in images]}}

    async def update_service(_: web.Request) -> web.Response:
        return json_response(with_policy_links(svc.backend, {
                "Oem": withheld_oem(),
                "@odata.id": US,
                "@odata.type": "#UpdateService.v1_17_0.UpdateService",
                "Id": "UpdateService",
                "Name": "Update Service",
                "ServiceEnabled": True,
                "MaxImageSizeBytes": limit,
                "MultipartHttpPushUri": MULTIPART_URI,
                "Status": {"State": "Enabled", "Health": "OK"},
                "FirmwareInventory": {"@odata.id": f"{US}/FirmwareInventory"},
                "SoftwareInventory": {"@odata.id": f"{US}/SoftwareInventory"},
                "Actions": {
                    "#UpdateService.SimpleUpdate": {
                        "target": f"{US}/Actions/UpdateService.SimpleUpdate",
                        "TransferProtocol@Redfish.AllowableValues": list(TRANSFER_PROTOCOLS),
                    }
                },
            })
        )

    async def firmware(_: web.Request) -> web.Response:
        members = [f"{US}/FirmwareInventory/{t.name}" for t in svc.backend.targets()]
        return json_response(
            collection(
                f"{US}/FirmwareInventory",
                "SoftwareInventoryCollection",
                "Firmware Collection",
                members,
            )
        )

    async def firmware_item(request: web.Request) -> web.Response:
        name = request.match_info["id"]
        for t in svc.backend.targets():
            if t.name == name:
                return json_response(_firmware_json(t))
        raise not_found(request)

    async def software(_: web.Request) -> web.Response:
        members = [f"{US}/SoftwareInventory/{_image_id(i)}" for i in svc.backend.donatable()]
        return json_response(
            collection(
                f"{US}/SoftwareInventory",
                "SoftwareInventoryCollection",
                "Donatable Software Collection",
                members,
            )
        )

    async def software_item(request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        for i in svc.backend.donatable():
            if _image_id(i) == sid:
                return json_response(_software_json(i))
        raise not_found(request)

    async def simple_update(request: web.Request) -> web.Response:
        require(request, "ConfigureComponents")
        body = await read_json(request, svc.settings.max_json_body)
        action = "UpdateService.SimpleUpdate"
        upd, rest = parse_update_parameters(body, action=action, allow_image_uri=True)
        uri = check_image_uri(rest.get("ImageURI"), rest.get("TransferProtocol"))
        assert svc.http is not None, "client session is opened at startup"
        package = await download_image(
            svc.http,
            uri,
            svc.settings.upload_dir,
            limit,
            total_timeout=svc.settings.download_timeout_s,
            stall_timeout=svc.settings.download_stall_s,
        )
        image = uri.rsplit("/", 1)[-1][:64] or "image"
        return await _start(svc, request, package, upd, image)

    async def multipart_push(request: web.Request) -> web.Response:
        require(request, "ConfigureComponents")
        if request.content_length is not None and (
            request.content_length > limit + _MULTIPART_OVERHEAD
        ):
            raise RequestError(413, "Base.1.22.PayloadTooLarge")
        ctype = request.headers.get("Content-Type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise RequestError(415, "Base.1.22.HeaderInvalid", "Content-Type")
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError) as e:
            raise RequestError(400, "Base.1.22.MalformedJSON") from e
        upd, package = await receive_multipart(reader, svc.settings.upload_dir, limit)
        return await _start(svc, request, package, upd, "UpdateFile")

    # --- TaskService ----------------------------------------------------------------

    async def task_service(_: web.Request) -> web.Response:
        return json_response(
            {
                "@odata.id": f"{V1}/TaskService",
                "@odata.type": "#TaskService.v1_3_0.TaskService",
                "Id": "TaskService",
                "Name": "Task Service",
                "ServiceEnabled": True,
                "CompletedTaskOverWritePolicy": "Oldest",
                "LifeCycleEventOnTaskStateChange": True,
                "Status": {"State": "Enabled", "Health": "OK"},
                "Tasks": {"@odata.id": TASKS_URI},
            }
        )

    async def tasks(_: web.Request) -> web.Response:
        return json_response(
            collection(
                TASKS_URI, "TaskCollection", "Task Collection", [t.uri for t in svc.tasks.all()]
            )
        )

    def task_or_404(request: web.Request) -> Any:
        return found(svc.tasks.get(request.match_info["id"]), request)

    async def task(request: web.Request) -> web.Response:
        return json_response(task_json(task_or_404(request)))

    async def monitor(request: web.Request) -> web.Response:
        t = task_or_404(request)
        if t.finished:
            return json_response(task_json(t))
        return json_response(
            task_json(t),
            202,
            {"Location": t.monitor_uri, "Retry-After": str(svc.settings.retry_after_s)},
        )

    async def transcript(request: web.Request) -> web.Response:
        t = task_or_404(request)
        return web.json_response(
            {
                "TaskId": t.id,
                "Kind": t.kind,
                "Entries": t.transcript,
                "DroppedEntries": t.dropped_transcript,
            }
        )

    r = app.router
    r.add_get(US, update_service)
    r.add_get(f"{US}/FirmwareInventory", firmware)
    r.add_get(f"{US}/FirmwareInventory/{{id}}", firmware_item)
    r.add_get(f"{US}/SoftwareInventory", software)
    r.add_get(f"{US}/SoftwareInventory/{{id}}", software_item)
    r.add_post(f"{US}/Actions/UpdateService.SimpleUpdate", simple_update)
    r.add_post(MULTIPART_URI, multipart_push)
    r.add_get(f"{V1}/TaskService", task_service)
    r.add_get(TASKS_URI, tasks)
    r.add_get(f"{TASKS_URI}/{{id}}", task)
    r.add_get(f"{TASKS_URI}/{{id}}/Transcript", transcript)
    r.add_get(f"{MONITORS_URI}/{{id}}", monitor)
