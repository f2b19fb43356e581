"""Dashboard routes: login, the pages (plain HTML/JS/CSS from ``static/``), the JSON API they
read, the SSE stream that tells them to refresh, and ``/metrics``.

Access: ``/login``, ``/static/*`` and ``/metrics`` are public; everything else needs a
session cookie (``HttpOnly``, ``SameSite=Strict``). Changing requests (``POST /api/…``) need
the ``operator`` role and a JSON body (``application/json``: a cross-site form cannot send
one), are validated here, and answer 400 with ``{"error": "…"}`` changing nothing when bad.
``/api/accounts`` (list, create) and ``/api/accounts/{name}/delete`` are operator-only.
``POST /login`` is rate limited per user name and per source address (429 with
``Retry-After`` once either has too many recent failures; the password is not checked then).
"""

from __future__ import annotations

import asyncio
import html
import json
import math
import re
import time
from importlib import resources
from typing import Any

from aiohttp import web

from fwrescue.console import records
from fwrescue.console.app import CONSOLE
from fwrescue.console.auth import AccountError, Principal
from fwrescue.console.policy import RolloutError

__all__ = ["add_dashboard_routes", "auth_middleware"]

COOKIE = "fwrescue_console"
_PRINCIPAL = web.RequestKey("fwrescue_console_principal", Principal)
_PUBLIC = ("/login", "/static/", "/metrics")
_STATIC = {"index.html": "text/html", "login.html": "text/html", "app.js": "text/javascript",
           "style.css": "text/css"}
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_FORM = 4096


def _static(name: str) -> bytes:
    return resources.files("fwrescue.console").joinpath("static", name).read_bytes()


