"""The console application factory: one aiohttp app for the donor, inventory, policy desk,
dashboard and ``/metrics``.

``create_console_app(settings)`` builds a fresh app (no module-level state). Its parts live
in a :class:`Console` stored under the typed key :data:`CONSOLE`; they start with the app and
stop with it (``cleanup_ctx``): the database opens (and migrates) first and closes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from fwrescue.config import NetworkSettings
from fwrescue.console.auth import ConsoleAuth
from fwrescue.console.db import Database
from fwrescue.console.inventory import AgentEndpoint, Inventory, InventorySettings
from fwrescue.console.metrics import ConsoleMetrics
from fwrescue.console.policy import PolicyDesk
from fwrescue.console.ratelimit import LoginLimits
from fwrescue.donor.repository import ConsoleDonor
from fwrescue.redfish.ssdp import Announcement, SsdpListener
from fwrescue.trust.keys import TrustStore

__all__ = ["CONSOLE", "Changes", "Console", "ConsoleSettings", "DiscoverySettings",
           "create_console_app", "start_console"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiscoverySettings:
    """Agents announcing themselves (Redfish SSDP): where to listen, which source networks
    to believe, and the Redfish account the console uses on every discovered agent."""

    group: str
    port: int
    interface: str
    networks: tuple[str, ...]  # CIDRs, e.g. ("10.0.0.0/24",)
    user: str
    password: str
    max_agents: int = 1024


@dataclass(frozen=True)
class ConsoleSettings:
    repo: Path
    state_dir: Path
    trust: tuple[Path, ...]
    network: NetworkSettings = field(default_factory=NetworkSettings)
    agents: tuple[AgentEndpoint, ...] = ()
    inventory: InventorySettings = field(default_factory=InventorySettings)
    #: (username, password, role) created or updated at start
    accounts: tuple[tuple[str, str, str], ...] = ()
    donor_id: str = "console"
    donate: bool = True
    rollout_tick_s: float = 0.5
    discovery: DiscoverySettings | None = None
    login_limits: LoginLimits = field(default_factory=LoginLimits)


class Changes:
    """Wakes every dashboard SSE stream when the inventory or a rollout changed."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[None]] = set()

    closing = False

    def shutdown(self) -> None:
        """Wake every stream so it ends (the app is stopping)."""
        self.closing = True
        self.notify()

    def notify(self) -> None:
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    def open(self) -> asyncio.Queue[None]:
        queue: asyncio.Queue[None] = asyncio.Queue(maxsize=1)
        self._queues.add(queue)
        return queue

    def close(self, queue: asyncio.Queue[None]) -> None:
        self._queues.discard(queue)


@dataclass
class Console:
    settings: ConsoleSettings
    db: Database
    auth: ConsoleAuth
    inventory: Inventory
    desk: PolicyDesk
    metrics: ConsoleMetrics
    changes: Changes
    donor: ConsoleDonor | None


CONSOLE = web.AppKey("fwrescue_console", Console)
SETTINGS = web.AppKey("fwrescue_console_settings", ConsoleSettings)


def create_console_app(settings: ConsoleSettings) -> web.Application:
    from fwrescue.console.dashboard import add_dashboard_routes, auth_middleware

    app = web.Application(middlewares=[auth_middleware], client_max_size=256 * 1024)
    app[SETTINGS] = settings
    add_dashboard_routes(app)
    app.cleanup_ctx.append(_lifecycle)

    async def end_streams(app: web.Application) -> None:
        if CONSOLE in app:
            app[CONSOLE].changes.shutdown()

    app.on_shutdown.append(end_streams)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    db = await Database.open(settings.state_dir)
    metrics = ConsoleMetrics()
    changes = Changes()
    inventory = Inventory(
        db, list(settings.agents), settings=settings.inventory, on_change=changes.notify,
        on_finished=lambda node, op: metrics.operation_finished(op),
        on_reachability=metrics.reachability)
    trust = TrustStore.from_files(settings.trust)
    desk = PolicyDesk(db, trust, inventory, on_change=changes.notify,
                      tick_s=settings.rollout_tick_s)
    auth = ConsoleAuth(db, limits=settings.login_limits)
    donor = None
    if settings.donate:
        donor = ConsoleDonor(repo=settings.repo, trust=list(settings.trust),
                             state_dir=settings.state_dir / "donor", network=settings.network,
                             donor_id=settings.donor_id)
    console = Console(settings, db, auth, inventory, desk, metrics, changes, donor)
    app[CONSOLE] = console
    listener: SsdpListener | None = None
    try:
        for username, password, role in settings.accounts:
            await auth.create_account(username, password, role)
        if donor is not None:
            await donor.start()
        await inventory.start()
        desk.start()
        if settings.discovery is not None:
            listener = _discovery(settings.discovery, inventory)
            await listener.start()
        yield
    finally:
        if listener is not None:
            await listener.stop()
        await desk.stop()
        await inventory.stop()
        if donor is not None:
            await donor.stop()
        await db.close()


def _discovery(discovery: DiscoverySettings, inventory: Inventory) -> SsdpListener:
    networks = [ipaddress.ip_network(n, strict=False) for n in discovery.networks]

    def announced(announcement: Announcement) -> None:
        base = announcement.base_url
        host = ipaddress.ip_address(urlsplit(base).hostname or "0.0.0.0")
        if not any(host in net for net in networks):
            log.info("SSDP: %s is outside the discovery networks, ignored", base)
            return
        if any(e.url == base for e in inventory.endpoints):
            return
        if len(inventory.endpoints) >= discovery.max_agents:
            log.warning("SSDP: %d agents watched already; %s ignored", discovery.max_agents,
                        base)
            return
        log.info("SSDP: discovered %s", base)
        inventory.add(AgentEndpoint(base, discovery.user, discovery.password))

    return SsdpListener(group=discovery.group, port=discovery.port,
                        interface=discovery.interface, on_announce=announced)


async def start_console(settings: ConsoleSettings, host: str = "127.0.0.1",
                        port: int = 0) -> tuple[web.AppRunner, str, Console]:
    """Serve a new console app; return the runner (``await runner.cleanup()``), the base URL
    and the running :class:`Console`."""
    app = create_console_app(settings)
    # open dashboard SSE streams are told to end at shutdown (on_shutdown); 1 s is ample
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, f"http://{host}:{bound}", app[CONSOLE]


def new_password() -> str:
    return secrets.token_urlsafe(12)
