"""A simulated fleet: segments, the console, the broker, and who hears which datagram.

**Segments and the broker.** Nodes sit in L2 segments of ``segment_size`` (a rack);
boards are dealt round-robin, so a rack mixes boards. A SOLICIT reaches (1) every node of
the sender's segment whose donor offers that board's image (multicast), (2) the console
(on every segment, or on the broker), and (3) ``broker_fanout`` donors of the same board
elsewhere in the fleet, drawn at random among those that offer the image — a broker per
board that hands each SOLICIT to a few subscribers of the image's subject (as NATS queue
groups would), instead of to all 10,000.

**Exact reductions** (the cores decide the same; only their ``ignored``/``skipped``
counters differ): a SOLICIT is not delivered to a node whose donor has nothing to offer
for it (it would only count a skip); an OFFER reaches the soliciting session and the
donors still waiting to offer for that (recipient, xid) (others would only count it);
an ACCEPT reaches the donors that track that (recipient, xid).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from fwrescue.donor.responder import OfferableImage
from fwrescue.protocol.recipient import RecipientSession
from fwrescue.protocol.session import GROUP, Address, Destination
from fwrescue.protocol.states import DonorState

from .loop import EventLoop
from .network import Link, Network
from .node import NodeRole, SimNode
from .params import SimParams

__all__ = ["Fleet"]

_SOLICIT = b'{"t":"solicit"'
_ACCEPT = b'{"t":"accept"'


@dataclass
class _Solicitation:
    """One session's (recipient, xid): who heard its SOLICITs."""

    node: SimNode
    slot: int
    session: RecipientSession
    audience: dict[str, SimNode] = field(default_factory=dict)


class _Pool:
    """Nodes offering one board's image: O(1) add, remove and random sample."""

    def __init__(self) -> None:
        self._items: list[SimNode] = []
        self._where: dict[str, int] = {}

    def add(self, node: SimNode) -> None:
        if node.name not in self._where:
            self._where[node.name] = len(self._items)
            self._items.append(node)

    def discard(self, node: SimNode) -> None:
        at = self._where.pop(node.name, None)
        if at is None:
            return
        tail = self._items.pop()
        if at < len(self._items):
            self._items[at] = tail
            self._where[tail.name] = at

    def sample(self, k: int, rng: random.Random) -> list[SimNode]:
        if len(self._items) <= k:
            return list(self._items)
        return rng.sample(self._items, k)


def board_image(board: int, params: SimParams) -> OfferableImage:
    """A stand-in signed image for ``board`` (the digests only name it)."""
    digest = hashlib.sha256(f"manifest board{board}".encode()).hexdigest()
    sha = hashlib.sha256(f"image board{board}".encode()).hexdigest()
    return OfferableImage(manifest_digest=digest, image_sha256=sha, target="bios",
                          machine_names=(f"board{board}",), version="1.0",
                          security_version=1, size=params.image_bytes)


