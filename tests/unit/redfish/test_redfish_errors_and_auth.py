"""Bad requests get the right Redfish error, change nothing, and the service keeps running."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import ADMIN, OPERATOR, READER
from tests.fakes.redfish_backend import FakeBackend

Client = TestClient[web.Request, web.Application]


def basic(user_pw: tuple[str, str], **extra: str) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(*user_pw), **extra}


async def error_of(resp: aiohttp.ClientResponse) -> tuple[int, str, dict[str, Any]]:
    body = await resp.json()
    err = body["error"]
    assert err["code"] == err["@Message.ExtendedInfo"][0]["MessageId"]
    return resp.status, err["code"], err


async def test_service_root_is_public_but_resources_need_credentials(client: Client) -> None:
    root = await client.get("/redfish/v1/")
    assert root.status == 200
    assert (await root.json())["Links"]["Sessions"]["@odata.id"].endswith("/Sessions")
    resp = await client.get("/redfish/v1/Systems")
    status, code, _ = await error_of(resp)
    assert (status, code) == (401, "Base.1.22.NoValidSession")
    assert resp.headers["WWW-Authenticate"].startswith("Basic")


async def test_wrong_password_is_401_even_with_basic_auth(client: Client) -> None:
    resp = await client.get("/redfish/v1/Systems", headers=basic(("admin", "wrong-pw!")))
    assert resp.status == 401


async def test_unauthenticated_reset_is_refused_and_host_untouched(
    client: Client, backend: FakeBackend
) -> None:
    resp = await client.post(
        "/redfish/v1/Systems/system/Actions/ComputerSystem.Reset", json={"ResetType": "ForceOff"}
    )
    assert resp.status == 401
    assert backend.resets == []


async def test_readonly_account_cannot_reset_or_update(
    client: Client, backend: FakeBackend
) -> None:
    resp = await client.post(
        "/redfish/v1/Systems/system/Actions/ComputerSystem.Reset",
        json={"ResetType": "ForceOff"},
        headers=basic(READER),
    )
    assert (await error_of(resp))[:2] == (403, "Base.1.22.InsufficientPrivilege")
    resp = await client.post(
        "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate",
        json={"ImageURI": "http://127.0.0.1:1/x.pkg"},
        headers=basic(READER),
    )
    assert (await error_of(resp))[:2] == (403, "Base.1.22.InsufficientPrivilege")
    assert backend.resets == [] and backend.received == []


async def test_operator_reset_reaches_backend(client: Client, backend: FakeBackend) -> None:
    resp = await client.post(
        "/redfish/v1/Systems/system/Actions/ComputerSystem.Reset",
        json={"ResetType": "ForceRestart"},
        headers=basic(OPERATOR),
    )
    assert resp.status == 204
    assert backend.resets == ["ForceRestart"]


async def test_reset_type_outside_allowable_values_is_rejected(
    client: Client, backend: FakeBackend
) -> None:
    resp = await client.post(
        "/redfish/v1/Systems/system/Actions/ComputerSystem.Reset",
        json={"ResetType": "Explode"},
        headers=basic(ADMIN),
    )
    status, code, err = await error_of(resp)
    assert (status, code) == (400, "Base.1.22.ActionParameterValueNotInList")
    assert "Explode" in err["message"]
    assert backend.resets == []


async def test_malformed_json_is_400_malformed_json(client: Client) -> None:
    resp = await client.patch(
        "/redfish/v1/Systems/system",
        data=b"{not json",
        headers=basic(ADMIN, **{"Content-Type": "application/json"}),
    )
    assert (await error_of(resp))[:2] == (400, "Base.1.22.MalformedJSON")


async def test_patch_wrong_type_unknown_and_readonly_properties_change_nothing(
    client: Client,
) -> None:
    before = await (await client.get("/redfish/v1/Systems/system", headers=basic(ADMIN))).json()
    cases = [
        ({"AssetTag": 42}, "Base.1.22.PropertyValueTypeError"),
        ({"BogusProp": 1}, "Base.1.22.PropertyUnknown"),
        ({"BiosVersion": "9.9"}, "Base.1.22.PropertyNotWritable"),
        ({"AssetTag": "rack-7", "Model": "x"}, "Base.1.22.PropertyNotWritable"),
    ]
    for patch, expected in cases:
        resp = await client.patch("/redfish/v1/Systems/system", json=patch, headers=basic(ADMIN))
        assert (await error_of(resp))[:2] == (400, expected), patch
    after = await (await client.get("/redfish/v1/Systems/system", headers=basic(ADMIN))).json()
    assert after["AssetTag"] == before["AssetTag"] == ""
    ok = await client.patch(
        "/redfish/v1/Systems/system", json={"AssetTag": "rack-7"}, headers=basic(ADMIN)
    )
    assert ok.status == 200 and (await ok.json())["AssetTag"] == "rack-7"


async def test_patch_with_stale_if_match_is_412(client: Client) -> None:
    resp = await client.patch(
        "/redfish/v1/Systems/system",
        json={"AssetTag": "a"},
        headers=basic(ADMIN, **{"If-Match": 'W/"stale"'}),
    )
    assert (await error_of(resp))[:2] == (412, "Base.1.22.PreconditionFailed")


async def test_unknown_resource_is_404_resource_missing(client: Client) -> None:
    resp = await client.get("/redfish/v1/Systems/other", headers=basic(ADMIN))
    status, code, err = await error_of(resp)
    assert (status, code) == (404, "Base.1.22.ResourceMissingAtURI")
    assert "/redfish/v1/Systems/other" in err["message"]


async def test_wrong_method_is_405_with_allow(client: Client) -> None:
    resp = await client.delete("/redfish/v1/Systems/system", headers=basic(ADMIN))
    assert (await error_of(resp))[:2] == (405, "Base.1.22.OperationNotAllowed")
    assert set(resp.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "PATCH"}


async def test_get_carries_allow_etag_odata_version_and_link(client: Client) -> None:
    resp = await client.get("/redfish/v1/Systems/system", headers=basic(ADMIN))
    body = await resp.json()
    assert resp.headers["OData-Version"] == "4.0"
    assert resp.headers["ETag"] == body["@odata.etag"]
    assert "rel=describedby" in resp.headers["Link"]
    again = await client.get(
        "/redfish/v1/Systems/system",
        headers=basic(ADMIN, **{"If-None-Match": resp.headers["ETag"]}),
    )
    assert again.status == 304


async def test_unsupported_dollar_query_is_501(client: Client) -> None:
    resp = await client.get("/redfish/v1/Systems?$expand=*", headers=basic(ADMIN))
    assert (await error_of(resp))[:2] == (501, "Base.1.22.QueryNotSupported")


async def test_session_login_token_and_logout(client: Client) -> None:
    resp = await client.post(
        "/redfish/v1/SessionService/Sessions", json={"UserName": ADMIN[0], "Password": ADMIN[1]}
    )
    assert resp.status == 201
    token, location = resp.headers["X-Auth-Token"], resp.headers["Location"]
    assert (await resp.json())["@odata.id"] == location
    hdr = {"X-Auth-Token": token}
    assert (await client.get("/redfish/v1/Managers/bmc", headers=hdr)).status == 200
    assert (await client.delete(location, headers=hdr)).status == 204
    assert (await client.get("/redfish/v1/Managers/bmc", headers=hdr)).status == 401


async def test_login_with_bad_password_creates_no_session(client: Client) -> None:
    resp = await client.post(
        "/redfish/v1/SessionService/Sessions",
        json={"UserName": ADMIN[0], "Password": "not-the-password"},
    )
    assert resp.status == 401
    coll = await (
        await client.get("/redfish/v1/SessionService/Sessions", headers=basic(ADMIN))
    ).json()
    assert coll["Members@odata.count"] == 0


async def test_accounts_admin_creates_readonly_user_who_cannot_create_accounts(
    client: Client,
) -> None:
    resp = await client.post(
        "/redfish/v1/AccountService/Accounts",
        headers=basic(ADMIN),
        json={"UserName": "viewer", "Password": "viewer-pass", "RoleId": "ReadOnly"},
    )
    assert resp.status == 201
    assert resp.headers["Location"].endswith("/Accounts/viewer")
    resp = await client.post(
        "/redfish/v1/AccountService/Accounts",
        headers=basic(("viewer", "viewer-pass")),
        json={"UserName": "x", "Password": "xxxxxxxxx", "RoleId": "ReadOnly"},
    )
    assert resp.status == 403
    short = await client.post(
        "/redfish/v1/AccountService/Accounts",
        headers=basic(ADMIN),
        json={"UserName": "y", "Password": "short", "RoleId": "ReadOnly"},
    )
    assert (await error_of(short))[:2] == (400, "Base.1.22.PasswordIncorrectLength")


async def test_last_administrator_cannot_be_demoted(client: Client) -> None:
    resp = await client.patch(
        "/redfish/v1/AccountService/Accounts/admin",
        json={"RoleId": "ReadOnly"},
        headers=basic(ADMIN),
    )
    assert resp.status == 400
    acct = await (
        await client.get("/redfish/v1/AccountService/Accounts/admin", headers=basic(ADMIN))
    ).json()
    assert acct["RoleId"] == "Administrator"


async def test_roles_list_the_three_standard_roles(client: Client) -> None:
    coll = await (
        await client.get("/redfish/v1/AccountService/Roles", headers=basic(READER))
    ).json()
    ids = [m["@odata.id"].rsplit("/", 1)[-1] for m in coll["Members"]]
    assert ids == ["Administrator", "Operator", "ReadOnly"]
    ro = await (
        await client.get("/redfish/v1/AccountService/Roles/ReadOnly", headers=basic(READER))
    ).json()
    assert "ConfigureComponents" not in ro["AssignedPrivileges"]
