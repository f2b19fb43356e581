"""A fake datagram network with a virtual clock that joins real protocol sessions.

No mocks: real RecipientSession and DonorResponder objects exchange real encoded
datagrams. Multicast to GROUP reaches every node (the sender too, like IP_MULTICAST_LOOP);
unicast reaches the node with that address. Every datagram takes ``latency`` seconds.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from fwrescue.donor.responder import DonorIdentity, DonorLimits, DonorResponder, OfferableImage
from fwrescue.protocol.codec import Codec
from fwrescue.protocol.events import Event
from fwrescue.protocol.messages import DonorKind
from fwrescue.protocol.policy import Policy, get_policy
from fwrescue.protocol.recipient import RecipientIdentity, RecipientSession, RecipientTimers
from fwrescue.protocol.session import GROUP, Address, DatagramSession, Destination

FLEET_KEY = b"k" * 32
T0 = 1_700_000_000.0  # virtual wall clock: codec timestamps look realistic


@dataclass
class Node:
    session: DatagramSession
    addr: Address
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class Sent:
    at: float
    src: Address
    dest: Destination
    data: bytes


class FakeNetwork:
    def __init__(self, *, latency: float = 0.001, now: float = T0,
                 lose: Callable[[Sent], bool] | None = None) -> None:
        self.latency = latency
        self.now = now
        self.lose = lose
        self.nodes: dict[Address, Node] = {}
        self.sent: list[Sent] = []
        self._queue: list[tuple[float, int, Address, Address, bytes]] = []
        self._seq = itertools.count()
        self._ports = itertools.count(40000)

    def add(self, session: DatagramSession) -> Node:
        addr = ("127.0.0.1", next(self._ports))
        node = self.nodes[addr] = Node(session, addr)
        return node

    def node_of(self, session: DatagramSession) -> Node:
        return next(n for n in self.nodes.values() if n.session is session)

    def flush(self, node: Node) -> None:
        for data, dest in node.session.datagrams_to_send(self.now):
            sent = Sent(self.now, node.addr, dest, data)
            self.sent.append(sent)
            if self.lose is not None and self.lose(sent):
                continue
            targets = list(self.nodes) if dest is GROUP else [dest]
            for target in targets:
                if target in self.nodes:
                    heapq.heappush(self._queue, (self.now + self.latency, next(self._seq),
                                                 target, node.addr, data))
        while (event := node.session.next_event()) is not None:
            node.events.append(event)

    def inject(self, data: bytes, src: Address, dest: Address, delay: float = 0.0) -> None:
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), dest, src, data))

    def run(self, until: float, max_steps: int = 200_000) -> None:
        """Advance virtual time to ``until``, delivering datagrams and firing timers."""
        for node in list(self.nodes.values()):
            self.flush(node)
        for _ in range(max_steps):
            t_msg = self._queue[0][0] if self._queue else float("inf")
            timers = [(t, n) for n in self.nodes.values()
                      if (t := n.session.get_timer()) is not None]
            t_timer, timer_node = min(timers, key=lambda p: p[0], default=(float("inf"), None))
            t = min(t_msg, t_timer)
            if t > until:
                break
            self.now = max(self.now, t)
            if t_msg <= t_timer:
                _, _, dest, src, data = heapq.heappop(self._queue)
                node = self.nodes[dest]
                node.session.receive_datagram(data, src, self.now)
            else:
                assert timer_node is not None
                node = timer_node
                node.session.handle_timer(self.now)
            self.flush(node)
        else:
            raise AssertionError("fake network hit its step bound")
        self.now = max(self.now, until)


def image(n: int, *, version: str = "1.0.0", security_version: int = 1,
          target: str = "bios", machines: tuple[str, ...] = ("board-a",)) -> OfferableImage:
    return OfferableImage(manifest_digest=f"{n:064x}", image_sha256=f"{n + 1000:064x}",
                          target=target, machine_names=machines, version=version,
                          security_version=security_version, size=1 << 20)


def make_codec(seed: int, key: bytes | None = FLEET_KEY) -> Codec:
    return Codec(key, 30.0, rng=random.Random(seed))


def make_recipient(*, seed: int = 1, node_id: str = "rcp-1", policy: Policy | None = None,
                   timers: RecipientTimers | None = None, min_security_version: int = 0,
                   topology: str | None = "r1", key: bytes | None = FLEET_KEY,
                   ) -> RecipientSession:
    identity = RecipientIdentity(node_id=node_id, target="bios", machine_name="board-a",
                                 installed_version="1.0.0", security_version=1,
                                 min_security_version=min_security_version, topology=topology)
    return RecipientSession(identity=identity, timers=timers or RecipientTimers(),
                            policy=policy or get_policy("first"), codec=make_codec(seed, key),
                            rng=random.Random(seed))


def make_donor(donor_id: str, images: list[OfferableImage], *, seed: int = 2,
               kind: DonorKind = DonorKind.PEER, limits: DonorLimits | None = None,
               topology: str | None = "r1", key: bytes | None = FLEET_KEY) -> DonorResponder:
    identity = DonorIdentity(donor_id=donor_id, kind=kind,
                             transfer_url=f"http://127.0.0.1:8{seed % 1000:03d}",
                             topology=topology)
    return DonorResponder(identity=identity, catalog=lambda: images,
                          limits=limits or DonorLimits(), codec=make_codec(seed + 7, key),
                          rng=random.Random(seed))


E = TypeVar("E")


def of_type(events: list[Event], cls: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, cls)]
