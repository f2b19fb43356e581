"""HTTP plumbing shared by the route modules: the per-app service state, middlewares
(errors, authentication, headers), bounded JSON bodies, PATCH validation and ETags."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from fwrescue.errors import FwRescueError
from fwrescue.redfish.auth import AuthStore, Principal
from fwrescue.redfish.backend import RedfishBackend
from fwrescue.redfish.events import EventHub
from fwrescue.redfish.messages import Registries, RequestError, error_body
from fwrescue.redfish.settings import RedfishServiceSettings
from fwrescue.redfish.tasks import TaskStore

__all__ = [
    "SERVICE",
    "Handler",
    "Service",
    "apply_patch",
    "current_principal",
    "decode_json_body",
    "etag_of",
    "found",
    "json_response",
    "make_middlewares",
    "not_found",
    "read_json",
    "require",
]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


def not_found(request: web.Request) -> RequestError:
    """404 ResourceMissingAtURI for this request's path (bounded in the message)."""
    return RequestError(404, "Base.1.22.ResourceMissingAtURI", request.path[:256])


def found(value: T | None, request: web.Request) -> T:
    """``value``, or raise :func:`not_found` when the lookup found nothing."""
    if value is None:
        raise not_found(request)
    return value

#: paths readable without credentials (DSP0266 "Authentication requirements")
_PUBLIC_GET = frozenset(
    {
        "/redfish",
        "/redfish/",
        "/redfish/v1",
        "/redfish/v1/",
        "/redfish/v1/odata",
        "/redfish/v1/$metadata",
    }
)
_SESSIONS = "/redfish/v1/SessionService/Sessions"


@dataclass
class Service:
    """Everything the handlers share; one per application (no globals)."""

    backend: RedfishBackend
    settings: RedfishServiceSettings
    registries: Registries
    auth: AuthStore
    tasks: TaskStore
    events: EventHub
    clock: Callable[[], float]
    http: aiohttp.ClientSession | None = None
    background: set[asyncio.Task[None]] = field(default_factory=set)
    asset_tag: str = ""

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run ``coro`` in the background; kept referenced and cancelled on cleanup."""

        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)


SERVICE = web.AppKey("fwrescue_redfish_service", Service)
_PRINCIPAL = web.RequestKey("fwrescue_principal", Principal)


def current_principal(request: web.Request) -> Principal:
    principal: Principal | None = request.get(_PRINCIPAL)
    if principal is None:
        raise RequestError(
            401, "Base.1.22.NoValidSession", headers={"WWW-Authenticate": 'Basic realm="fwrescue"'}
        )
    return principal


def require(request: web.Request, privilege: str) -> Principal:
    """The caller's principal if it holds ``privilege``; else 403 InsufficientPrivilege."""
    principal = current_principal(request)
    if privilege not in principal.privileges:
        raise RequestError(403, "Base.1.22.InsufficientPrivilege")
    return principal


def etag_of(body: dict[str, Any]) -> str:
    """A weak ETag over the representation (without its own ``@odata.etag``)."""
    body = {k: v for k, v in body.items() if k != "@odata.etag"}
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return f'W/"{hashlib.sha256(raw).hexdigest()[:16]}"'


def _described_by(odata_type: str) -> str:
    """JSON Schema URI for ``#Namespace.vX_Y_Z.Type`` (or ``#XCollection.XCollection``)."""
    namespace = odata_type.lstrip("#").rsplit(".", 1)[0]
    return f"<http://redfish.dmtf.org/schemas/v1/{namespace}.json>; rel=describedby"


def json_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response; a resource (with ``@odata.id``) gets ``ETag``/``@odata.etag`` and a
    ``Link: rel=describedby`` header naming its JSON Schema."""
    hdrs: dict[str, str] = {}
    if "@odata.id" in body and status < 300:
        etag = etag_of(body)
        body = {**body, "@odata.etag": etag}
        hdrs["ETag"] = etag
    odata_type = body.get("@odata.type")
    if isinstance(odata_type, str):
        hdrs["Link"] = _described_by(odata_type)
    hdrs.update(headers or {})
    return web.Response(
        body=json.dumps(body, indent=1).encode(),
        status=status,
        content_type="application/json",
        charset="utf-8",
        headers=hdrs,
    )


async def read_json(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object, at most ``max_bytes``; raises ``RequestError``.

    415 for a non-JSON Content-Type, 413 for an oversize body, 400 MalformedJSON otherwise.
    """
    ctype = request.headers.get("Content-Type", "application/json")
    if ctype.split(";")[0].strip().lower() not in ("application/json", ""):
        raise RequestError(415, "Base.1.22.HeaderInvalid", "Content-Type")
    if request.content_length is not None and request.content_length > max_bytes:
        raise RequestError(413, "Base.1.22.PayloadTooLarge")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise RequestError(413, "Base.1.22.PayloadTooLarge")
    return decode_json_body(raw)


