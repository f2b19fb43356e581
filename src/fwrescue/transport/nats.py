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

Connection (:mod:`fwrescue.transport.nats_connection`, shared by the links of one agent
when opened through ``open_link``): :meth:`NatsLink.open` waits at most
``connect_timeout_s`` for a first connection and its subscriptions, then goes on while
the connection keeps trying in the background; a lost connection is retried with
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
import struct
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from fwrescue.errors import ConfigError, TransferError
from fwrescue.protocol.codec import MAX_DATAGRAM
from fwrescue.protocol.session import GROUP, Address, Destination
from fwrescue.transport.nats_connection import NatsConnection, NatsOptions, log_task_error

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


@dataclass
class NatsLinkStats:
    """What this link dropped before a session saw it, and how its connection fared while
    the link was attached."""

    received: int = 0
    sent: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    disconnects: int = 0
    reconnects: int = 0
    deferred: int = 0  # SOLICITs from another rack, handed over rack_first_delay_s later


class NatsLink:
    """A datagram link over a NATS cluster (see the module docstring).

    ``share`` (as :func:`~fwrescue.transport.link.open_link` passes it: the agent's
    ``TransportSettings``) attaches the link to the event loop's shared
    :class:`~fwrescue.transport.nats_connection.NatsConnection` for that key, so the links
    of one agent use one connection; without it the link has a connection of its own.
    """

    def __init__(self, options: NatsOptions, *, share: Hashable | None = None,
                 rng: random.Random | None = None) -> None:
        self.options = options
        self.endpoint = secrets.token_hex(16)
        self.stats = NatsLinkStats()
        self._share = share
        self._rng = rng
        self.connection: NatsConnection | None = None
        self._deliver: Callable[[bytes, Address], None] | None = None
        self._subscriptions: list[Subscription] = []
        self._subscribed = asyncio.Event()
        self._releasing: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def inbox(self) -> str:
        return f"{self.options.prefix}.ep.{self.endpoint}"

    @property
    def local_address(self) -> Address:
        return (NATS_HOST_PREFIX + self.endpoint, 0)

    @property
    def connected(self) -> bool:
        return (self.connection is not None and self.connection.connected
                and self._subscribed.is_set())

    @property
    def connected_url(self) -> str | None:
        return None if self.connection is None else self.connection.connected_url

    async def open(self, deliver: Callable[[bytes, Address], None]) -> None:
        """Attach to the connection; wait up to ``connect_timeout_s`` until subscribed.

        Never raises because no broker answers (the connection keeps trying in the
        background); raises ConfigError if a server rejects the credentials.
        """
        self._deliver = deliver
        if self._share is None:
            self.connection = NatsConnection(self.options, rng=self._rng)
        else:
            self.connection = NatsConnection.shared(self._share, self.options)
        self.connection.attach(self)
        ready: asyncio.Future[Any] = asyncio.ensure_future(self._subscribed.wait())
        failed = self.connection.auth_failed
        assert failed is not None
        waiters: set[asyncio.Future[Any]] = {ready, failed}
        done, _ = await asyncio.wait(waiters, timeout=self.options.connect_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if failed in done:
            self.close()
            await self.wait_closed()
            raise ConfigError("the NATS server rejected this agent's credentials "
                              "(check transport.user/password or nkey_seed_file)",
                              detail=failed.result())
        if not self.connected:
            log.warning("no NATS server of %s reachable yet; retrying in the background",
                        ",".join(self.options.servers))

    async def subscribe(self, client: Client) -> None:
        """Called by the connection once it is up: subscribe this link's subjects (nats-py
        replays them on every server it fails over to)."""
        if self._closed or self._subscribed.is_set() or self._subscriptions:
            return
        o = self.options
        for subject in (f"{o.prefix}.{o.site}.>", self.inbox):
            self._subscriptions.append(await client.subscribe(subject, cb=self._on_message))
        try:  # the server has our interest before our first publish
            await client.flush(timeout=max(1, round(o.connect_timeout_s)))
        except (TimeoutError, nats.errors.Error) as e:
            log.debug("NATS link %s: flush after subscribing: %s", self.endpoint[:8], e)
        self._subscribed.set()
        log.info("NATS link %s subscribed at %s", self.endpoint[:8], self.connected_url)

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
        client = None if self.connection is None else self.connection.client
        if client is None or not self._subscribed.is_set() or client.is_closed:
            self.stats.dropped["not connected"] += 1
            return
        self.stats.sent += 1
        task = asyncio.ensure_future(client.publish(subject, data, reply=self.inbox))
        task.add_done_callback(log_task_error)

    def close(self) -> None:
        """Drop this link's subscriptions and detach from the connection (the last link
        out closes it); finished by :meth:`wait_closed`."""
        if self._closed:
            return
        self._closed = True
        connection = self.connection
        if connection is None:
            return
        subscriptions, self._subscriptions = self._subscriptions, []
        connection.detach(self)
        if subscriptions and not connection.closed:
            self._releasing = asyncio.ensure_future(_unsubscribe(subscriptions))
            self._releasing.add_done_callback(log_task_error)

    async def wait_closed(self) -> None:
        """Wait (at most 5 s each) until :meth:`close` has released the subscriptions and,
        for the last link, the connection."""
        if self._releasing is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._releasing), 5.0)
        if self.connection is not None and self.connection.closed:
            await self.connection.wait_closed()

    # --- internals ---------------------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        if self._closed:
            return
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


async def _unsubscribe(subscriptions: list[Subscription]) -> None:
    for subscription in subscriptions:
        with contextlib.suppress(nats.errors.Error):
            await subscription.unsubscribe()

