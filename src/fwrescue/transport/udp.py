"""UDP multicast transport: the asyncio shell around a sans-IO negotiation session.

Each endpoint owns two sockets:

* a **group socket** bound to ``(group, port)`` with ``SO_REUSEADDR`` + ``SO_REUSEPORT``
  and joined to the group on ``interface``; it receives SOLICIT/OFFER/ACCEPT. Linux hands
  a copy of every multicast datagram to every socket bound to the port that joined the
  group, in this process and in others. Binding to the group address (not 0.0.0.0) keeps
  unicast datagrams to that port out of it.
* a **unicast socket** bound to ``(interface, 0)`` with ``IP_MULTICAST_IF = interface``,
  ``IP_MULTICAST_LOOP = 1`` and ``IP_MULTICAST_TTL = ttl``; every datagram is sent from
  it, so its address is the reply address peers see, and ACK/NAK/DECLINE/RELEASE come
  back to it.

On Linux loopback this works without root and without a multicast route: ``lo`` lacks
the ``MULTICAST`` flag, yet a join on 127.0.0.1 plus ``IP_MULTICAST_IF = 127.0.0.1``
delivers (checked on this project's CI kernel; see docs/protocol.md).

:class:`SessionDriver` runs any :class:`~fwrescue.protocol.session.DatagramSession`:
datagrams in with ``clock()``, datagrams out, one timer armed from ``get_timer()``, and
events to a queue or an async callback. ``clock`` is wall time (``time.time``) by
default because message timestamps are compared across machines (replay window).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from typing import TYPE_CHECKING

from fwrescue.errors import ConfigError, TransferError
from fwrescue.protocol.events import Event
from fwrescue.protocol.session import GROUP, Address, DatagramSession, Destination

if TYPE_CHECKING:
    from fwrescue.transport.link import Link

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_PORT",
    "MulticastConfig",
    "SessionDriver",
    "UdpMulticastLink",
]

log = logging.getLogger(__name__)

# 239.255.0.0/16 is the IPv4 organization-local scope (RFC 2365): it never leaves the site.
DEFAULT_GROUP = "239.255.77.77"
DEFAULT_PORT = 17700


@dataclass(frozen=True, kw_only=True)
class MulticastConfig:
    """Where the negotiation runs. Raises ConfigError on a bad value."""

    group: str = DEFAULT_GROUP
    port: int = DEFAULT_PORT
    interface: str = "127.0.0.1"  # the management NIC's IPv4 address on a real BMC
    ttl: int = 1  # one L2 segment; routed sites use the NATS transport

    def __post_init__(self) -> None:
        try:
            group, iface = ip_address(self.group), ip_address(self.interface)
        except ValueError as e:
            raise ConfigError("group and interface must be IPv4 addresses") from e
        if not (isinstance(group, IPv4Address) and group.is_multicast):
            raise ConfigError("group must be an IPv4 multicast address", group=self.group)
        if not isinstance(iface, IPv4Address):
            raise ConfigError("interface must be an IPv4 address", interface=self.interface)
        if not 1 <= self.port <= 65535 or not 1 <= self.ttl <= 255:
            raise ConfigError("port must be 1..65535 and ttl 1..255")


def _group_socket(cfg: MulticastConfig) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((cfg.group, cfg.port))
        mreq = socket.inet_aton(cfg.group) + socket.inet_aton(cfg.interface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _unicast_socket(cfg: MulticastConfig) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.bind((cfg.interface, 0))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                        socket.inet_aton(cfg.interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, cfg.ttl)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, deliver: Callable[[bytes, Address], None]) -> None:
        self._deliver = deliver

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        host, port = addr[0], addr[1]
        if isinstance(host, str) and isinstance(port, int):
            self._deliver(data, (host, port))

    def error_received(self, exc: Exception) -> None:
        # e.g. ICMP port unreachable after a peer went away: the protocol's timers cope.
        log.debug("udp socket error: %s", exc)


class UdpMulticastLink:
    """A group socket and a unicast socket on one interface (see the module docstring)."""

    def __init__(self, config: MulticastConfig | None = None) -> None:
        self.config = config or MulticastConfig()
        self._transports: list[asyncio.DatagramTransport] = []
        self._unicast: asyncio.DatagramTransport | None = None
        self._address: Address | None = None

    @property
    def local_address(self) -> Address:
        """The unicast (reply) address. Raises TransferError before :meth:`open`."""
        if self._address is None:
            raise TransferError("link is not open")
        return self._address

    async def open(self, deliver: Callable[[bytes, Address], None]) -> None:
        """Create and join the sockets; raise TransferError if the OS refuses."""
        loop = asyncio.get_running_loop()
        try:
            socks = [_unicast_socket(self.config), _group_socket(self.config)]
        except OSError as e:
            raise TransferError("cannot open the multicast link", group=self.config.group,
                                port=self.config.port, detail=str(e)) from e
        for sock in socks:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(deliver),
                                                               sock=sock)
            self._transports.append(transport)
        self._unicast = self._transports[0]
        name = socks[0].getsockname()
        self._address = (str(name[0]), int(name[1]))

    def send(self, data: bytes, dest: Destination) -> None:
        if self._unicast is None:
            raise TransferError("link is not open")
        target = (self.config.group, self.config.port) if dest is GROUP else dest
        self._unicast.sendto(data, target)

    def close(self) -> None:
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        self._unicast = None


class SessionDriver:
    """Runs one sans-IO session over a link; events go to ``events`` or ``on_event``.

    Call session API methods through :meth:`act` so their datagrams are sent at once.
    """

    def __init__(self, session: DatagramSession, link: Link, *,
                 on_event: Callable[[Event], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.session = session
        self.link = link
        self.clock = clock
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._on_event = on_event
        self._timer: asyncio.TimerHandle | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        await self.link.open(self._datagram_received)
        if self._on_event is not None:
            self._consumer = asyncio.create_task(self._consume(self._on_event))
        self._pump()

    def act(self, call: Callable[[float], None]) -> None:
        """Run ``call(now)`` against the session (e.g. ``lambda now: s.start(now)``), then pump."""
        call(self.clock())
        self._pump()

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.link.close()
        wait_closed = getattr(self.link, "wait_closed", None)  # links that close async (NATS)
        if wait_closed is not None:
            await wait_closed()
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer

    async def __aenter__(self) -> SessionDriver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _datagram_received(self, data: bytes, addr: Address) -> None:
        if not self._closed:
            self.session.receive_datagram(data, addr, self.clock())
            self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        if not self._closed:
            self.session.handle_timer(self.clock())
            self._pump()

    def _pump(self) -> None:
        now = self.clock()
        for data, dest in self.session.datagrams_to_send(now):
            self.link.send(data, dest)
        while (event := self.session.next_event()) is not None:
            self.events.put_nowait(event)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.session.get_timer()
        if deadline is not None and not self._closed:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, deadline - now), self._on_timer)

    async def _consume(self, on_event: Callable[[Event], Awaitable[None]]) -> None:
        while True:
            await on_event(await self.events.get())