def decode_json_body(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object, or 400 MalformedJSON (bad UTF-8 or JSON, nesting deeper
    than the JSON decoder recurses, anything but an object)."""
    try:
        data = json.loads(raw) if raw else None
    except (ValueError, RecursionError) as e:
        raise RequestError(400, "Base.1.22.MalformedJSON") from e
    if not isinstance(data, dict):
        raise RequestError(400, "Base.1.22.MalformedJSON")
    return data


#: a writable property: name -> validator returning an error MessageId/args or None
Validator = Callable[[object], bool]


def apply_patch(
    request: web.Request,
    current: dict[str, Any],
    patch: dict[str, Any],
    writable: dict[str, Validator],
) -> dict[str, Any]:
    """Validate a PATCH against the current representation; return the accepted changes.

    Checks If-Match (412), then every property: unknown -> PropertyUnknown, read-only ->
    PropertyNotWritable, wrong type/value -> PropertyValueTypeError. Any problem rejects
    the whole request (400) and nothing changes. ``@odata`` annotations are ignored; a
    PATCH carrying nothing else is a 400 NoOperation.
    """
    if_match = request.headers.get("If-Match")
    if if_match is not None and if_match.strip() not in ("*", etag_of(current)):
        raise RequestError(412, "Base.1.22.PreconditionFailed")
    problems: list[tuple[str, tuple[str, ...]]] = []
    accepted: dict[str, Any] = {}
    for key, value in patch.items():
        if key.startswith("@odata."):
            continue
        if key in writable:
            if writable[key](value):
                accepted[key] = value
            else:
                problems.append(
                    ("Base.1.22.PropertyValueTypeError", (json.dumps(value)[:128], key))
                )
        elif key in current:
            problems.append(("Base.1.22.PropertyNotWritable", (key,)))
        else:
            problems.append(("Base.1.22.PropertyUnknown", (key[:128],)))
    if problems:
        first_id, first_args = problems[0]
        raise RequestError(400, first_id, *first_args, details=problems[1:])
    if not accepted:
        raise RequestError(400, "Base.1.22.NoOperation")
    return accepted


def _allow_header(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource
    methods: list[str] = []
    if resource is not None:
        for r in resource:
            if r.method not in methods and r.method != "*":
                methods.append(r.method)
    return ", ".join(methods)


def make_middlewares(svc: Service) -> list[Any]:
    """Errors outermost, then authentication, then common headers."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestError as e:
            resp = json_response(error_body(svc.registries, e), e.http_status, e.headers)
        except FwRescueError as e:
            resp = json_response(error_body(svc.registries, e), e.http_status)
        except web.HTTPMethodNotAllowed as e:
            allow = ", ".join(sorted(e.allowed_methods))
            err = RequestError(405, "Base.1.22.OperationNotAllowed", headers={"Allow": allow})
            resp = json_response(error_body(svc.registries, err), 405, err.headers)
        except web.HTTPNotFound:
            resp = json_response(error_body(svc.registries, not_found(request)), 404)
        except web.HTTPRequestEntityTooLarge:
            err = RequestError(413, "Base.1.22.PayloadTooLarge")
            resp = json_response(error_body(svc.registries, err), 413)
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            err = RequestError(500, "Base.1.22.InternalError")
            resp = json_response(error_body(svc.registries, err), 500)
        resp.headers["OData-Version"] = "4.0"
        return resp

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        public = (request.method in ("GET", "HEAD") and path in _PUBLIC_GET) or (
            request.method == "POST" and path.rstrip("/") in (_SESSIONS, f"{_SESSIONS}/Members")
        )
        principal = _credentials(svc, request)
        if principal is not None:
            request[_PRINCIPAL] = principal
        elif not public:
            raise RequestError(
                401,
                "Base.1.22.NoValidSession",
                headers={"WWW-Authenticate": 'Basic realm="fwrescue"'},
            )
        return await handler(request)

    @web.middleware
    async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
        for key in request.query:
            if key.startswith("$"):
                raise RequestError(501, "Base.1.22.QueryNotSupported")
        odata_version = request.headers.get("OData-Version")
        if odata_version is not None and odata_version.strip() != "4.0":
            # DSP0266: an unsupported OData-Version is answered 412 Precondition Failed.
            raise RequestError(
                412, "Base.1.22.HeaderInvalid", f"OData-Version: {odata_version[:16]}"
            )
        resp = await handler(request)
        if_none_match = request.headers.get("If-None-Match")
        etag = resp.headers.get("ETag")
        if (
            request.method in ("GET", "HEAD")
            and resp.status == 200
            and etag is not None
            and if_none_match is not None
            and etag in [t.strip() for t in if_none_match.split(",")]
        ):
            return web.Response(status=304, headers={"ETag": etag, "OData-Version": "4.0"})
        resp.headers.setdefault("OData-Version", "4.0")
        resp.headers.setdefault("Cache-Control", "no-store")
        if request.method in ("GET", "HEAD") and resp.status < 300:
            resp.headers.setdefault("Allow", _allow_header(request))
        return resp

    return [errors, authenticate, headers]


def _credentials(svc: Service, request: web.Request) -> Principal | None:
    """The principal behind X-Auth-Token or Basic credentials; ``None`` when none were sent.

    Credentials that were sent but are wrong raise 401 even on public paths, except on
    login, where the body's credentials decide.
    """
    token = request.headers.get("X-Auth-Token")
    if token:
        if len(token) > 256:
            raise RequestError(401, "Base.1.22.NoValidSession")
        return svc.auth.by_token(token, svc.clock())
    header = request.headers.get("Authorization", "")
    if header[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as e:
            raise RequestError(
                401,
                "Base.1.22.NoValidSession",
                headers={"WWW-Authenticate": 'Basic realm="fwrescue"'},
            ) from e
        user, _, password = decoded.partition(":")
        return svc.auth.basic(user, password)
    return None
