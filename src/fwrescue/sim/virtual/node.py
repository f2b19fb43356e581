"""One simulated BMC: the real sans-IO cores, driven the way the agent drives them.

A node is a **recipient** (its BIOS is corrupt), a **healthy peer** (it holds the image
from the start) or the **console** (holds every board's image, donor only). Each runs:

* a ``DonorResponder`` (its own ``Codec``) that offers the image once the node holds at
  least one verified chunk — a partial donor — or all of it;
* while receiving, up to ``max_donors`` concurrent ``RecipientSession`` s (each its own
  ``Codec``), one donor each: a session is started while ``SwarmScheduler.wants_donor()``;
  its policy skips donors this node already uses or dropped;
* one ``SwarmScheduler`` for the image. On an ACK the recipient fetches the donor's
  have-map (one round trip), adds the donor, and sends every request the scheduler
  returns as a transfer on the modelled network. A partial donor's have-map is fetched
  again every ``have_poll_s`` while it has nothing to give; after ``idle_release_s`` of
  that it is released so the slot can find a better donor.

Then the flash (the W25Q timing model, host held) and the host boot. Faults: a BMC that
dies mid-transfer (``donor_death_rate``) or a power loss mid-flash (``power_loss_rate``)
takes the node down for ``bmc_boot_s``; it comes back with its verified chunks (staging
is on BMC storage) and resumes: more chunks, or straight to a new flash.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fwrescue.donor.responder import DonorIdentity, DonorResponder, OfferableImage
from fwrescue.protocol.codec import Codec
from fwrescue.protocol.events import DonorAcked, GaveUp, OfferSent
from fwrescue.protocol.messages import DonorKind, Offer
from fwrescue.protocol.policy import Selection, SelectionContext
from fwrescue.protocol.recipient import RecipientIdentity, RecipientSession
from fwrescue.protocol.session import Address, Destination
from fwrescue.protocol.states import RecipientState
from fwrescue.transfer.swarm import ChunkRequest, SwarmScheduler

from .loop import EventLoop, Timer
from .network import Flow, Link, Network
from .params import SimParams

__all__ = ["FLEET_KEY", "NodeRole", "SimNode", "World", "offerable"]

FLEET_KEY = b"fwrescue-sim-fleet-key-000000000"
# Virtual time starts here: the codec's timestamps and replay window see plausible clocks.
EPOCH = 1_800_000_000.0


def offerable(image: OfferableImage, held: int | None) -> OfferableImage:
    """The catalog entry a donor holding ``held`` verified chunks (None: all) offers.

    The one place that adopts OFFER ``held`` when ``OfferableImage`` gains it.
    """
    if held is None or "held" not in OfferableImage.__dataclass_fields__:
        return image
    fields = {name: getattr(image, name) for name in OfferableImage.__dataclass_fields__}
    fields["held"] = held
    return OfferableImage(**fields)


class NodeRole:
    RECIPIENT = "recipient"
    HEALTHY = "healthy"
    CONSOLE = "console"


class World(Protocol):
    """What a node needs from the fleet around it (routing, lookup, counters)."""

    loop: EventLoop
    net: Network
    params: SimParams

    def send_session(self, node: SimNode, slot: int, session: RecipientSession, data: bytes,
                     dest: Destination) -> None: ...

    def send_donor(self, node: SimNode, data: bytes, dest: Destination,
                   offer_key: tuple[str, int] | None) -> None: ...

    def node(self, donor_id: str) -> SimNode: ...

    def eligibility_changed(self, node: SimNode) -> None: ...

    def forget_session(self, node: SimNode, session: RecipientSession) -> None: ...

    def booted(self, node: SimNode) -> None: ...


class _SwarmPolicy:
    """Peers first, then least loaded; never a donor this node uses or dropped, and the
    console (seed of last resort) only while ``console_ok()``."""

    name = "sim-swarm"

    def __init__(self, excluded: Callable[[], set[str]], console_ok: Callable[[], bool]) -> None:
        self._excluded = excluded
        self._console_ok = console_ok

    def select(self, offers: Sequence[Offer], ctx: SelectionContext) -> Selection:
        skip = self._excluded()
        console = self._console_ok()
        ranked = sorted((o for o in offers if o.donor_id not in skip
                         and (console or o.donor_kind is not DonorKind.CONSOLE)),
                        key=lambda o: (o.donor_kind is DonorKind.CONSOLE, o.load_ratio))
        return Selection(ranked=tuple(ranked), reason="sim-swarm: peers first, least loaded")


@dataclass
class _Attachment:
    """A donor this node fetches from, through the session in ``slot``."""

    donor: SimNode
    slot: int
    generation: int  # the donor's, when attached
    flows: dict[Flow, ChunkRequest] = field(default_factory=dict)
    idle_since: float | None = None
    poll: Timer | None = None
    bytes_received: int = 0


class SimNode:
    """One BMC (see the module docstring)."""

    def __init__(self, world: World, *, name: str, index: int, board: int | None,
                 segment: int, role: str, image: OfferableImage | None,
                 catalog: Sequence[OfferableImage], link: Link, rng: random.Random) -> None:
        self.world = world
        self.name = name
        self.index = index
        self.board = board
        self.segment = segment
        self.role = role
        self.image = image
        self._catalog_all = tuple(catalog)
        self.link = link
        self.rng = rng
        p = world.params
        self.alive = True
        self.generation = 0
        self.verified: set[int] = (set(range(p.chunk_count)) if role != NodeRole.RECIPIENT
                                   else set())
        self.staged_at: float | None = 0.0 if role != NodeRole.RECIPIENT else None
        self.booted_at: float | None = 0.0 if role != NodeRole.RECIPIENT else None
        self.refetched = 0
        self.crashes = 0
        self.power_losses = 0
        self.flashes = 0
        self.downloaders: set[tuple[SimNode, int]] = set()  # (recipient, slot) attached here
        self.scheduler: SwarmScheduler | None = None
        self.sessions: dict[int, RecipientSession] = {}
        self.attachments: dict[str, _Attachment] = {}
        self._timers: dict[int, Timer] = {}  # slot (or -1: donor) -> armed protocol timer
        self._flash_timer: Timer | None = None
        self._die_at_chunk = (rng.randint(1, p.chunk_count - 1)
                              if role == NodeRole.RECIPIENT and p.chunk_count > 1
                              and rng.random() < p.donor_death_rate else None)
        self.responder = self._new_responder()

    # --- state ----------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return len(self.verified) == self.world.params.chunk_count

    def offers_image(self, board: int) -> bool:
        """Whether this node's donor would offer ``board``'s image now."""
        if not self.alive:
            return False
        if self.role == NodeRole.CONSOLE:
            return True
        return self.board == board and bool(self.verified) and self.world.params.swarm

    def address(self, slot: int) -> Address:
        return (self.name, slot)

    # --- life cycle -----------------------------------------------------------------

    def boot(self) -> None:
        """Power on (at the start, or after a crash): resume from the verified chunks."""
        now = self.world.loop.now
        self.alive = True
        self.world.eligibility_changed(self)
        if self.role != NodeRole.RECIPIENT:
            return
        if self.complete:
            self._start_flash(now)
            return
        self.scheduler = SwarmScheduler(chunk_count=self.world.params.chunk_count,
                                        verified=self.verified, rng=self.rng,
                                        limits=self.world.params.limits)
        self._fill_sessions(now)

    def crash(self, why: str) -> None:
        """The BMC (and so its link) goes down; it boots again after ``bmc_boot_s``."""
        if not self.alive:
            return
        self.alive = False
        self.crashes += 1
        self.generation += 1
        if self.scheduler is not None:
            self.refetched += self.scheduler.refetched
            self.scheduler = None
        for att in list(self.attachments.values()):
            if att.poll is not None:
                att.poll.cancel()
            att.donor._downloader_left(self, att.slot)
        self.attachments.clear()
        for session in self.sessions.values():
            self.world.forget_session(self, session)
        self.sessions.clear()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._flash_timer is not None:
            self._flash_timer.cancel()
            self._flash_timer = None
        self.world.eligibility_changed(self)
        self.world.net.kill_link(self.link)
        for recipient, _slot in list(self.downloaders):
            recipient._donor_died(self, why)
        self.downloaders.clear()
        self.responder = self._new_responder()
        self.world.loop.call_later(self.world.params.bmc_boot_s, self.boot)

    # --- datagrams in ---------------------------------------------------------------

    def hears_solicit(self, recipient_id: str, xid: int, board: int) -> bool:
        """Whether a SOLICIT would do more than count a skip here: the donor offers the
        image and is under capacity, or already tracks this (recipient, xid)."""
        if not self.offers_image(board):
            return False
        responder = self.responder
        return (responder.load < responder.limits.capacity
                or responder.solicit_state(recipient_id, xid) is not None)

    def donor_receive(self, data: bytes, src: Address, generation: int) -> None:
        if self.alive and generation == self.generation:
            now = self.world.loop.now + EPOCH
            self.responder.receive_datagram(data, src, now)
            self._pump_donor()

    def session_receive(self, slot: int, session: RecipientSession, data: bytes,
                        src: Address) -> None:
        if self.alive and self.sessions.get(slot) is session:
            session.receive_datagram(data, src, self.world.loop.now + EPOCH)
            self._pump_session(slot, session)

    # --- donor side -----------------------------------------------------------------

    def _new_responder(self) -> DonorResponder:
        kind = DonorKind.CONSOLE if self.role == NodeRole.CONSOLE else DonorKind.PEER
        limits = self.world.params.donor_limits
        if self.role == NodeRole.CONSOLE:
            # Never suppressed by peers' offers: a recipient whose peers lack a chunk
            # must still hear the seed of last resort (it answers last anyway).
            limits = dataclasses.replace(limits, capacity=self.world.params.console_capacity,
                                         suppress_after=65_535)
        return DonorResponder(
            identity=DonorIdentity(donor_id=self.name, kind=kind,
                                   transfer_url=f"http://{self.name}:8443"),
            catalog=self._catalog, limits=limits,
            codec=Codec(FLEET_KEY, rng=self.rng), rng=self.rng)

    def _catalog(self) -> Sequence[OfferableImage]:
        if self.role == NodeRole.CONSOLE:
            return self._catalog_all
        if not self.verified or self.image is None or not self.world.params.swarm:
            return ()
        return (offerable(self.image, None if self.complete else len(self.verified)),)

    def _pump_donor(self) -> None:
        now = self.world.loop.now + EPOCH
        responder = self.responder
        keys: list[tuple[str, int]] = []
        while (event := responder.next_event()) is not None:
            if isinstance(event, OfferSent):
                keys.append((event.recipient_id, event.xid))
        offers = iter(keys)
        for data, dest in responder.datagrams_to_send(now):
            self.world.send_donor(self, data, dest, None if isinstance(dest, tuple)
                                  else next(offers, None))
        self._arm(-1, responder.get_timer(), self._donor_timer)

    def _donor_timer(self) -> None:
        if self.alive:
            self.responder.handle_timer(self.world.loop.now + EPOCH)
            self._pump_donor()

    def _downloader_joined(self, recipient: SimNode, slot: int, token: str) -> None:
        self.downloaders.add((recipient, slot))
        self.responder.end_reservation(token, self.world.loop.now + EPOCH)
        self.responder.set_active_uploads(len(self.downloaders))

    def _downloader_left(self, recipient: SimNode, slot: int) -> None:
        self.downloaders.discard((recipient, slot))
        if self.alive:
            self.responder.set_active_uploads(len(self.downloaders))

    # --- recipient side: sessions ---------------------------------------------------

    def _excluded(self) -> set[str]:
        skip = set(self.attachments)
        if self.scheduler is not None:
            skip.update(self.scheduler.dropped)
            skip.update(self.scheduler.active_donors)
        return skip

    def _peer_donors(self) -> int:
        return sum(1 for a in self.attachments.values() if a.donor.role != NodeRole.CONSOLE)

    def _peers_busy(self) -> bool:
        return any(a.flows for a in self.attachments.values()
                   if a.donor.role != NodeRole.CONSOLE)

    def _console_ok(self) -> bool:
        """The console is the seed of last resort: used while fewer than
        ``console_below_peers`` peers serve this node, or while chunks are missing that
        no peer of this node holds and no peer is sending anything."""
        if self._peer_donors() < self.world.params.console_below_peers:
            return True
        sched = self.scheduler
        return sched is not None and sched.unavailable() > 0 and not self._peers_busy()

    def _fill_sessions(self, now: float) -> None:
        sched = self.scheduler
        if sched is None or sched.complete:
            return
        limit = self.world.params.limits.max_donors
        while len(self.sessions) < limit and sched.wants_donor():
            slot = next(s for s in range(1, limit + 2) if s not in self.sessions)
            identity = RecipientIdentity(
                node_id=self.name, target="bios", machine_name=f"board{self.board}",
                installed_version=None, security_version=1, min_security_version=1)
            session = RecipientSession(identity=identity, timers=self.world.params.timers,
                                       policy=_SwarmPolicy(self._excluded, self._console_ok),
                                       codec=Codec(FLEET_KEY, rng=self.rng), rng=self.rng)
            self.sessions[slot] = session
            session.start(now + EPOCH)
            self._pump_session(slot, session)

    def _pump_session(self, slot: int, session: RecipientSession) -> None:
        now = self.world.loop.now + EPOCH
        for data, dest in session.datagrams_to_send(now):
            self.world.send_session(self, slot, session, data, dest)
        while (event := session.next_event()) is not None:
            if isinstance(event, DonorAcked):
                self._acked(slot, session, event)
            elif isinstance(event, GaveUp):
                self._end_session(slot)
                # Start over after the longest backoff: donors appear as others finish.
                self.world.loop.call_later(self.world.params.timers.backoff_max,
                                           self._retry(self.generation))
                return
        if self.sessions.get(slot) is session:
            self._arm(slot, session.get_timer(), lambda: self._session_timer(slot, session))

    def _retry(self, generation: int) -> Callable[[], None]:
        def again() -> None:
            if self.alive and generation == self.generation:
                self._fill_sessions(self.world.loop.now)
        return again

    def _session_timer(self, slot: int, session: RecipientSession) -> None:
        if self.alive and self.sessions.get(slot) is session:
            session.handle_timer(self.world.loop.now + EPOCH)
            self._pump_session(slot, session)

    def _end_session(self, slot: int) -> None:
        session = self.sessions.pop(slot, None)
        if session is not None:
            self.world.forget_session(self, session)
        timer = self._timers.pop(slot, None)
        if timer is not None:
            timer.cancel()

    def _arm(self, slot: int, when: float | None, callback: Callable[[], None]) -> None:
        old = self._timers.pop(slot, None)
        if old is not None:
            if when is not None and abs(old.when - (when - EPOCH)) < 1e-9 and not old.cancelled:
                self._timers[slot] = old
                return
            old.cancel()
        if when is not None:
            self._timers[slot] = self.world.loop.call_at(when - EPOCH, callback)

    # --- recipient side: transfers --------------------------------------------------

    def _acked(self, slot: int, session: RecipientSession, event: DonorAcked) -> None:
        donor = self.world.node(event.offer.donor_id)
        generation, my_generation = donor.generation, self.generation

        def attach() -> None:  # after the have-map round trip
            if not self.alive or my_generation != self.generation:
                return
            if self.sessions.get(slot) is not session:
                return
            sched = self.scheduler
            now = self.world.loop.now
            if not donor.alive or donor.generation != generation or sched is None:
                self._session_failed(slot, "connection refused", now)
                return
            if sched.complete or donor.name in sched.dropped or (
                    donor.name in sched.active_donors):
                session.release("not-needed", 0, now + EPOCH)
                self._pump_session(slot, session)
                self._end_session(slot)
                return
            have = None if donor.complete else sorted(donor.verified)
            sched.add_donor(donor.name, have, now,
                            last_resort=donor.role == NodeRole.CONSOLE)
            self.attachments[donor.name] = _Attachment(donor=donor, slot=slot,
                                                       generation=generation)
            donor._downloader_joined(self, slot, event.token)
            self._dispatch(now)

        self.world.loop.call_later(2 * self.world.params.latency_s, attach)

    def _dispatch(self, now: float) -> None:
        sched = self.scheduler
        if sched is None:
            return
        p = self.world.params
        console = self.attachments.get("console")
        if (console is not None and self._peer_donors() >= p.console_below_peers
                and self._peers_busy()):
            self._release(console, "peers-serve", now)  # peers carry it from here
        for request in sched.next_requests(now):
            att = self.attachments[request.donor_id]
            sizes = [p.chunk_size(i) for i in request.indices]
            flow = self.world.net.start_flow(
                att.donor.link, self.link, sizes,
                on_chunk=self._on_chunk(att, request),
                on_done=self._on_flow_done(att, request),
                on_abort=self._on_flow_abort(att))
            att.flows[flow] = request
            att.idle_since = None
        for att in list(self.attachments.values()):
            if att.flows or self.scheduler is None:
                continue
            if att.donor.role == NodeRole.CONSOLE:
                self._release(att, "idle", now)  # a last resort is not held idle
            else:
                self._idle(att, now)

    def _idle(self, att: _Attachment, now: float) -> None:
        """A donor with nothing to give now: poll its have-map, release it when stale."""
        if att.idle_since is None:
            att.idle_since = now
        if now - att.idle_since >= self.world.params.idle_release_s:
            self._release(att, "idle", now)
            return
        if att.poll is None:
            att.poll = self.world.loop.call_later(self.world.params.have_poll_s,
                                                  self._poll(att, self.generation))

    def _poll(self, att: _Attachment, generation: int) -> Callable[[], None]:
        def poll() -> None:
            att.poll = None
            sched = self.scheduler
            if (not self.alive or generation != self.generation or sched is None
                    or self.attachments.get(att.donor.name) is not att):
                return
            now = self.world.loop.now
            donor = att.donor
            if not donor.alive or donor.generation != att.generation:
                self._donor_failed(att, "connection reset", now)
                return
            if not donor.complete or donor.role == NodeRole.RECIPIENT:
                sched.update_have(donor.name, sorted(donor.verified), now)
            self._dispatch(now)
        return poll

    def _on_chunk(self, att: _Attachment, request: ChunkRequest) -> Callable[[int], None]:
        generation = self.generation

        def chunk(position: int) -> None:
            sched = self.scheduler
            if sched is None or generation != self.generation:
                return
            index = request.first + position
            att.bytes_received += self.world.params.chunk_size(index)
            sched.chunk_verified(request, index, self.world.loop.now)
            first = not self.verified
            self.verified.add(index)
            if first:
                self.world.eligibility_changed(self)
            if self._die_at_chunk is not None and len(self.verified) >= self._die_at_chunk:
                self._die_at_chunk = None
                self.world.loop.call_at(self.world.loop.now, lambda: self.crash("bmc died"))
        return chunk

    def _on_flow_done(self, att: _Attachment, request: ChunkRequest) -> Callable[[], None]:
        generation = self.generation

        def done() -> None:
            sched = self.scheduler
            if sched is None or generation != self.generation:
                return
            now = self.world.loop.now
            for flow, req in list(att.flows.items()):
                if req is request:
                    del att.flows[flow]
            sched.request_ended(request, now)
            if sched.complete:
                self._staged(now)
            else:
                self._dispatch(now)
        return done

    def _on_flow_abort(self, att: _Attachment) -> Callable[[], None]:
        generation = self.generation

        def abort() -> None:
            if self.alive and generation == self.generation and att.donor.name in self.attachments:
                self._donor_failed(att, "connection reset", self.world.loop.now)
        return abort

    def _donor_died(self, donor: SimNode, why: str) -> None:
        att = self.attachments.get(donor.name)
        if att is not None and self.alive:
            self._donor_failed(att, f"connection reset ({why})", self.world.loop.now)

    def _donor_failed(self, att: _Attachment, reason: str, now: float) -> None:
        self._detach(att)
        if self.scheduler is not None:
            self.scheduler.drop_donor(att.donor.name, reason, now)
        self._session_failed(att.slot, reason, now)
        self._dispatch(now)

    def _session_failed(self, slot: int, reason: str, now: float) -> None:
        session = self.sessions.get(slot)
        if session is None:
            return
        if session.state is RecipientState.BOUND:
            session.donor_failed(reason, now + EPOCH)
            self._pump_session(slot, session)

    def _release(self, att: _Attachment, outcome: str, now: float) -> None:
        self._detach(att)
        if self.scheduler is not None:
            self.scheduler.remove_donor(att.donor.name, now)
        session = self.sessions.get(att.slot)
        if session is not None and session.state is RecipientState.BOUND:
            session.release(outcome, att.bytes_received, now + EPOCH)
            self._pump_session(att.slot, session)
        self._end_session(att.slot)
        self._fill_sessions(now)

    def _detach(self, att: _Attachment) -> None:
        if self.attachments.get(att.donor.name) is att:
            del self.attachments[att.donor.name]
        for flow in list(att.flows):
            self.world.net.abort_flow(flow)
        att.flows.clear()
        if att.poll is not None:
            att.poll.cancel()
            att.poll = None
        att.donor._downloader_left(self, att.slot)

    # --- staged, flash, boot --------------------------------------------------------

    def _staged(self, now: float) -> None:
        if self.staged_at is None:
            self.staged_at = now
        for att in list(self.attachments.values()):
            self._release(att, "complete", now)
        for slot in list(self.sessions):
            self._end_session(slot)
        if self.scheduler is not None:
            self.refetched += self.scheduler.refetched
            self.scheduler = None
        self._start_flash(now)

    def _start_flash(self, now: float) -> None:
        p = self.world.params
        self.flashes += 1
        duration = p.flash_seconds()
        generation = self.generation
        if self.rng.random() < p.power_loss_rate:
            def power_loss() -> None:
                if generation == self.generation:
                    self.power_losses += 1
                    self.crash("power lost mid-flash")
            self._flash_timer = self.world.loop.call_later(
                self.rng.uniform(0.0, duration), power_loss)
            return

        def flashed() -> None:
            if generation == self.generation:
                self._flash_timer = self.world.loop.call_later(p.host_boot_s, booted)

        def booted() -> None:
            if generation == self.generation and self.booted_at is None:
                self.booted_at = self.world.loop.now
                self.world.booted(self)
        self._flash_timer = self.world.loop.call_later(duration, flashed)
