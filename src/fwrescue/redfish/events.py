"""EventService: push subscriptions (HTTP POST to a destination) and the SSE stream.

Every queue is bounded: each SSE client has ``sse_queue_len`` slots and is disconnected when
it falls that far behind; push deliveries share one queue of the same length and a single
worker that tries each delivery at most ``event_retry_attempts`` times. Destinations must be
absolute ``http``/``https`` URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fwrescue.redfish.messages import RequestError
from fwrescue.redfish.settings import RedfishServiceSettings
from fwrescue.redfish.tasks import iso_time

__all__ = [
    "SUBSCRIPTIONS_URI",
    "EventHub",
    "Poster",
    "SseClient",
    "Subscription",
    "validate_destination",
]

SUBSCRIPTIONS_URI = "/redfish/v1/EventService/Subscriptions"
_MAX_DESTINATION = 2048  # common URL length limit of browsers and proxies
_MAX_CONTEXT = 256

log = logging.getLogger(__name__)

#: posts one JSON document to a URL; returns the HTTP status; raises OSError/TimeoutError
Poster = Callable[[str, dict[str, Any]], Awaitable[int]]


@dataclass(frozen=True)
class Subscription:
    id: str
    destination: str
    context: str
    owner: str

    @property
    def uri(self) -> str:
        return f"{SUBSCRIPTIONS_URI}/{self.id}"


def validate_destination(value: object) -> str:
    """An absolute http(s) URL with a host, or a 400 ``RequestError``."""
    if not isinstance(value, str):
        raise RequestError(
            400, "Base.1.22.PropertyValueTypeError", json.dumps(value), "Destination"
        )
    if len(value) > _MAX_DESTINATION:
        raise RequestError(400, "Base.1.22.PropertyValueFormatError", value[:64], "Destination")
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise RequestError(400, "Base.1.22.PropertyValueFormatError", value, "Destination")
    return value


class SseClient:
    """One connected SSE reader: a bounded queue; ``None`` tells it to stop."""

    def __init__(self, maxlen: int) -> None:
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxlen)
        self.dropped = False


class EventHub:
    """Fans event records out to SSE clients and push subscriptions."""

    def __init__(self, settings: RedfishServiceSettings, poster: Poster) -> None:
        self._settings = settings
        self._poster = poster
        self._subs: dict[str, Subscription] = {}
        self._ids = itertools.count(1)
        self._event_ids = itertools.count(1)
        self._sse: set[SseClient] = set()
        self._outbox: asyncio.Queue[tuple[Subscription, dict[str, Any]]] = asyncio.Queue(
            settings.sse_queue_len
        )
        self._worker: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0

    # --- subscriptions ---------------------------------------------------------------

    def subscriptions(self) -> list[Subscription]:
        return list(self._subs.values())

    def subscription(self, sid: str) -> Subscription | None:
        return self._subs.get(sid)

    def subscribe(self, destination: object, context: object, owner: str) -> Subscription:
        """Add a push subscription; raises ``RequestError`` on bad input or at the limit."""
        dest = validate_destination(destination)
        if context is None:
            context = ""
        if not isinstance(context, str):
            raise RequestError(
                400, "Base.1.22.PropertyValueTypeError", json.dumps(context), "Context"
            )
        if len(context) > _MAX_CONTEXT:
            raise RequestError(400, "Base.1.22.PropertyValueFormatError", context[:64], "Context")
        if len(self._subs) >= self._settings.max_subscriptions:
            raise RequestError(503, "Base.1.22.EventSubscriptionLimitExceeded")
        sub = Subscription(str(next(self._ids)), dest, context, owner)
        self._subs[sub.id] = sub
        return sub

    def update_context(self, sid: str, context: str) -> Subscription:
        sub = self._subs[sid]
        if len(context) > _MAX_CONTEXT:
            raise RequestError(400, "Base.1.22.PropertyValueFormatError", context[:64], "Context")
        new = Subscription(sub.id, sub.destination, context, sub.owner)
        self._subs[sid] = new
        return new

    def unsubscribe(self, sid: str) -> bool:
        return self._subs.pop(sid, None) is not None

    # --- SSE ---------------------------------------------------------------------------

    def open_sse(self) -> SseClient:
        if len(self._sse) >= self._settings.max_sse_clients:
            raise RequestError(503, "Base.1.22.ServiceTemporarilyUnavailable", "5")
        client = SseClient(self._settings.sse_queue_len)
        self._sse.add(client)
        return client

    def close_sse(self, client: SseClient) -> None:
        self._sse.discard(client)

    # --- publishing --------------------------------------------------------------------

    def publish(self, messages: list[dict[str, Any]], origin: str, now: float) -> dict[str, Any]:
        """Wrap registry messages as one Event and queue it for every reader; never blocks."""
        event_id = str(next(self._event_ids))
        records = [
            {
                "EventType": "Other",
                "EventId": f"{event_id}.{i}",
                "MemberId": str(i),
                "EventTimestamp": iso_time(now),
                "MessageId": m["MessageId"],
                "Message": m["Message"],
                "MessageArgs": m.get("MessageArgs", []),
                "MessageSeverity": m.get("MessageSeverity", "OK"),
                "OriginOfCondition": {"@odata.id": origin},
            }
            for i, m in enumerate(messages)
        ]
        event = {
            "@odata.type": "#Event.v1_13_0.Event",
            "Id": event_id,
            "Name": "fwrescue event",
            "Events": records,
        }
        for client in list(self._sse):
            try:
                client.queue.put_nowait(event)
            except asyncio.QueueFull:
                # A reader this far behind has lost events; drop it rather than buffer more.
                client.dropped = True
                self._sse.discard(client)
                with contextlib.suppress(asyncio.QueueEmpty):
                    client.queue.get_nowait()
                client.queue.put_nowait(None)
        for sub in self._subs.values():
            try:
                self._outbox.put_nowait((sub, {**event, "Context": sub.context}))
            except asyncio.QueueFull:
                self.failed += 1
                log.warning("event outbox full; event %s not delivered to %s", event_id, sub.id)
        return event

    # --- push worker -------------------------------------------------------------------

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._deliver_loop())

    async def stop(self) -> None:
        for client in list(self._sse):
            with contextlib.suppress(asyncio.QueueEmpty):
                while client.queue.full():
                    client.queue.get_nowait()
            client.queue.put_nowait(None)
        self._sse.clear()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def _deliver_loop(self) -> None:
        while True:  # runs until stop() cancels it
            sub, event = await self._outbox.get()
            if sub.id not in self._subs:
                continue
            await self._deliver(sub, event)

    async def _deliver(self, sub: Subscription, event: dict[str, Any]) -> None:
        for attempt in range(self._settings.event_retry_attempts):
            try:
                status = await asyncio.wait_for(
                    self._poster(sub.destination, event), self._settings.event_timeout_s
                )
                if 200 <= status < 300:
                    self.delivered += 1
                    return
                log.info("event push to %s answered %d", sub.destination, status)
            except (OSError, TimeoutError) as e:
                log.info("event push to %s failed: %s", sub.destination, e)
            if attempt + 1 < self._settings.event_retry_attempts:
                await asyncio.sleep(self._settings.event_retry_interval_s)
        self.failed += 1
