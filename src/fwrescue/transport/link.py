"""The seam between a sans-IO session's driver and the network that carries its datagrams.

:class:`Link` is what :class:`~fwrescue.transport.udp.SessionDriver` needs: open with a
``deliver(data, source)`` callback, send to an address or to the group, close.
:func:`open_link` is the one place that chooses the concrete link from configuration, so
the recipient, the donor service and the console never name a transport class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from fwrescue.config import NetworkSettings
from fwrescue.protocol.session import Address, Destination

__all__ = ["Link", "open_link"]


class Link(Protocol):
    """A datagram carrier. ``send`` to :data:`~fwrescue.protocol.session.GROUP` reaches
    every endpoint of the fleet segment; to an ``Address``, one endpoint."""

    @property
    def local_address(self) -> Address: ...

    async def open(self, deliver: Callable[[bytes, Address], None]) -> None: ...

    def send(self, data: bytes, dest: Destination) -> None: ...

    def close(self) -> None: ...


def open_link(network: NetworkSettings) -> Link:
    """The link ``network`` configures (today: UDP multicast). Raises ConfigError."""
    from fwrescue.transport.udp import MulticastConfig, UdpMulticastLink

    return UdpMulticastLink(MulticastConfig(group=network.group, port=network.port,
                                            interface=network.interface))
