"""EventService routes: subscriptions (push) and the Server-Sent Events stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web

from fwrescue.redfish.events import SUBSCRIPTIONS_URI, Subscription
from fwrescue.redfish.http import SERVICE, apply_patch, found, json_response, read_json, require
from fwrescue.redfish.messages import RequestError
from fwrescue.redfish.routes_core import collection

__all__ = ["SSE_URI", "add_event_routes"]

ES = "/redfish/v1/EventService"
SSE_URI = f"{ES}/SSE"
# An idle SSE connection gets a comment line this often so proxies keep it open.
_KEEPALIVE_S = 15.0


def _sub_json(s: Subscription) -> dict[str, Any]:
    return {
        "@odata.id": s.uri,
        "@odata.type": "#EventDestination.v1_16_0.EventDestination",
        "Id": s.id,
        "Name": f"Event subscription {s.id}",
        "Destination": s.destination,
        "Context": s.context,
        "Protocol": "Redfish",
        "SubscriptionType": "RedfishEvent",
    }


def add_event_routes(app: web.Application) -> None:
    svc = app[SERVICE]
    hub = svc.events

    async def event_service(_: web.Request) -> web.Response:
        return json_response(
            {
                "@odata.id": ES,
                "@odata.type": "#EventService.v1_12_0.EventService",
                "Id": "EventService",
                "Name": "Event Service",
                "ServiceEnabled": True,
                "DeliveryRetryAttempts": svc.settings.event_retry_attempts,
                "DeliveryRetryIntervalSeconds": max(1, int(svc.settings.event_retry_interval_s)),
                "ServerSentEventUri": SSE_URI,
                "Status": {"State": "Enabled", "Health": "OK"},
                "Subscriptions": {"@odata.id": SUBSCRIPTIONS_URI},
            }
        )

    async def subscriptions(_: web.Request) -> web.Response:
        return json_response(
            collection(
                SUBSCRIPTIONS_URI,
                "EventDestinationCollection",
                "Event Subscriptions",
                [s.uri for s in hub.subscriptions()],
            )
        )

    async def subscribe(request: web.Request) -> web.Response:
        principal = require(request, "ConfigureComponents")
        body = await read_json(request, svc.settings.max_json_body)
        allowed = {"Destination", "Context", "Protocol", "SubscriptionType"}
        for key in body:
            if key not in allowed:
                raise RequestError(400, "Base.1.22.PropertyUnknown", key[:128])
        if "Destination" not in body:
            raise RequestError(400, "Base.1.22.PropertyMissing", "Destination")
        if body.get("Protocol", "Redfish") != "Redfish":
            raise RequestError(
                400, "Base.1.22.PropertyValueNotInList", str(body["Protocol"])[:64], "Protocol"
            )
        if body.get("SubscriptionType", "RedfishEvent") != "RedfishEvent":
            raise RequestError(
                400,
                "Base.1.22.PropertyValueNotInList",
                str(body["SubscriptionType"])[:64],
                "SubscriptionType",
            )
        sub = hub.subscribe(body["Destination"], body.get("Context"), principal.username)
        return json_response(_sub_json(sub), 201, {"Location": sub.uri})

    def sub_or_404(request: web.Request) -> Subscription:
        return found(hub.subscription(request.match_info["id"]), request)

    async def get_sub(request: web.Request) -> web.Response:
        return json_response(_sub_json(sub_or_404(request)))

    async def patch_sub(request: web.Request) -> web.Response:
        sub_or_404(request)
        require(request, "ConfigureComponents")
        patch = await read_json(request, svc.settings.max_json_body)
        sub = sub_or_404(request)  # re-read after the await: If-Match check and write are atomic
        changes = apply_patch(
            request, _sub_json(sub), patch, {"Context": lambda v: isinstance(v, str)}
        )
        return json_response(_sub_json(hub.update_context(sub.id, str(changes["Context"]))))

    async def delete_sub(request: web.Request) -> web.Response:
        sub = sub_or_404(request)
        require(request, "ConfigureComponents")
        hub.unsubscribe(sub.id)
        return web.Response(status=204)

    async def sse(request: web.Request) -> web.StreamResponse:
        require(request, "Login")
        client = hub.open_sse()
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "OData-Version": "4.0",
            }
        )
        try:
            await resp.prepare(request)
            while True:  # ends when the client goes away or the hub closes the stream
                try:
                    event = await asyncio.wait_for(client.queue.get(), _KEEPALIVE_S)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if event is None:
                    break
                data = json.dumps(event, separators=(",", ":"))
                await resp.write(f"id: {event['Id']}\ndata: {data}\n\n".encode())
        except ConnectionResetError:
            return resp
        finally:
            hub.close_sse(client)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await resp.write_eof()
        return resp

    r = app.router
    r.add_get(ES, event_service)
    r.add_get(SUBSCRIPTIONS_URI, subscriptions)
    r.add_post(SUBSCRIPTIONS_URI, subscribe)
    r.add_post(f"{SUBSCRIPTIONS_URI}/Members", subscribe)
    r.add_get(f"{SUBSCRIPTIONS_URI}/{{id}}", get_sub)
    r.add_patch(f"{SUBSCRIPTIONS_URI}/{{id}}", patch_sub)
    r.add_delete(f"{SUBSCRIPTIONS_URI}/{{id}}", delete_sub)
    r.add_get(SSE_URI, sse)
