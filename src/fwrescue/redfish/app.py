"""The Redfish application factory and server start-up.

``create_redfish_app(backend, settings)`` builds a fresh :class:`aiohttp.web.Application`
(no module-level app); ``start_redfish_server`` runs it on a TCP site, over HTTPS with a
self-signed certificate kept in ``state_dir`` (see :mod:`fwrescue.redfish.tls`) unless
``tls=False``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from fwrescue.redfish.auth import AuthStore
from fwrescue.redfish.backend import FleetNotices, OperationEvent, RedfishBackend, ResourceNotice
from fwrescue.redfish.events import EventHub, Poster
from fwrescue.redfish.http import SERVICE, Service, make_middlewares
from fwrescue.redfish.messages import Registries
from fwrescue.redfish.methods import TokenMethodAppRunner
from fwrescue.redfish.routes_auth import add_auth_routes
from fwrescue.redfish.routes_cancel import add_cancel_routes
from fwrescue.redfish.routes_core import add_core_routes
from fwrescue.redfish.routes_events import add_event_routes
from fwrescue.redfish.routes_policy import FleetPolicyBackend, add_policy_routes
from fwrescue.redfish.routes_update import add_update_routes
from fwrescue.redfish.settings import RedfishServiceSettings
from fwrescue.redfish.tasks import TaskStore
from fwrescue.redfish.tls import ensure_certificate, server_ssl_context

__all__ = ["SERVICE", "create_redfish_app", "start_redfish_server"]

log = logging.getLogger(__name__)


def _aiohttp_poster(svc: Service) -> Poster:
    async def post(url: str, body: dict[str, Any]) -> int:
        if svc.http is None:
            raise OSError("event client not running")
        try:
            async with svc.http.post(url, json=body) as resp:
                return resp.status
        except aiohttp.ClientError as e:
            raise OSError(str(e) or type(e).__name__) from e

    return post


def create_redfish_app(
    backend: RedfishBackend,
    settings: RedfishServiceSettings,
    *,
    clock: Callable[[], float] = time.time,
    poster: Poster | None = None,
) -> web.Application:
    """A new Redfish service application for ``backend``.

    ``clock`` gives wall-clock seconds (sessions, task times); ``poster`` replaces the
    aiohttp client that pushes events to subscribers (tests). The backend subscription and
    the event worker start with the application and stop with it (``cleanup_ctx``).
    """
    registries = Registries()
    holder: list[Service] = []

    async def deferred_post(url: str, body: dict[str, Any]) -> int:
        return await (poster or _aiohttp_poster(holder[0]))(url, body)

    svc = Service(
        backend=backend,
        settings=settings,
        registries=registries,
        auth=AuthStore(settings),
        tasks=TaskStore(registries, settings.max_tasks, settings.max_transcript_entries),
        events=EventHub(settings, deferred_post),
        clock=clock,
    )
    holder.append(svc)
    app = web.Application(middlewares=make_middlewares(svc), client_max_size=settings.max_json_body)
    app[SERVICE] = svc
    add_core_routes(app)
    add_auth_routes(app)
    add_update_routes(app)
    add_cancel_routes(app)
    add_event_routes(app)
    if isinstance(backend, FleetPolicyBackend):  # agents that take signed fleet policies
        add_policy_routes(app, backend)
    app.cleanup_ctx.append(_lifecycle)
    return app


def _on_event(svc: Service, event: OperationEvent) -> None:
    """Backend progress -> Task state -> Redfish events (SSE and push)."""
    now = svc.clock()
    task, added = svc.tasks.apply(event, now)
    if added:
        svc.events.publish(added, task.uri, now)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    svc = app[SERVICE]
    svc.settings.upload_dir.mkdir(parents=True, exist_ok=True)
    svc.http = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=svc.settings.event_timeout_s)
    )
    svc.events.start()

    def callback(event: OperationEvent) -> None:
        try:
            _on_event(svc, event)
        except Exception:
            # A malformed event must not break the backend's publisher loop; it is logged.
            log.exception("could not apply operation event %r", event)

    unsubscribe = svc.backend.subscribe(callback)

    def on_notice(notice: ResourceNotice) -> None:
        try:
            message = svc.registries.message(notice.message_id, notice.args)
            svc.events.publish([message], notice.origin, svc.clock())
        except Exception:
            log.exception("could not publish resource notice %r", notice)

    backend = svc.backend
    unsubscribe_notices = (backend.subscribe_notices(on_notice)
                           if isinstance(backend, FleetNotices) else None)
    try:
        yield
    finally:
        unsubscribe()
        if unsubscribe_notices is not None:
            unsubscribe_notices()
        await svc.events.stop()
        for task in list(svc.background):
            task.cancel()
        for task in list(svc.background):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await svc.http.close()
        svc.http = None


async def start_redfish_server(
    app: web.Application, host: str, port: int, tls: bool, state_dir: Path
) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``host:port`` (0 picks a free port); return the runner and base URL.

    With ``tls`` the certificate and key in ``state_dir`` are created on first use and reused
    afterwards. Stop with ``await runner.cleanup()``.
    """
    ssl_ctx = None
    if tls:
        cert, key = ensure_certificate(state_dir, host)
        ssl_ctx = server_ssl_context(cert, key)
    runner = TokenMethodAppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_ctx)
    await site.start()
    bound = int(runner.addresses[0][1]) if runner.addresses else port
    scheme = "https" if tls else "http"
    shown = f"[{host}]" if ":" in host else host
    return runner, f"{scheme}://{shown}:{bound}"
