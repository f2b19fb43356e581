"""One NATS client connection, shared by the links of one agent.

A :class:`NatsConnection` owns a nats-py client: the first connection attempt, the
reconnects with backoff against every server of the cluster, the detection of rejected
credentials. :class:`~fwrescue.transport.nats.NatsLink`\\ s *attach* to it; each keeps its
own subscriptions (its endpoint inbox, its site's group subject), so a message for two
links of one connection reaches both, exactly as over two connections.

:meth:`NatsConnection.shared` hands out one connection per event loop and
:class:`~fwrescue.config.TransportSettings` (which name the agent: ``connection_name``
is its node id), so an agent's donor service and every fetch of its recipient use one
connection: a fetch costs two subscriptions, not a TCP connect, a TLS handshake and a
login. The connection closes when its last link detaches (and is forgotten then, so the
next link starts afresh).

Contracts: :meth:`attach` never raises because no broker answers; ``auth_failed``
resolves with the server's words if it rejects the credentials; nothing here ever
raises into the agent because a broker died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import weakref
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.client import Client

from fwrescue.config import TransportSettings, check_transport
from fwrescue.errors import ConfigError

if TYPE_CHECKING:
    from fwrescue.transport.nats import NatsLink

__all__ = ["NatsConnection", "NatsOptions"]

log = logging.getLogger(__name__)

_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                   dict[Hashable, NatsConnection]] = \
    weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class NatsOptions:
    """Validated connection options; :meth:`from_settings` raises ConfigError."""

    servers: tuple[str, ...]
    prefix: str
    site: str
    connect_timeout_s: float
    reconnect_wait_s: float
    reconnect_max_s: float
    tls: ssl.SSLContext | None
    credentials: dict[str, str]
    rack: str | None = None
    rack_first_delay_s: float = 0.0
    name: str = "fwrescue"  # the connection's name on the servers (``/connz``)

    @classmethod
    def from_settings(cls, t: TransportSettings) -> NatsOptions:
        check_transport(t)
        if not t.nats_servers:
            raise ConfigError("the NATS transport needs transport.nats_servers")
        credentials: dict[str, str] = {}
        if t.user is not None and t.password is not None:
            credentials = {"user": t.user, "password": t.password}
        if t.nkey_seed_file is not None:
            credentials = {"nkeys_seed_str": _nkey_seed(t)}
        return cls(servers=t.nats_servers, prefix=t.subject_prefix, site=t.site,
                   connect_timeout_s=t.connect_timeout_s,
                   reconnect_wait_s=t.reconnect_wait_s, reconnect_max_s=t.reconnect_max_s,
                   tls=_tls_context(t), credentials=credentials, rack=t.rack,
                   rack_first_delay_s=t.rack_first_delay_s,
                   name=t.connection_name or "fwrescue")


def _nkey_seed(t: TransportSettings) -> str:
    import nkeys  # type: ignore[import-untyped]

    assert t.nkey_seed_file is not None
    try:
        if t.nkey_seed_file.stat().st_size > 4096:
            raise ConfigError("transport.nkey_seed_file is too large for a seed",
                              path=str(t.nkey_seed_file))
        seed = t.nkey_seed_file.read_text("ascii").strip()
        nkeys.from_seed(seed.encode()).public_key  # noqa: B018 - decodes and checks the CRC
    except (OSError, UnicodeDecodeError, nkeys.NkeysError, ValueError) as e:
        raise ConfigError("transport.nkey_seed_file does not hold an nkey user seed",
                          path=str(t.nkey_seed_file), detail=type(e).__name__) from e
    if not seed.startswith("SU"):
        raise ConfigError("transport.nkey_seed_file must hold a user seed (SU...)",
                          path=str(t.nkey_seed_file))
    return seed


def _tls_context(t: TransportSettings) -> ssl.SSLContext | None:
    wants_tls = any(u.startswith("tls://") for u in t.nats_servers)
    if not (wants_tls or t.tls_ca_file or t.tls_cert_file):
        return None
    try:
        context = ssl.create_default_context(
            cafile=str(t.tls_ca_file) if t.tls_ca_file else None)
        if t.tls_cert_file is not None and t.tls_key_file is not None:
            context.load_cert_chain(str(t.tls_cert_file), str(t.tls_key_file))
    except (OSError, ssl.SSLError, ValueError) as e:
        raise ConfigError("cannot load the NATS TLS files", detail=str(e)) from e
    return context


class NatsConnection:
    """A nats-py client shared by the links attached to it (see the module docstring)."""

    def __init__(self, options: NatsOptions, *, rng: random.Random | None = None,
                 key: Hashable | None = None) -> None:
        self.options = options
        self.client: Client | None = None
        self.links: list[NatsLink] = []
        self.opened = 0  # links ever attached (a shared connection: more than one)
        self._rng = rng or random.Random()
        self._key = key
        self._connector: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._up = False  # connect() returned: attached links subscribe on their own
        self.auth_failed: asyncio.Future[str] | None = None

    @classmethod
    def shared(cls, key: Hashable, options: NatsOptions) -> NatsConnection:
        """This event loop's connection for ``key`` (created with ``options`` if none)."""
        per_loop = _SHARED.setdefault(asyncio.get_running_loop(), {})
        connection = per_loop.get(key)
        if connection is None or connection.closed:
            connection = per_loop[key] = cls(options, key=key)
        return connection

    @property
    def closed(self) -> bool:
        return self._closing is not None

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.is_connected and self._up

    @property
    def connected_url(self) -> str | None:
        client = self.client
        if client is None or not client.is_connected or client.connected_url is None:
            return None
        return str(client.connected_url.geturl())

    def attach(self, link: NatsLink) -> None:
        """Add ``link``; start connecting if it is the first. Its subscriptions are made
        as soon as the connection is up (at once if it is)."""
        self.links.append(link)
        self.opened += 1
        if self._connector is None:
            self.auth_failed = asyncio.get_running_loop().create_future()
            self._connector = asyncio.create_task(self._connect())
            self._connector.add_done_callback(log_task_error)
        elif self._up and self.client is not None:
            task = asyncio.ensure_future(link.subscribe(self.client))
            task.add_done_callback(log_task_error)

    def detach(self, link: NatsLink) -> None:
        """Remove ``link``; the last one out closes the connection (see :meth:`wait_closed`)."""
        with contextlib.suppress(ValueError):
            self.links.remove(link)
        if self.links or self.closed:
            return
        if self._key is not None:
            per_loop = _SHARED.get(asyncio.get_running_loop(), {})
            if per_loop.get(self._key) is self:
                del per_loop[self._key]
        if self._connector is not None:
            self._connector.cancel()
        client, self.client = self.client, None
        self._closing = asyncio.ensure_future(self._close(client))
        self._closing.add_done_callback(log_task_error)

    async def wait_closed(self) -> None:
        """Wait (at most 5 s) until a :meth:`detach` of the last link released the client."""
        for task in (self._connector, self._closing):
            if task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), 5.0)

    # --- internals ---------------------------------------------------------------------

    @staticmethod
    async def _close(client: Client | None) -> None:
        if client is not None and not client.is_closed:
            await client.close()

    async def _connect(self) -> None:
        o = self.options
        client = Client()
        self.client = client
        await client.connect(
            servers=list(o.servers), name=o.name, tls=o.tls,
            connect_timeout=max(1, round(o.connect_timeout_s)),
            allow_reconnect=True, max_reconnect_attempts=-1,
            reconnect_time_wait=o.reconnect_wait_s,  # type: ignore[arg-type]
            reconnect_to_server_handler=self._next_server,
            error_cb=self._on_error, disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected, ping_interval=5, max_outstanding_pings=2,
            **o.credentials)  # type: ignore[arg-type]
        self._up = True  # from here on a link attaching subscribes itself (no await above)
        for link in list(self.links):
            await link.subscribe(client)
        log.info("NATS connection %s up at %s for %d link(s)", o.name, self.connected_url,
                 len(self.links))

    def _next_server(self, servers: list[Any], info: dict[str, Any]) -> tuple[Any, float]:
        """nats-py's reconnect hook: the least-tried server, after an exponential backoff."""
        best = min(servers, key=lambda s: s.reconnects)
        attempt = min(best.reconnects, 16)
        delay = min(self.options.reconnect_max_s, self.options.reconnect_wait_s * 2 ** attempt)
        return best, delay * (0.5 + self._rng.random() / 2)

    async def _on_error(self, error: Exception) -> None:
        if isinstance(error, nats.errors.AuthorizationError) or "uthorization" in str(error):
            if self.auth_failed is not None and not self.auth_failed.done():
                self.auth_failed.set_result(str(error) or type(error).__name__)
            log.error("NATS server rejected the credentials: %s", error)
            return
        log.debug("NATS connection %s: %s", self.options.name, error)

    async def _on_disconnected(self) -> None:
        for link in self.links:
            link.stats.disconnects += 1
        if not self.closed:
            log.warning("NATS connection %s lost its server; failing over", self.options.name)

    async def _on_reconnected(self) -> None:
        for link in self.links:
            link.stats.reconnects += 1
        log.info("NATS connection %s reconnected to %s", self.options.name,
                 self.connected_url)


def log_task_error(task: asyncio.Future[Any]) -> None:
    """Done callback of the background tasks (connect, subscribe, publish, close): a
    failure is logged, never raised into the agent (the protocol's retransmissions cover
    a lost message)."""
    if task.cancelled():
        return
    with contextlib.suppress(asyncio.CancelledError):
        error = task.exception()
        if error is not None:
            log.warning("NATS task failed: %s", error)

