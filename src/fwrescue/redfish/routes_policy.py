"""Fleet-policy delivery over Redfish: an Oem action on ``UpdateService`` (docs/console.md).

``POST /redfish/v1/UpdateService/Actions/Oem/Fwrescue.SetFleetPolicy`` with
``{"Policy": "<the signed policy document, as text>"}`` (privilege ``ConfigureComponents``):
200 with the policy now in force, or 400 ``Base.1.22.ActionParameterValueError`` whose
message says why the agent refused it and whose ``Oem.Fwrescue.Reason`` is the stable code
(``unsigned``, ``unknown-key``, ``not-newer``, ``unknown-board``, ``unknown-target`` …);
a refused policy changes nothing.

``GET /redfish/v1/UpdateService/Oem/Fwrescue/FleetPolicy`` (``Login``): the policy version
in force and, per target, baseline, floor and the last baseline update's outcome.

The routes exist only when the backend implements :class:`FleetPolicyBackend`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from aiohttp import web

from fwrescue.redfish.http import SERVICE, json_response, read_json, require
from fwrescue.redfish.messages import RequestError, error_body
from fwrescue.trust.policy import MAX_POLICY_BYTES, PolicyError

__all__ = ["FLEET_POLICY_URI", "SET_POLICY_URI", "FleetPolicyBackend", "add_policy_routes",
           "with_policy_links"]

US = "/redfish/v1/UpdateService"
SET_POLICY_URI = f"{US}/Actions/Oem/Fwrescue.SetFleetPolicy"
FLEET_POLICY_URI = f"{US}/Oem/Fwrescue/FleetPolicy"


@runtime_checkable
class FleetPolicyBackend(Protocol):
    def apply_fleet_policy(self, raw: bytes) -> dict[str, Any]:
        """Verify and enforce ``raw``; raise ``PolicyError`` (nothing changed) when refused."""
        ...

    def fleet_policy(self) -> dict[str, Any]:
        """The policy in force, as :data:`FLEET_POLICY_URI` shows it."""
        ...


def with_policy_links(backend: object, body: dict[str, Any]) -> dict[str, Any]:
    """``UpdateService`` with the Oem action advertised (when the backend supports it)."""
    if not isinstance(backend, FleetPolicyBackend):
        return body
    actions = dict(body.get("Actions", {}))
    actions["Oem"] = {"#Fwrescue.SetFleetPolicy": {"target": SET_POLICY_URI}}
    # (the FleetPolicy resource is not linked: it has no DMTF schema a validator could use)
    return {**body, "Actions": actions}


def add_policy_routes(app: web.Application, backend: FleetPolicyBackend) -> None:
    svc = app[SERVICE]

    async def set_policy(request: web.Request) -> web.Response:
        require(request, "ConfigureComponents")
        body = await read_json(request, svc.settings.max_json_body)
        text = body.get("Policy")
        if set(body) != {"Policy"} or not isinstance(text, str):
            raise RequestError(400, "Base.1.22.ActionParameterMissing",
                               "Fwrescue.SetFleetPolicy", "Policy")
        raw = text.encode("utf-8")
        if len(raw) > MAX_POLICY_BYTES:
            raise RequestError(413, "Base.1.22.PayloadTooLarge")
        try:
            state = backend.apply_fleet_policy(raw)
        except PolicyError as e:
            err = error_body(svc.registries, RequestError(
                400, "Base.1.22.ActionParameterValueError", "Policy",
                "Fwrescue.SetFleetPolicy"))
            err["error"]["message"] = e.message
            err["error"]["@Message.ExtendedInfo"][0]["Oem"] = {
                "Fwrescue": {"Reason": e.reason, "Detail": e.message}}
            return web.json_response(err, status=400)
        return json_response({"@odata.id": FLEET_POLICY_URI, **state})

    async def get_policy(request: web.Request) -> web.Response:
        require(request, "Login")
        return json_response({"@odata.id": FLEET_POLICY_URI, **backend.fleet_policy()})

    app.router.add_post(SET_POLICY_URI, set_policy)
    app.router.add_get(FLEET_POLICY_URI, get_policy)
