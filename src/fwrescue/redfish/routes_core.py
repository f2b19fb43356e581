"""Service root, OData documents, Systems, Managers, Chassis and the message registries."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from fwrescue import __version__
from fwrescue.errors import FwRescueError
from fwrescue.host.base import PowerState
from fwrescue.redfish.backend import RESET_TYPES
from fwrescue.redfish.http import SERVICE, apply_patch, json_response, not_found, read_json, require
from fwrescue.redfish.messages import RequestError

__all__ = ["METADATA_REFERENCES", "add_core_routes", "collection", "metadata_xml"]

V1 = "/redfish/v1"

#: CSDL files referenced by $metadata: file -> versioned namespace in use
METADATA_REFERENCES: dict[str, tuple[str, ...]] = {
    "ServiceRoot": ("ServiceRoot", "ServiceRoot.v1_20_0"),
    "ComputerSystemCollection": ("ComputerSystemCollection",),
    "ComputerSystem": ("ComputerSystem", "ComputerSystem.v1_27_0"),
    "ManagerCollection": ("ManagerCollection",),
    "Manager": ("Manager", "Manager.v1_24_0"),
    "ChassisCollection": ("ChassisCollection",),
    "Chassis": ("Chassis", "Chassis.v1_28_0"),
    "UpdateService": ("UpdateService", "UpdateService.v1_17_0"),
    "SoftwareInventoryCollection": ("SoftwareInventoryCollection",),
    "SoftwareInventory": ("SoftwareInventory", "SoftwareInventory.v1_13_0"),
    "TaskService": ("TaskService", "TaskService.v1_3_0"),
    "TaskCollection": ("TaskCollection",),
    "Task": ("Task", "Task.v1_7_4"),
    "SessionService": ("SessionService", "SessionService.v1_2_0"),
    "SessionCollection": ("SessionCollection",),
    "Session": ("Session", "Session.v1_8_0"),
    "AccountService": ("AccountService", "AccountService.v1_18_1"),
    "ManagerAccountCollection": ("ManagerAccountCollection",),
    "ManagerAccount": ("ManagerAccount", "ManagerAccount.v1_14_1"),
    "RoleCollection": ("RoleCollection",),
    "Role": ("Role", "Role.v1_3_3"),
    "EventService": ("EventService", "EventService.v1_12_0"),
    "EventDestinationCollection": ("EventDestinationCollection",),
    "EventDestination": ("EventDestination", "EventDestination.v1_16_0"),
    "Event": ("Event", "Event.v1_13_0"),
    "MessageRegistryFileCollection": ("MessageRegistryFileCollection",),
    "MessageRegistryFile": ("MessageRegistryFile", "MessageRegistryFile.v1_1_5"),
    "ActionInfo": ("ActionInfo", "ActionInfo.v1_5_0"),
    "Message": ("Message", "Message.v1_3_0"),
    "Resource": ("Resource", "Resource.v1_23_0"),
    "RedfishExtensions": ("RedfishExtensions.v1_0_0",),
}


def metadata_xml() -> str:
    """The ``$metadata`` EDMX: references to the DMTF CSDL files this service uses."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">',
    ]
    for file, namespaces in METADATA_REFERENCES.items():
        lines.append(f'  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/{file}_v1.xml">')
        for ns in namespaces:
            alias = ' Alias="Redfish"' if ns == "RedfishExtensions.v1_0_0" else ""
            lines.append(f'    <edmx:Include Namespace="{ns}"{alias}/>')
        lines.append("  </edmx:Reference>")
    lines += [
        "  <edmx:DataServices>",
        '    <Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="Service">',
        '      <EntityContainer Name="Service" Extends="ServiceRoot.v1_20_0.ServiceContainer"/>',
        "    </Schema>",
        "  </edmx:DataServices>",
        "</edmx:Edmx>",
    ]
    return "\n".join(lines) + "\n"


