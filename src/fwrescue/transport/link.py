"""The seam between a sans-IO session's driver and the network that carries its datagrams.

:class:`Link` is what :class:`~fwrescue.transport.udp.SessionDriver` needs: open with a
``deliver(data, source)`` callback, send to an address or to the group, close.
:func:`open_link` is the one place that chooses the concrete link from configuration, so
the recipient, the donor service and the console never name a transport class:

* ``[transport] kind = "udp"`` (the default): :class:`~fwrescue.transport.udp.UdpMulticastLink`;
* ``kind = "nats"``: a :class:`~fwrescue.transport.nats.NatsLink`, wrapped in a
  :class:`DualLink` that sends group messages by multicast *only while no NATS server is
  reachable, or while multicast neighbours are heard* (``multicast_fallback = true``,
  the default), so an agent whose broker is down still negotiates on its own segment —
  and is answered there by neighbours whose broker is up — and still has its
  predetermined sources;
* ``kind = "both"``: a :class:`DualLink` that sends every group message on both and
  delivers from both — a bridge-free dual stack. A message heard twice is dropped by the
  codec's replay cache (same sender, same nonce), so sessions see it once.

Every NATS link opened here shares its event loop's connection for the same
``[transport]`` settings, which name the agent (``connection_name``, its node id): the
donor service and every fetch of one agent use one NATS connection
(:mod:`fwrescue.transport.nats_connection`).

A unicast destination goes out on the link it names: ``("nats:<endpoint>", 0)`` over
NATS, an ``(ip, port)`` by UDP. Replies therefore follow the path the request came by.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from fwrescue.config import NetworkSettings
from fwrescue.errors import TransferError
from fwrescue.protocol.session import GROUP, Address, Destination

if TYPE_CHECKING:
    from fwrescue.transport.nats import NatsLink
    from fwrescue.transport.udp import UdpMulticastLink

__all__ = ["DualLink", "Link", "open_link"]

log = logging.getLogger(__name__)


class Link(Protocol):
    """A datagram carrier. ``send`` to :data:`~fwrescue.protocol.session.GROUP` reaches
    every endpoint of the fleet segment; to an ``Address``, one endpoint."""

    @property
    def local_address(self) -> Address: ...

    async def open(self, deliver: Callable[[bytes, Address], None]) -> None: ...

    def send(self, data: bytes, dest: Destination) -> None: ...

    def close(self) -> None: ...


class DualLink:
    """A NATS link and a multicast link under one :class:`Link`.

    ``always_multicast`` (``kind = "both"``) sends group messages on both links; otherwise
    (``kind = "nats"``) on NATS while it is connected, and by multicast too while it is
    not or while a multicast datagram arrived within the last ``NEIGHBOUR_WINDOW_S``
    (a neighbour on the segment is falling back: it must hear the answer; the neighbours
    that answer it are heard too, so the segment runs dual-stack until its group traffic
    has been quiet for the window — duplicates only, dropped as below). Both links
    always deliver; a copy heard on both is dropped by the codec's replay cache. If the
    multicast socket cannot be opened the link runs on NATS alone (and says so in the
    log); if neither can carry, sends are dropped.
    """

    NEIGHBOUR_WINDOW_S = 30.0

    def __init__(self, nats: NatsLink, udp: UdpMulticastLink, *,
                 always_multicast: bool) -> None:
        self.nats = nats
        self.udp: UdpMulticastLink | None = udp
        self.always_multicast = always_multicast
        self.multicast_sends = 0
        self._multicast_heard_at: float | None = None

    @property
    def local_address(self) -> Address:
        return self.nats.local_address

    async def open(self, deliver: Callable[[bytes, Address], None]) -> None:
        def from_multicast(data: bytes, source: Address) -> None:
            if self.udp is not None and source != self.udp.local_address:  # not our own echo
                self._multicast_heard_at = time.monotonic()
            deliver(data, source)

        if self.udp is not None:
            try:
                await self.udp.open(from_multicast)
            except TransferError as e:
                log.warning("multicast unavailable, NATS only: %s", e)
                self.udp = None
        try:
            await self.nats.open(deliver)
        except BaseException:
            if self.udp is not None:
                self.udp.close()
            raise

    def send(self, data: bytes, dest: Destination) -> None:
        from fwrescue.transport.nats import is_nats_address

        if dest is not GROUP:
            if is_nats_address(dest):
                self.nats.send(data, dest)
            elif self.udp is not None:
                self.udp.send(data, dest)
            return
        nats_up = self.nats.connected
        if nats_up or self.udp is None:
            self.nats.send(data, GROUP)
        heard = self._multicast_heard_at
        neighbours = heard is not None and time.monotonic() - heard < self.NEIGHBOUR_WINDOW_S
        if self.udp is not None and (self.always_multicast or not nats_up or neighbours):
            self.multicast_sends += 1
            self.udp.send(data, GROUP)

    def close(self) -> None:
        self.nats.close()
        if self.udp is not None:
            self.udp.close()

    async def wait_closed(self) -> None:
        await self.nats.wait_closed()


def open_link(network: NetworkSettings) -> Link:
    """The link ``network`` configures (``network.transport.kind``). Raises ConfigError
    for a bad ``[transport]`` (subjects, credentials, TLS files) before anything opens."""
    from fwrescue.transport.udp import MulticastConfig, UdpMulticastLink

    transport = network.transport
    udp = UdpMulticastLink(MulticastConfig(group=network.group, port=network.port,
                                           interface=network.interface))
    if transport.kind == "udp":
        return udp
    from fwrescue.transport.nats import NatsLink, NatsOptions

    # one connection per event loop and [transport] (which names the agent): per agent
    nats = NatsLink(NatsOptions.from_settings(transport), share=transport)
    if transport.kind == "nats" and not transport.multicast_fallback:
        return nats
    return DualLink(nats, udp, always_multicast=transport.kind == "both")
