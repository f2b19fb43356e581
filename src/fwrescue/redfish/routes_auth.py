"""SessionService (login/logout) and AccountService (accounts and roles)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from fwrescue.redfish.auth import ROLE_PRIVILEGES, Account, Session
from fwrescue.redfish.http import (
    SERVICE,
    apply_patch,
    current_principal,
    found,
    json_response,
    not_found,
    read_json,
    require,
)
from fwrescue.redfish.messages import RequestError
from fwrescue.redfish.routes_core import collection
from fwrescue.redfish.settings import ROLES

__all__ = ["add_auth_routes"]

V1 = "/redfish/v1"
SS = f"{V1}/SessionService"
AS = f"{V1}/AccountService"


def _session_json(s: Session) -> dict[str, Any]:
    return {
        "@odata.id": f"{SS}/Sessions/{s.id}",
        "@odata.type": "#Session.v1_8_0.Session",
        "Id": s.id,
        "Name": f"Session {s.id}",
        "UserName": s.username,
        "SessionType": "Redfish",
    }


def _account_json(a: Account) -> dict[str, Any]:
    return {
        "@odata.id": f"{AS}/Accounts/{a.id}",
        "@odata.type": "#ManagerAccount.v1_14_1.ManagerAccount",
        "Id": a.id,
        "Name": f"User account {a.username}",
        "UserName": a.username,
        "RoleId": a.role,
        "Enabled": a.enabled,
        "Locked": False,
        "Password": None,
        "AccountTypes": ["Redfish"],
        "Links": {"Role": {"@odata.id": f"{AS}/Roles/{a.role}"}},
    }


def _type_error(value: object, prop: str) -> RequestError:
    return RequestError(400, "Base.1.22.PropertyValueTypeError", json.dumps(value)[:128], prop)


def add_auth_routes(app: web.Application) -> None:
    svc = app[SERVICE]
    auth = svc.auth

    async def session_service(_: web.Request) -> web.Response:
        return json_response(_session_service_body())

    def _session_service_body() -> dict[str, Any]:
        return {
            "@odata.id": SS,
            "@odata.type": "#SessionService.v1_2_0.SessionService",
            "Id": "SessionService",
            "Name": "Session Service",
            "ServiceEnabled": True,
            "SessionTimeout": auth.session_timeout,
            "Status": {"State": "Enabled", "Health": "OK"},
            "Sessions": {"@odata.id": f"{SS}/Sessions"},
        }

    async def patch_session_service(request: web.Request) -> web.Response:
        require(request, "ConfigureManager")
        patch = await read_json(request, svc.settings.max_json_body)
        changes = apply_patch(
            request,
            _session_service_body(),
            patch,
            {"SessionTimeout": lambda v: type(v) is int and 30 <= v <= 86400},
        )
        auth.session_timeout = int(changes["SessionTimeout"])
        return json_response(_session_service_body())

    async def sessions(_: web.Request) -> web.Response:
        members = [f"{SS}/Sessions/{s.id}" for s in auth.sessions(svc.clock())]
        return json_response(
            collection(f"{SS}/Sessions", "SessionCollection", "Session Collection", members)
        )

    async def login(request: web.Request) -> web.Response:
        body = await read_json(request, svc.settings.max_json_body)
        for key in body:
            if key not in ("UserName", "Password"):
                raise RequestError(400, "Base.1.22.PropertyUnknown", key[:128])
        user, password = body.get("UserName"), body.get("Password")
        for prop, value in (("UserName", user), ("Password", password)):
            if value is None:
                raise RequestError(400, "Base.1.22.PropertyMissing", prop)
            if not isinstance(value, str):
                raise _type_error(value if prop == "UserName" else "****", prop)
        assert isinstance(user, str) and isinstance(password, str)
        session = auth.login(user, password, svc.clock())
        uri = f"{SS}/Sessions/{session.id}"
        return json_response(
            _session_json(session), 201, {"Location": uri, "X-Auth-Token": session.token}
        )

    def session_or_404(request: web.Request) -> Session:
        return found(auth.session(request.match_info["id"], svc.clock()), request)

    async def get_session(request: web.Request) -> web.Response:
        s = session_or_404(request)
        principal = current_principal(request)
        if s.username != principal.username and "ConfigureManager" not in principal.privileges:
            raise RequestError(403, "Base.1.22.InsufficientPrivilege")
        return json_response(_session_json(s))

    async def logout(request: web.Request) -> web.Response:
        s = session_or_404(request)
        principal = current_principal(request)
        if s.username != principal.username:
            require(request, "ConfigureManager")
        auth.logout(s.id)
        return web.Response(status=204)

    # --- AccountService ---------------------------------------------------------------

    async def account_service(_: web.Request) -> web.Response:
        return json_response(
            {
                "@odata.id": AS,
                "@odata.type": "#AccountService.v1_18_1.AccountService",
                "Id": "AccountService",
                "Name": "Account Service",
                "ServiceEnabled": True,
                "MinPasswordLength": 8,
                "MaxPasswordLength": 128,
                "LocalAccountAuth": "Enabled",
                "Status": {"State": "Enabled", "Health": "OK"},
                "Accounts": {"@odata.id": f"{AS}/Accounts"},
                "Roles": {"@odata.id": f"{AS}/Roles"},
            }
        )

    async def accounts(_: web.Request) -> web.Response:
        members = [f"{AS}/Accounts/{a.id}" for a in auth.accounts()]
        return json_response(
            collection(f"{AS}/Accounts", "ManagerAccountCollection", "Accounts Collection", members)
        )

    async def create_account(request: web.Request) -> web.Response:
        require(request, "ConfigureUsers")
        body = await read_json(request, svc.settings.max_json_body)
        allowed = {"UserName": str, "Password": str, "RoleId": str, "Enabled": bool}
        for key, value in body.items():
            if key not in allowed:
                raise RequestError(400, "Base.1.22.PropertyUnknown", key[:128])
            if not isinstance(value, allowed[key]):
                raise _type_error(value, key)
        for key in ("UserName", "Password", "RoleId"):
            if key not in body:
                raise RequestError(400, "Base.1.22.PropertyMissing", key)
        account = auth.create_account(
            body["UserName"], body["Password"], body["RoleId"], body.get("Enabled", True)
        )
        uri = f"{AS}/Accounts/{account.id}"
        return json_response(_account_json(account), 201, {"Location": uri})

    def account_or_404(request: web.Request) -> Account:
        return found(auth.account(request.match_info["id"]), request)

    async def get_account(request: web.Request) -> web.Response:
        a = account_or_404(request)
        principal = current_principal(request)
        if a.username != principal.username and "ConfigureUsers" not in principal.privileges:
            raise RequestError(403, "Base.1.22.InsufficientPrivilege")
        return json_response(_account_json(a))

    async def patch_account(request: web.Request) -> web.Response:
        account_or_404(request)  # 404 before reading a body for a missing account
        patch = await read_json(request, svc.settings.max_json_body)
        # Read the account only now: from here to the write nothing awaits, so the If-Match
        # check and the update are atomic on the event loop (concurrent conditional PATCHes
        # with one ETag: exactly one wins, the others get 412).
        a = account_or_404(request)
        principal = current_principal(request)
        own = a.username == principal.username
        if not own or set(patch) - {"Password"}:
            require(request, "ConfigureUsers")
        else:
            require(request, "ConfigureSelf")
        changes = apply_patch(
            request,
            _account_json(a),
            patch,
            {
                "Password": lambda v: isinstance(v, str),
                "RoleId": lambda v: isinstance(v, str),
                "Enabled": lambda v: isinstance(v, bool),
            },
        )
        updated = auth.update_account(
            a.username,
            password=changes.get("Password"),
            role=changes.get("RoleId"),
            enabled=changes.get("Enabled"),
        )
        return json_response(_account_json(updated))

    async def delete_account(request: web.Request) -> web.Response:
        a = account_or_404(request)
        require(request, "ConfigureUsers")
        auth.delete_account(a.username)
        return web.Response(status=204)

    async def roles(_: web.Request) -> web.Response:
        return json_response(
            collection(
                f"{AS}/Roles",
                "RoleCollection",
                "Roles Collection",
                [f"{AS}/Roles/{r}" for r in ROLES],
            )
        )

    async def role(request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        if rid not in ROLES:
            raise not_found(request)
        return json_response(
            {
                "@odata.id": f"{AS}/Roles/{rid}",
                "@odata.type": "#Role.v1_3_3.Role",
                "Id": rid,
                "Name": f"{rid} role",
                "RoleId": rid,
                "IsPredefined": True,
                "AssignedPrivileges": sorted(ROLE_PRIVILEGES[rid]),
            }
        )

    r = app.router
    r.add_get(SS, session_service)
    r.add_patch(SS, patch_session_service)
    r.add_get(f"{SS}/Sessions", sessions)
    r.add_post(f"{SS}/Sessions", login)
    r.add_post(f"{SS}/Sessions/", login)
    r.add_post(f"{SS}/Sessions/Members", login)
    r.add_get(f"{SS}/Sessions/{{id}}", get_session)
    r.add_delete(f"{SS}/Sessions/{{id}}", logout)
    r.add_get(AS, account_service)
    r.add_get(f"{AS}/Accounts", accounts)
    r.add_post(f"{AS}/Accounts", create_account)
    r.add_post(f"{AS}/Accounts/Members", create_account)
    r.add_get(f"{AS}/Accounts/{{id}}", get_account)
    r.add_patch(f"{AS}/Accounts/{{id}}", patch_account)
    r.add_delete(f"{AS}/Accounts/{{id}}", delete_account)
    r.add_get(f"{AS}/Roles", roles)
    r.add_get(f"{AS}/Roles/{{id}}", role)
