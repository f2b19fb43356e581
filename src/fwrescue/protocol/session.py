"""The shape every sans-IO session shares, and where its datagrams go.

A transport shell (UDP multicast, NATS, a test network) drives any
:class:`DatagramSession` the same way: feed datagrams with ``receive_datagram``, send what
``datagrams_to_send`` returns, arm one timer from ``get_timer`` and call ``handle_timer``
when it fires, and drain ``next_event``. Sessions never read a clock or touch a socket.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal, Protocol

from .events import Event

__all__ = ["GROUP", "Address", "DatagramSession", "Destination"]


class _Group(Enum):
    GROUP = "group"


GROUP: Literal[_Group.GROUP] = _Group.GROUP
"""Destination sentinel: send to the multicast group (every agent on the segment)."""

Address = tuple[str, int]
Destination = Literal[_Group.GROUP] | Address


class DatagramSession(Protocol):
    """What a transport needs from a protocol session. ``now`` is wall-clock seconds."""

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None: ...

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Destination]]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def next_event(self) -> Event | None: ...
