"""One group socket per agent, shared by all of its sessions.

Every datagram sent to the group is delivered to every socket that joined it, so each
socket an agent opens multiplies the fleet's receive work: with a donor socket and one
socket per recipient session, 256 agents would hold 512+ sockets and decode every
SOLICIT and OFFER 512+ times. :class:`SharedLink` opens **one** underlying link (from
:func:`~fwrescue.transport.link.open_link`, so UDP, NATS or both) and hands out
:meth:`SharedLink.attach` views that satisfy :class:`~fwrescue.transport.link.Link`:
each view gets every datagram the link receives, and sends through it (so replies to any
of the agent's sessions come back to the one unicast address, and each session drops
what is not its own, as it already must).

The underlying link opens with the first view and closes with the last.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fwrescue.errors import TransferError
from fwrescue.protocol.session import Address, Destination
from fwrescue.transport.link import Link

__all__ = ["SharedLink"]

log = logging.getLogger(__name__)

Deliver = Callable[[bytes, Address], None]


class SharedLink:
    """Multiplexes one :class:`Link` among many sessions (see the module docstring)."""

    def __init__(self, factory: Callable[[], Link]) -> None:
        self._factory = factory
        self._link: Link | None = None
        self._views: dict[int, Deliver] = {}
        self._next_id = 0

    def attach(self) -> Link:
        """A new view; open it as a session's link, close it when the session ends."""
        self._next_id += 1
        return _View(self, self._next_id)

    @property
    def views(self) -> int:
        return len(self._views)

    async def _open(self, view_id: int, deliver: Deliver) -> Address:
        if self._link is None:
            link = self._factory()
            await link.open(self._deliver)
            self._link = link
        self._views[view_id] = deliver
        return self._link.local_address

    def _close(self, view_id: int) -> None:
        self._views.pop(view_id, None)
        if not self._views and self._link is not None:
            link, self._link = self._link, None
            link.close()

    def _send(self, data: bytes, dest: Destination) -> None:
        if self._link is None:
            raise TransferError("shared link is not open")
        self._link.send(data, dest)

    def _deliver(self, data: bytes, addr: Address) -> None:
        for deliver in list(self._views.values()):
            try:
                deliver(data, addr)
            except Exception:  # one session's bug must not starve the others
                log.exception("a session failed on a datagram")


class _View:
    def __init__(self, shared: SharedLink, view_id: int) -> None:
        self._shared = shared
        self._id = view_id
        self._address: Address | None = None

    @property
    def local_address(self) -> Address:
        if self._address is None:
            raise TransferError("link is not open")
        return self._address

    async def open(self, deliver: Deliver) -> None:
        self._address = await self._shared._open(self._id, deliver)

    def send(self, data: bytes, dest: Destination) -> None:
        if self._address is None:
            raise TransferError("link is not open")
        self._shared._send(data, dest)

    def close(self) -> None:
        if self._address is not None:
            self._address = None
            self._shared._close(self._id)