class Fleet:
    """``params.nodes`` corrupt recipients, ``healthy_per_board`` healthy peers, one
    console; :meth:`run` until every recipient's host booted (or ``until_s``)."""

    def __init__(self, params: SimParams, *, healthy_per_board: int = 0) -> None:
        self.params = params
        self.loop = EventLoop()
        master = random.Random(params.seed)
        self.net = Network(self.loop, random.Random(master.getrandbits(64)),
                           latency_s=params.latency_s, loss=params.loss)
        self._rng = random.Random(master.getrandbits(64))
        self.images = [board_image(b, params) for b in range(params.boards)]
        self._pools = [_Pool() for _ in range(params.boards)]
        self._solicits: dict[tuple[str, int], _Solicitation] = {}
        self._by_name: dict[str, SimNode] = {}
        self.booted_count = 0
        self.solicits_skipped = 0  # delivered, but the donor would only have counted a skip
        self.segments: list[list[SimNode]] = []
        self.console = self._make("console", -1, None, 0, NodeRole.CONSOLE,
                                  params.console_bps, master)
        self.recipients: list[SimNode] = []
        self.healthy: list[SimNode] = []
        index = 0
        for b in range(params.boards):
            for _ in range(healthy_per_board):
                self.healthy.append(self._make(f"h{index}", index, b, index, NodeRole.HEALTHY,
                                               params.link_bps, master))
                index += 1
        for i in range(params.nodes):
            self.recipients.append(self._make(f"n{i}", index, i % params.boards, index,
                                              NodeRole.RECIPIENT, params.link_bps, master))
            index += 1

    def _make(self, name: str, index: int, board: int | None, position: int, role: str,
              bps: float, master: random.Random) -> SimNode:
        segment = max(position, 0) // self.params.segment_size
        node = SimNode(self, name=name, index=index, board=board, segment=segment, role=role,
                       image=None if board is None else self.images[board],
                       catalog=self.images, link=Link(name, up_bps=bps, down_bps=bps),
                       rng=random.Random(master.getrandbits(64)))
        self._by_name[name] = node
        if role != NodeRole.CONSOLE:
            while len(self.segments) <= segment:
                self.segments.append([])
            self.segments[segment].append(node)
        return node

    # --- running --------------------------------------------------------------------

    def run(self) -> None:
        """Power everything on at t = 0 and run until every recipient booted."""
        self.console.boot()
        for node in self.healthy:
            node.boot()
        for node in self.recipients:
            node.boot()
        total = len(self.recipients)
        self.loop.run(until=self.params.until_s, stop=lambda: self.booted_count >= total)

    # --- World: what nodes call ---------------------------------------------------

    def node(self, donor_id: str) -> SimNode:
        return self._by_name[donor_id]

    def booted(self, node: SimNode) -> None:
        self.booted_count += 1

    def eligibility_changed(self, node: SimNode) -> None:
        if node.board is None:
            return
        pool = self._pools[node.board]
        if node.offers_image(node.board):
            pool.add(node)
        else:
            pool.discard(node)

    def forget_session(self, node: SimNode, session: RecipientSession) -> None:
        if session.xid is not None:
            entry = self._solicits.get((node.name, session.xid))
            if entry is not None and entry.session is session:
                del self._solicits[(node.name, session.xid)]

    def send_session(self, node: SimNode, slot: int, session: RecipientSession, data: bytes,
                     dest: Destination) -> None:
        src = node.address(slot)
        if dest is not GROUP:
            self._to_donor(self._by_name[dest[0]], data, src)
            return
        xid = session.xid
        if xid is None:
            return
        key = (node.name, xid)
        entry = self._solicits.get(key)
        if entry is None or entry.session is not session:
            entry = self._solicits[key] = _Solicitation(node=node, slot=slot, session=session)
        if data[8:8 + len(_SOLICIT)] == _SOLICIT:
            board = node.board if node.board is not None else 0
            for donor in self._audience(node):
                entry.audience[donor.name] = donor
                self._solicit_to(donor, data, src, (node.name, xid, board))
        elif data[8:8 + len(_ACCEPT)] == _ACCEPT:
            for donor in list(entry.audience.values()):
                if donor.responder.solicit_state(node.name, xid) is not None:
                    self._to_donor(donor, data, src)

    def send_donor(self, node: SimNode, data: bytes, dest: Destination,
                   offer_key: tuple[str, int] | None) -> None:
        src = node.address(0)
        if dest is not GROUP:
            target = self._by_name[dest[0]]
            session = target.sessions.get(dest[1])
            if session is not None:
                self._to_session(target, dest[1], session, data, src)
            return
        entry = self._solicits.get(offer_key) if offer_key is not None else None
        if entry is None:
            return  # the session is gone: nobody listens for this xid any more
        self._to_session(entry.node, entry.slot, entry.session, data, src)
        rid, xid = entry.node.name, entry.session.xid or 0
        for donor in list(entry.audience.values()):
            if donor is not node and donor.responder.solicit_state(rid, xid) is DonorState.PENDING:
                self._to_donor(donor, data, src)

    # --- internals ------------------------------------------------------------------

    def _audience(self, node: SimNode) -> list[SimNode]:
        board = node.board if node.board is not None else 0
        out = [m for m in self.segments[node.segment]
               if m is not node and m.offers_image(board)]
        if self.console.alive:
            out.append(self.console)
        if self.params.swarm and self.params.broker_fanout:
            seen = {m.name for m in out}
            seen.add(node.name)
            extra = self._pools[board].sample(self.params.broker_fanout + len(seen), self._rng)
            added = 0
            for m in extra:
                if m.name not in seen and added < self.params.broker_fanout:
                    out.append(m)
                    added += 1
        return out

    def _solicit_to(self, donor: SimNode, data: bytes, src: Address,
                    key: tuple[str, int, int]) -> None:
        """A SOLICIT, decoded only if the donor would act on it (checked on arrival)."""
        generation = donor.generation

        def arrive() -> None:
            if donor.hears_solicit(*key):
                donor.donor_receive(data, src, generation)
            else:
                self.solicits_skipped += 1
        self.net.deliver(arrive)

    def _to_donor(self, donor: SimNode, data: bytes, src: Address) -> None:
        generation = donor.generation
        self.net.deliver(lambda: donor.donor_receive(data, src, generation))

    def _to_session(self, node: SimNode, slot: int, session: RecipientSession, data: bytes,
                    src: Address) -> None:
        self.net.deliver(lambda: node.session_receive(slot, session, data, src))