class BadRequest(web.HTTPBadRequest):
    def __init__(self, message: str) -> None:
        super().__init__(text=json.dumps({"error": message}), content_type="application/json")


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path == "/" or not request.path.startswith(_PUBLIC):
        console = request.app[CONSOLE]
        principal = await console.auth.principal(request.cookies.get(COOKIE))
        if principal is None:
            if request.path.startswith("/api/"):
                raise web.HTTPUnauthorized(text=json.dumps({"error": "log in first"}),
                                           content_type="application/json")
            raise web.HTTPSeeOther("/login")
        request[_PRINCIPAL] = principal
        if request.method == "POST" and request.path.startswith("/api/"):
            if not principal.operator:
                raise web.HTTPForbidden(text=json.dumps({"error": "the operator role is "
                                                         "needed for this"}),
                                        content_type="application/json")
            if request.content_type != "application/json":
                raise BadRequest("send application/json")
    response: web.StreamResponse = await handler(request)
    return response


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.content.read(128 * 1024 + 1)
    if len(raw) > 128 * 1024:
        raise BadRequest("request body too large")
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise BadRequest("the body is not JSON") from e
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def add_dashboard_routes(app: web.Application) -> None:
    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=_static(name), content_type=_STATIC[name],
                            headers={"Cache-Control": "no-cache"})

    async def index(_: web.Request) -> web.Response:
        return web.Response(body=_static("index.html"), content_type="text/html")

    async def login_page(_: web.Request) -> web.Response:
        return web.Response(body=_static("login.html"), content_type="text/html")

    async def login(request: web.Request) -> web.Response:
        form = await request.post()
        user, password = form.get("username"), form.get("password")
        auth = request.app[CONSOLE].auth
        username = user[:64] if isinstance(user, str) else ""
        source = request.remote or "unknown"
        now = time.monotonic()
        wait = auth.limiter.retry_after(username, source, now)
        if wait > 0:
            seconds = math.ceil(wait)
            raise web.HTTPTooManyRequests(
                headers={"Retry-After": str(seconds)}, content_type="text/html",
                text=f"<!doctype html><title>Too many failed logins</title><p class=error>"
                     f"Too many failed logins for {html.escape(username)!s} or from this "
                     f"address; try again in {seconds} s. <a href=/login>Back</a></p>")
        token = None
        if isinstance(user, str) and isinstance(password, str) and len(user) + len(
                password) <= _MAX_FORM:
            token = await auth.login(user, password)
        if token is None:
            auth.limiter.failed(username, source, now)
            raise web.HTTPSeeOther("/login?failed=1")
        auth.limiter.succeeded(username)
        response = web.HTTPSeeOther("/")
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        raise response

    async def logout(request: web.Request) -> web.Response:
        token = request.cookies.get(COOKIE)
        if token:
            await request.app[CONSOLE].auth.logout(token)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    async def whoami(request: web.Request) -> web.Response:
        p = request[_PRINCIPAL]
        return web.json_response({"username": p.username, "role": p.role})

    async def fleet(request: web.Request) -> web.Response:
        return web.json_response(await request.app[CONSOLE].db.read(records.fleet))

    async def node(request: web.Request) -> web.Response:
        node_id = request.match_info["node"]
        if not _ID.match(node_id):
            raise BadRequest("bad node id")
        detail = await request.app[CONSOLE].db.read(lambda c: records.node_detail(c, node_id))
        if detail is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such node"}),
                                   content_type="application/json")
        return web.json_response(detail)

    async def transcript(request: web.Request) -> web.Response:
        node_id, op_id = request.match_info["node"], request.match_info["op"]
        if not (_ID.match(node_id) and _ID.match(op_id)):
            raise BadRequest("bad node or operation id")
        entries = await request.app[CONSOLE].db.read(
            lambda c: records.transcript(c, node_id, op_id))
        return web.json_response({"node": node_id, "op_id": op_id, "entries": entries})

    async def policies(request: web.Request) -> web.Response:
        return web.json_response(await request.app[CONSOLE].desk.overview())

    async def upload_policy(request: web.Request) -> web.Response:
        body = await _json_body(request)
        document = body.get("document")
        if not isinstance(document, str) or not document.strip():
            raise BadRequest("document: the signed policy file's text")
        try:
            policy = await request.app[CONSOLE].desk.upload(
                document.encode("utf-8"), request[_PRINCIPAL].username)
        except RolloutError as e:
            raise BadRequest(str(e)) from e
        return web.json_response({"board": policy.board, "version": policy.version})

    async def start_rollout(request: web.Request) -> web.Response:
        body = await _json_body(request)
        board, version = body.get("board"), body.get("version")
        fraction, halt_after = body.get("fraction", 0.25), body.get("halt_after", 1)
        if not isinstance(board, str) or not _NAME.match(board):
            raise BadRequest("board: 1-64 chars of [A-Za-z0-9._-]")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise BadRequest("version: an integer >= 1")
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise BadRequest("fraction: a number in (0, 1]")
        try:
            rollout_id = await request.app[CONSOLE].desk.start_rollout(
                board, version, float(fraction), halt_after)
        except RolloutError as e:
            raise BadRequest(str(e)) from e
        return web.json_response({"id": rollout_id})

    async def rollout_action(request: web.Request) -> web.Response:
        try:
            rollout_id = int(request.match_info["id"])
        except ValueError as e:
            raise BadRequest("bad rollout id") from e
        desk = request.app[CONSOLE].desk
        action = request.match_info["action"]
        try:
            await (desk.pause(rollout_id) if action == "pause" else desk.resume(rollout_id))
        except RolloutError as e:
            raise BadRequest(str(e)) from e
        return web.json_response({"id": rollout_id, "action": action})

    def operator(request: web.Request) -> Principal:
        principal = request[_PRINCIPAL]
        if not principal.operator:
            raise web.HTTPForbidden(text=json.dumps({"error": "the operator role is needed "
                                                     "for this"}),
                                    content_type="application/json")
        return principal

    async def accounts(request: web.Request) -> web.Response:
        operator(request)
        return web.json_response({"accounts": await request.app[CONSOLE].auth.accounts()})

    async def add_account(request: web.Request) -> web.Response:
        operator(request)
        body = await _json_body(request)
        try:
            await request.app[CONSOLE].auth.add_account(
                body.get("username"), body.get("password"), body.get("role"))
        except AccountError as e:
            raise BadRequest(str(e)) from e
        return web.json_response({"username": body["username"], "role": body["role"]})

    async def delete_account(request: web.Request) -> web.Response:
        principal = operator(request)
        name = request.match_info["name"]
        try:
            await request.app[CONSOLE].auth.delete_account(name, by=principal)
        except AccountError as e:
            raise BadRequest(str(e)) from e
        return web.json_response({"deleted": name})

    async def events(request: web.Request) -> web.StreamResponse:
        changes = request.app[CONSOLE].changes
        queue = changes.open()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        try:
            await resp.prepare(request)
            await resp.write(b"event: changed\ndata: {}\n\n")
            while True:
                try:
                    await asyncio.wait_for(queue.get(), 15.0)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if changes.closing:
                    break
                await resp.write(b"event: changed\ndata: {}\n\n")
                await asyncio.sleep(0.2)  # at most five refreshes a second per page
        except ConnectionResetError:
            pass  # the page went away
        finally:
            changes.close(queue)
        return resp

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=request.app[CONSOLE].metrics.exposition(),
                            headers={"Content-Type": "text/plain; version=0.0.4; "
                                                     "charset=utf-8"})

    r = app.router
    r.add_get("/", index)
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/static/{name}", static)
    r.add_get("/api/whoami", whoami)
    r.add_get("/api/fleet", fleet)
    r.add_get("/api/nodes/{node}", node)
    r.add_get("/api/nodes/{node}/operations/{op}", transcript)
    r.add_get("/api/policies", policies)
    r.add_post("/api/policies", upload_policy)
    r.add_post("/api/rollouts", start_rollout)
    r.add_post("/api/rollouts/{id}/{action:pause|resume}", rollout_action)
    r.add_get("/api/accounts", accounts)
    r.add_post("/api/accounts", add_account)
    r.add_post("/api/accounts/{name}/delete", delete_account)
    r.add_get("/api/events", events)
    r.add_get("/metrics", metrics)
