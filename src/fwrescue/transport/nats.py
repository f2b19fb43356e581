"""The negotiation over a NATS cluster: a :class:`~fwrescue.transport.link.Link` whose
datagrams are NATS message payloads.

The payload is exactly the UDP datagram (same :class:`~fwrescue.protocol.codec.Codec`:
size cap, strict decode, HMAC, replay window); NATS only carries it. Subjects
(``P`` = ``subject_prefix``, ``S`` = ``site``; docs/protocol.md, "NATS transport")::

    P.S.R.solicit.<target>.<board>   SOLICIT (to the group)
    P.S.R.offer.<target>             OFFER   (to the group, so other donors overhear)
    P.S.R.<type>                     any other group message (accept, report, ...)
    P.ep.<endpoint>                  unicast to one endpoint (ACK/NAK/DECLINE/RELEASE)

``R`` is the *sender's* rack (``_`` for a link in no rack, e.g. a console). Every link
subscribes to ``P.S.>`` — its whole site, every rack — and to its own ``P.ep.<endpoint>``;
a fleet-wide observer may subscribe to ``P.*.*.>``. *Rack first*: a link in a rack hands
a SOLICIT published by another rack to its session ``rack_first_delay_s`` later than one
of its own rack (counted in ``stats.deferred``), so the rack's idle donors offer first and
the donors' duplicate-answer suppression keeps the rest of the site quiet when the rack
can serve; the site still hears and answers every SOLICIT. ``<endpoint>`` is
``<endpoint>`` is 32 random hex digits drawn when the link opens. Each publish carries
the sender's endpoint subject as its NATS *reply* subject: that is the sender's address,
``("nats:<endpoint>", 0)`` to the sessions, like a UDP source address. The group
subject is chosen from the (unauthenticated) message body only for routing, and the rack
it names only orders delivery; receivers authenticate the payload, never the subject.

Bad input: a payload over :data:`~fwrescue.protocol.codec.MAX_DATAGRAM` or a message
without a well-formed reply subject is dropped and counted in :attr:`NatsLink.stats`
before the session sees it; everything else is decoded and counted by the session.

Connection: :meth:`NatsLink.open` waits at most ``connect_timeout_s`` for a first
connection and then keeps trying in the background; a lost connection is retried with
exponential backoff (``reconnect_wait_s`` doubling to ``reconnect_max_s``, with jitter)
against every server of the cluster. The link never raises because a broker is down;
:attr:`NatsLink.connected` says whether it can carry a message now (the fallback link
in :mod:`fwrescue.transport.link` sends by multicast while it cannot). A server that
rejects the credentials is a :class:`~fwrescue.errors.ConfigError` from ``open``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import secrets
import ssl
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from fwrescue.config import TransportSettings, check_transport
from fwrescue.errors import ConfigError, TransferError
from fwrescue.protocol.codec import MAX_DATAGRAM
from fwrescue.protocol.session import GROUP, Address, Destination

__all__ = ["NATS_HOST_PREFIX", "NatsLink", "NatsOptions", "group_subject", "is_nats_address"]

log = logging.getLogger(__name__)

#: the host part of a NATS endpoint's synthetic address ``("nats:<endpoint>", 0)``
NATS_HOST_PREFIX = "nats:"
_ENDPOINT = re.compile(r"[0-9a-f]{32}")
#: the rack token of a link in no rack
NO_RACK = "_"
_TOKEN_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_HEADER = struct.Struct("!4sBBH")  # the codec's header: magic, version, flags, body length


def is_nats_address(addr: Address) -> bool:
    """Whether ``addr`` names a NATS endpoint (else it is a UDP ``(ip, port)``)."""
    return addr[0].startswith(NATS_HOST_PREFIX)


def _token(value: object) -> str:
    """One subject token from an identifier: anything outside [A-Za-z0-9_-] becomes ``_``."""
    text = _TOKEN_SAFE.sub("_", str(value))[:64]
    return text or "_"


def group_subject(prefix: str, site: str, data: bytes, rack: str | None = None) -> str:
    """The group subject for one encoded message from a link in ``rack`` (routing only;
    never trusted)."""
    scope = f"{prefix}.{site}.{rack or NO_RACK}"
    kind, body = "other", None
    try:
        _, _, _, length = _HEADER.unpack_from(data)
        body = json.loads(data[_HEADER.size:_HEADER.size + length])
    except (struct.error, ValueError):
        pass
    if isinstance(body, dict) and isinstance(body.get("t"), str):
        kind = _token(body["t"])
        if kind == "solicit":
            return (f"{scope}.solicit.{_token(body.get('target'))}."
                    f"{_token(body.get('machine_name'))}")
        if kind == "offer":
            return f"{scope}.offer.{_token(body.get('target'))}"
    return f"{scope}.{kind}"


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
                   rack_first_delay_s=t.rack_first_delay_s)


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


@dataclass
class NatsLinkStats:
    """What this link dropped before a session saw it, and how its connection fared."""

    received: int = 0
    sent: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    disconnects: int = 0
    reconnects: int = 0
    deferred: int = 0  # SOLICITs from another rack, handed over rack_first_delay_s later


class NatsLink:
    """A datagram link over a NATS cluster (see the module docstring)."""

    def __init__(self, options: NatsOptions, *, name: str = "fwrescue",
                 rng: random.Random | None = None) -> None:
        self.options = options
        self.endpoint = secrets.token_hex(16)
        self.stats = NatsLinkStats()
        self._name = name
        self._rng = rng or random.Random()
        self._client: Client | None = None
        self._deliver: Callable[[bytes, Address], None] | None = None
        self._connector: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None
        self._auth_failed: asyncio.Future[str] | None = None
        self._closed = False
        self._subscribed = False

    @property
    def inbox(self) -> str:
        return f"{self.options.prefix}.ep.{self.endpoint}"

    @property
    def local_address(self) -> Address:
        return (NATS_HOST_PREFIX + self.endpoint, 0)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected and self._subscribed

    @property
    def connected_url(self) -> str | None:
        client = self._client
        if client is None or not client.is_connected or client.connected_url is None:
            return None
        return str(client.connected_url.geturl())

    async def open(self, deliver: Callable[[bytes, Address], None]) -> None:
        """Start connecting; wait up to ``connect_timeout_s`` for the first connection.

        Never raises because no broker answers (the link keeps trying in the background);
        raises ConfigError if a server rejects the credentials.
        """
        self._deliver = deliver
        loop = asyncio.get_running_loop()
        self._auth_failed = loop.create_future()
        self._connector = asyncio.create_task(self._connect())
        self._connector.add_done_callback(_log_publish_error)
        waiter: asyncio.Future[Any] = asyncio.ensure_future(asyncio.shield(self._connector))
        failed: asyncio.Future[Any] = self._auth_failed
        done, _ = await asyncio.wait({waiter, failed},
                                     timeout=self.options.connect_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._auth_failed in done:
            detail = self._auth_failed.result()
            self.close()
            await self.wait_closed()
            raise ConfigError("the NATS server rejected this agent's credentials "
                              "(check transport.user/password or nkey_seed_file)",
                              detail=detail)
        if not self.connected:
            log.warning("no NATS server of %s reachable yet; retrying in the background",
                        ",".join(self.options.servers))

    def send(self, data: bytes, dest: Destination) -> None:
        """Publish ``data`` to the group subject or to a NATS endpoint's inbox.

        Dropped (and counted) while never connected or when ``dest`` is a UDP address;
        while reconnecting, the client buffers it and publishes after the failover.
        Raises TransferError only after :meth:`close`."""
        if self._closed:
            raise TransferError("link is not open")
        if dest is GROUP:
            subject = group_subject(self.options.prefix, self.options.site, data,
                                    self.options.rack)
        elif is_nats_address(dest):
            subject = f"{self.options.prefix}.ep.{dest[0][len(NATS_HOST_PREFIX):]}"
        else:  # a UDP (ip, port): not reachable from here; never raised into the driver
            self.stats.dropped["udp destination"] += 1
            return
        client = self._client
        if client is None or not self._subscribed or client.is_closed:
            self.stats.dropped["not connected"] += 1
            return
        self.stats.sent += 1
        task = asyncio.ensure_future(client.publish(subject, data, reply=self.inbox))
        task.add_done_callback(_log_publish_error)

    def close(self) -> None:
        """Stop connecting and close the connection (finished by :meth:`wait_closed`)."""
        self._closed = True
        if self._connector is not None:
            self._connector.cancel()
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            self._closing = asyncio.ensure_future(client.close())
            self._closing.add_done_callback(_log_publish_error)

    async def wait_closed(self) -> None:
        """Wait (at most 5 s) until :meth:`close` has released the connection."""
        for task in (self._connector, self._closing):
            if task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), 5.0)

    # --- internals ---------------------------------------------------------------------

    async def _connect(self) -> None:
        o = self.options
        client = Client()
        self._client = client
        await client.connect(
            servers=list(o.servers), name=self._name, tls=o.tls,
            connect_timeout=max(1, round(o.connect_timeout_s)),
            allow_reconnect=True, max_reconnect_attempts=-1,
            reconnect_time_wait=o.reconnect_wait_s,  # type: ignore[arg-type]
            reconnect_to_server_handler=self._next_server,
            error_cb=self._on_error, disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected, ping_interval=5, max_outstanding_pings=2,
            **o.credentials)  # type: ignore[arg-type]
        # nats-py keeps subscriptions across reconnects (it replays them on the new server)
        await client.subscribe(f"{o.prefix}.{o.site}.>", cb=self._on_message)
        await client.subscribe(self.inbox, cb=self._on_message)
        try:  # the server has our interest before our first publish
            await client.flush(timeout=max(1, round(o.connect_timeout_s)))
        except (TimeoutError, nats.errors.Error) as e:
            log.debug("NATS link %s: flush after subscribing: %s", self.endpoint[:8], e)
        self._subscribed = True
        log.info("NATS link %s connected to %s", self.endpoint[:8], self.connected_url)

    def _next_server(self, servers: list[Any], info: dict[str, Any]) -> tuple[Any, float]:
        """nats-py's reconnect hook: the least-tried server, after an exponential backoff."""
        best = min(servers, key=lambda s: s.reconnects)
        attempt = min(best.reconnects, 16)
        delay = min(self.options.reconnect_max_s, self.options.reconnect_wait_s * 2 ** attempt)
        return best, delay * (0.5 + self._rng.random() / 2)

    async def _on_message(self, msg: Msg) -> None:
        if len(msg.data) > MAX_DATAGRAM:
            self.stats.dropped["oversize"] += 1
            return
        prefix = f"{self.options.prefix}.ep."
        endpoint = msg.reply[len(prefix):] if msg.reply.startswith(prefix) else ""
        if _ENDPOINT.fullmatch(endpoint) is None:
            self.stats.dropped["bad reply subject"] += 1
            return
        self.stats.received += 1
        data, source = bytes(msg.data), (NATS_HOST_PREFIX + endpoint, 0)
        if self._from_another_rack(msg.subject):
            self.stats.deferred += 1
            asyncio.get_running_loop().call_later(
                self.options.rack_first_delay_s, self._hand_over, data, source)
            return
        self._hand_over(data, source)

    def _hand_over(self, data: bytes, source: Address) -> None:
        if self._deliver is not None and not self._closed:
            self._deliver(data, source)

    def _from_another_rack(self, subject: str) -> bool:
        """Whether ``subject`` is a SOLICIT of another rack of this link's site (and this
        link, being in a rack, lets its own rack answer first)."""
        o = self.options
        if o.rack is None or o.rack_first_delay_s <= 0:
            return False
        tokens = subject[len(o.prefix) + 1:].split(".")
        return (subject.startswith(o.prefix + ".") and len(tokens) >= 3
                and tokens[0] == o.site and tokens[2] == "solicit" and tokens[1] != o.rack)

    async def _on_error(self, error: Exception) -> None:
        if isinstance(error, nats.errors.AuthorizationError) or "uthorization" in str(error):
            if self._auth_failed is not None and not self._auth_failed.done():
                self._auth_failed.set_result(str(error) or type(error).__name__)
            log.error("NATS server rejected the credentials: %s", error)
            return
        log.debug("NATS link %s: %s", self.endpoint[:8], error)

    async def _on_disconnected(self) -> None:
        self.stats.disconnects += 1
        if not self._closed:
            log.warning("NATS link %s lost its server; failing over", self.endpoint[:8])

    async def _on_reconnected(self) -> None:
        self.stats.reconnects += 1
        log.info("NATS link %s reconnected to %s", self.endpoint[:8], self.connected_url)


def _log_publish_error(task: asyncio.Future[Any]) -> None:
    """Done callback of the link's background tasks (connect, publish, close): a failure
    is logged, never raised into the agent (the protocol's retransmissions cover it)."""
    if task.cancelled():
        return
    with contextlib.suppress(asyncio.CancelledError):
        error = task.exception()
        if error is not None:
            log.warning("NATS link task failed: %s", error)