def collection(uri: str, odata_type: str, name: str, members: list[str]) -> dict[str, Any]:
    return {
        "@odata.id": uri,
        "@odata.type": f"#{odata_type}.{odata_type}",
        "Name": name,
        "Members@odata.count": len(members),
        "Members": [{"@odata.id": m} for m in members],
    }


def _status(health: str = "OK", state: str = "Enabled") -> dict[str, str]:
    return {"State": state, "Health": health}


def add_core_routes(app: web.Application) -> None:
    svc = app[SERVICE]
    metadata = metadata_xml()

    async def redfish(_: web.Request) -> web.Response:
        return json_response({"v1": f"{V1}/"})

    async def root(_: web.Request) -> web.Response:
        ident = svc.backend.identity()
        return json_response(
            {
                "@odata.id": f"{V1}/",
                "@odata.type": "#ServiceRoot.v1_20_0.ServiceRoot",
                "Id": "RootService",
                "Name": "fwrescue Redfish service",
                "RedfishVersion": "1.20.0",
                "UUID": svc.settings.service_uuid,
                "Vendor": "fwrescue",
                "Product": f"fwrescue agent ({ident.model})",
                "ProtocolFeaturesSupported": {
                    "ExpandQuery": {
                        "ExpandAll": False,
                        "Levels": False,
                        "Links": False,
                        "NoLinks": False,
                    },
                    "SelectQuery": False,
                    "FilterQuery": False,
                    "OnlyMemberQuery": False,
                    "ExcerptQuery": False,
                },
                "Systems": {"@odata.id": f"{V1}/Systems"},
                "Managers": {"@odata.id": f"{V1}/Managers"},
                "Chassis": {"@odata.id": f"{V1}/Chassis"},
                "SessionService": {"@odata.id": f"{V1}/SessionService"},
                "AccountService": {"@odata.id": f"{V1}/AccountService"},
                "UpdateService": {"@odata.id": f"{V1}/UpdateService"},
                "Tasks": {"@odata.id": f"{V1}/TaskService"},
                "EventService": {"@odata.id": f"{V1}/EventService"},
                "Registries": {"@odata.id": f"{V1}/Registries"},
                "Links": {"Sessions": {"@odata.id": f"{V1}/SessionService/Sessions"}},
            }
        )

    async def odata(_: web.Request) -> web.Response:
        names = [
            "Systems",
            "Managers",
            "Chassis",
            "SessionService",
            "AccountService",
            "UpdateService",
            "Tasks",
            "EventService",
            "Registries",
        ]
        targets = {"Tasks": "TaskService"}
        return web.json_response(
            {
                "@odata.context": f"{V1}/$metadata",
                "value": [
                    {"name": n, "kind": "Singleton", "url": f"{V1}/{targets.get(n, n)}"}
                    for n in names
                ],
            },
            headers={"OData-Version": "4.0"},
        )

    async def get_metadata(_: web.Request) -> web.Response:
        return web.Response(text=metadata, content_type="application/xml", charset="utf-8")

    # --- Systems ---------------------------------------------------------------------

    def system_id_or_404(request: web.Request) -> str:
        ident = svc.backend.identity()
        if request.match_info["sid"] != ident.system_id:
            raise not_found(request)
        return ident.system_id

    async def systems(_: web.Request) -> web.Response:
        sid = svc.backend.identity().system_id
        return json_response(
            collection(
                f"{V1}/Systems",
                "ComputerSystemCollection",
                "Computer System Collection",
                [f"{V1}/Systems/{sid}"],
            )
        )

    async def system_body() -> dict[str, Any]:
        ident = svc.backend.identity()
        sid = ident.system_id
        try:
            power = await svc.backend.power_state()
            power_s = "Off" if power is PowerState.OFF else "On"
            health = "OK"
        except FwRescueError:
            power_s, health = "Unknown", "Warning"
        bios = next((t for t in svc.backend.targets() if t.name.lower() == "bios"), None)
        uri = f"{V1}/Systems/{sid}"
        return {
            "@odata.id": uri,
            "@odata.type": "#ComputerSystem.v1_27_0.ComputerSystem",
            "Id": sid,
            "Name": ident.machine_name,
            "SystemType": "Physical",
            "Model": ident.model,
            "SerialNumber": ident.serial,
            "UUID": ident.uuid,
            "AssetTag": svc.asset_tag,
            "PowerState": power_s,
            "BiosVersion": bios.version if bios else "",
            "Status": _status(health),
            "Boot": {
                "BootSourceOverrideEnabled": "Disabled",
                "BootSourceOverrideTarget": "None",
            },
            "Links": {
                "Chassis": [{"@odata.id": f"{V1}/Chassis/{ident.chassis_id}"}],
                "ManagedBy": [{"@odata.id": f"{V1}/Managers/{ident.manager_id}"}],
            },
            "Actions": {
                "#ComputerSystem.Reset": {
                    "target": f"{uri}/Actions/ComputerSystem.Reset",
                    "ResetType@Redfish.AllowableValues": list(RESET_TYPES),
                }
            },
        }

    async def system(request: web.Request) -> web.Response:
        system_id_or_404(request)
        return json_response(await system_body())

    async def patch_system(request: web.Request) -> web.Response:
        system_id_or_404(request)
        require(request, "ConfigureComponents")
        patch = await read_json(request, svc.settings.max_json_body)
        current = await system_body()
        changes = apply_patch(
            request,
            current,
            patch,
            {"AssetTag": lambda v: isinstance(v, str) and len(v) <= 64},
        )
        svc.asset_tag = str(changes["AssetTag"])
        return json_response(await system_body())

    async def reset(request: web.Request) -> web.Response:
        system_id_or_404(request)
        require(request, "ConfigureComponents")
        body = await read_json(request, svc.settings.max_json_body)
        action = "ComputerSystem.Reset"
        for key in body:
            if key != "ResetType":
                raise RequestError(400, "Base.1.22.ActionParameterUnknown", action, key[:64])
        kind = body.get("ResetType")
        if kind is None:
            raise RequestError(400, "Base.1.22.ActionParameterMissing", action, "ResetType")
        if kind not in RESET_TYPES:
            raise RequestError(
                400, "Base.1.22.ActionParameterValueNotInList", str(kind)[:64], "ResetType", action
            )
        op_id = await svc.backend.reset(kind)
        if op_id is None:
            return web.Response(status=204)
        # The host needs a recovery first: answered now, followed through a Task.
        task = svc.tasks.ensure(op_id, "recovery", svc.clock())
        started = svc.registries.message("TaskEvent.1.0.TaskStarted", (task.id,))
        return json_response({"@Message.ExtendedInfo": [started]}, 202, {
            "Location": task.monitor_uri, "Retry-After": str(svc.settings.retry_after_s)})

    # --- Managers / Chassis -------------------------------------------------------------

    async def managers(_: web.Request) -> web.Response:
        mid = svc.backend.identity().manager_id
        return json_response(
            collection(
                f"{V1}/Managers",
                "ManagerCollection",
                "Manager Collection",
                [f"{V1}/Managers/{mid}"],
            )
        )

    async def manager(request: web.Request) -> web.Response:
        ident = svc.backend.identity()
        if request.match_info["mid"] != ident.manager_id:
            raise not_found(request)
        return json_response(
            {
                "@odata.id": f"{V1}/Managers/{ident.manager_id}",
                "@odata.type": "#Manager.v1_24_0.Manager",
                "Id": ident.manager_id,
                "Name": "fwrescue BMC agent",
                "ManagerType": "BMC",
                "FirmwareVersion": ident.manager_firmware_version or __version__,
                "Model": "fwrescue",
                "Status": _status(),
                "Links": {
                    "ManagerForServers": [{"@odata.id": f"{V1}/Systems/{ident.system_id}"}],
                    "ManagerForChassis": [{"@odata.id": f"{V1}/Chassis/{ident.chassis_id}"}],
                },
            }
        )

    async def chassis_coll(_: web.Request) -> web.Response:
        cid = svc.backend.identity().chassis_id
        return json_response(
            collection(
                f"{V1}/Chassis", "ChassisCollection", "Chassis Collection", [f"{V1}/Chassis/{cid}"]
            )
        )

    async def chassis(request: web.Request) -> web.Response:
        ident = svc.backend.identity()
        if request.match_info["cid"] != ident.chassis_id:
            raise not_found(request)
        return json_response(
            {
                "@odata.id": f"{V1}/Chassis/{ident.chassis_id}",
                "@odata.type": "#Chassis.v1_28_0.Chassis",
                "Id": ident.chassis_id,
                "Name": f"{ident.machine_name} chassis",
                "ChassisType": "RackMount",
                "Model": ident.model,
                "SerialNumber": ident.serial,
                "Status": _status(),
                "Links": {
                    "ComputerSystems": [{"@odata.id": f"{V1}/Systems/{ident.system_id}"}],
                    "ManagedBy": [{"@odata.id": f"{V1}/Managers/{ident.manager_id}"}],
                },
            }
        )

    # --- Registries ---------------------------------------------------------------------

    reg = svc.registries

    async def registries(_: web.Request) -> web.Response:
        return json_response(
            collection(
                f"{V1}/Registries",
                "MessageRegistryFileCollection",
                "Registry File Collection",
                [f"{V1}/Registries/{p}" for p in reg.prefixes],
            )
        )

    def prefix_or_404(request: web.Request) -> str:
        prefix = request.match_info["prefix"]
        if prefix not in reg.prefixes:
            raise not_found(request)
        return prefix

    async def registry_file(request: web.Request) -> web.Response:
        prefix = prefix_or_404(request)
        rid = reg.registry_id(prefix)
        return json_response(
            {
                "@odata.id": f"{V1}/Registries/{prefix}",
                "@odata.type": "#MessageRegistryFile.v1_1_5.MessageRegistryFile",
                "Id": prefix,
                "Name": f"{prefix} Message Registry File",
                "Languages": ["en"],
                "Registry": rid,
                "Location": [
                    {
                        "Language": "en",
                        "Uri": f"{V1}/Registries/{prefix}/{reg.file_name(prefix)}",
                        "PublicationUri": f"https://redfish.dmtf.org/registries/{reg.file_name(prefix)}",
                    }
                ],
            }
        )

    async def registry_json(request: web.Request) -> web.Response:
        prefix = prefix_or_404(request)
        if request.match_info["file"] != reg.file_name(prefix):
            raise not_found(request)
        return web.Response(body=reg.raw(prefix), content_type="application/json")

    r = app.router
    r.add_get("/redfish", redfish)
    r.add_get("/redfish/", redfish)
    r.add_get(V1, root)
    r.add_get(f"{V1}/", root)
    r.add_get(f"{V1}/odata", odata)
    r.add_get(f"{V1}/$metadata", get_metadata)
    r.add_get(f"{V1}/Systems", systems)
    r.add_get(f"{V1}/Systems/{{sid}}", system)
    r.add_patch(f"{V1}/Systems/{{sid}}", patch_system)
    r.add_post(f"{V1}/Systems/{{sid}}/Actions/ComputerSystem.Reset", reset)
    r.add_get(f"{V1}/Managers", managers)
    r.add_get(f"{V1}/Managers/{{mid}}", manager)
    r.add_get(f"{V1}/Chassis", chassis_coll)
    r.add_get(f"{V1}/Chassis/{{cid}}", chassis)
    r.add_get(f"{V1}/Registries", registries)
    r.add_get(f"{V1}/Registries/{{prefix}}", registry_file)
    r.add_get(f"{V1}/Registries/{{prefix}}/{{file}}", registry_json)
