"""The recipient side of the negotiation, sans-IO (aioquic-style): bytes and ``now`` in,
bytes, one timer and events out. It never reads a clock, never touches a socket, and
draws all randomness from the injected ``random.Random``.

Flow (RFC 2131 §4.4, scaled for a fast LAN — defaults in :class:`RecipientTimers`):

1. ``start(now)`` waits a random start-up jitter (RFC 2131 §4.4.1: 1–10 s; RFC 951's room
   of machines rebooting after a power cut), then SOLICITs the group with a random xid.
2. Offers addressed to us are filtered (xid, target, security floor, declined digests,
   failed donors, duplicates) — rejects are reported with a reason — and pooled.
3. The pool is ranked by the policy when the offer window closes, at once when
   ``offer_window == 0`` (dhclient's ``select-timeout 0``) or when ``enough_offers``
   arrived. With no acceptable offer the SOLICIT is retransmitted (same xid) after a
   randomized exponential backoff; after ``max_solicits`` the session gives up.
4. The best offer is ACCEPTed on the group (the other donors learn they lost). NAK or no
   ACK within ``accept_timeout`` → the next-ranked offer. ACK → bound, with a token.
5. The caller transfers; then ``release()``; or ``donor_failed()`` / ``decline()`` move to
   the next offer (or a new SOLICIT round with a new xid, after a backoff wait).

Random draws happen in this order (tests rely on it): ``start`` draws the jitter; each
SOLICIT of a new round draws the xid (``getrandbits(32)``) and then its backoff factor;
a retransmit draws only the factor; waiting before a new round draws one factor.

Datagrams that are malformed or out of state never raise: they are counted in
``dropped`` (anomalies) or ``ignored`` (ordinary group traffic meant for others) and
logged at debug level.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, deque
from dataclasses import dataclass

from fwrescue.errors import ConfigError, LocalProtocolError, RemoteProtocolError

from .codec import Codec
from .events import (
    AcceptTimedOut,
    DonorAcked,
    DonorNaked,
    DonorSelected,
    GaveUp,
    OfferReceived,
    OfferRejected,
    RecipientEvent,
    SolicitSent,
)
from .messages import (
    MAX_DECLINED,
    MAX_REASON,
    Accept,
    Ack,
    Decline,
    Message,
    Nak,
    Offer,
    Release,
    Solicit,
)
from .policy import Policy, SelectionContext
from .session import GROUP, Address, Destination
from .states import RECIPIENT_TRANSITIONS, RecipientInput, RecipientState, StateMachine

__all__ = ["RecipientIdentity", "RecipientSession", "RecipientTimers"]

log = logging.getLogger(__name__)
_S, _I = RecipientState, RecipientInput
_MAX_ABANDONED = 64  # timed-out ACCEPTs remembered per session


@dataclass(frozen=True, kw_only=True)
class RecipientIdentity:
    """Who is asking and for what. Raises ConfigError on a bad field."""

    node_id: str
    target: str
    machine_name: str
    installed_version: str | None
    security_version: int
    min_security_version: int
    topology: str | None = None

    def __post_init__(self) -> None:
        try:  # one set of field rules: the SOLICIT's
            self.solicit(xid=0, declined=())
        except LocalProtocolError as e:
            raise ConfigError(f"bad recipient identity: {e.message}", **e.fields) from e

    def solicit(self, *, xid: int, declined: tuple[str, ...]) -> Solicit:
        return Solicit(xid=xid, recipient_id=self.node_id, target=self.target,
                       machine_name=self.machine_name, installed_version=self.installed_version,
                       security_version=self.security_version,
                       min_security_version=self.min_security_version,
                       topology=self.topology, declined=declined)


@dataclass(frozen=True, kw_only=True)
class RecipientTimers:
    """Seconds. DHCP's shape (RFC 2131 §4.1: 4 s doubling to 64 s, ±1 s), scaled for a LAN.

    ``backoff_randomization`` is the ± fraction applied to each interval. The offer window
    must close before the earliest possible retransmit. Raises ConfigError otherwise.
    """

    startup_jitter: float = 1.0
    offer_window: float = 0.5
    backoff_initial: float = 1.0
    backoff_max: float = 16.0
    backoff_randomization: float = 0.25
    max_solicits: int = 8
    accept_timeout: float = 1.0
    enough_offers: int = 16

    def __post_init__(self) -> None:
        for name in ("startup_jitter", "offer_window", "backoff_initial", "backoff_max",
                     "backoff_randomization", "accept_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError("timer must be finite non-negative seconds", timer=name)
        if self.backoff_initial <= 0 or self.accept_timeout <= 0:
            raise ConfigError("backoff_initial and accept_timeout must be positive")
        if self.backoff_max < self.backoff_initial:
            raise ConfigError("backoff_max must be >= backoff_initial")
        if not self.backoff_randomization < 1:
            raise ConfigError("backoff_randomization must be < 1")
        if self.offer_window >= self.backoff_initial * (1 - self.backoff_randomization):
            raise ConfigError("offer_window must close before the first retransmit")
        for name in ("max_solicits", "enough_offers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
                raise ConfigError("count must be an integer in [1, 1000]", setting=name)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """The retransmit interval after SOLICIT number ``attempt`` (1-based); one rng draw."""
        base = min(self.backoff_initial * 2.0 ** (attempt - 1), self.backoff_max)
        r = self.backoff_randomization
        return base * (1.0 + rng.uniform(-r, r))


def _clean_reason(text: str) -> str:
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in str(text))[:MAX_REASON]
    return cleaned or "unspecified"


_Candidate = tuple[Offer, Address]


class RecipientSession:
    """One negotiation for one image. See the module docstring for the flow.

    API methods called in the wrong state raise LocalProtocolError and poison the session.
    """

    def __init__(self, *, identity: RecipientIdentity, timers: RecipientTimers, policy: Policy,
                 codec: Codec, rng: random.Random, pinned_version: str | None = None) -> None:
        self.identity = identity
        self.timers = timers
        self.policy = policy
        self._codec = codec
        self._rng = rng
        self._ctx = SelectionContext(
            recipient_id=identity.node_id, target=identity.target,
            machine_name=identity.machine_name, installed_version=identity.installed_version,
            security_version=identity.security_version, topology=identity.topology,
            pinned_version=pinned_version)
        self._sm: StateMachine[RecipientState, RecipientInput] = StateMachine(
            RECIPIENT_TRANSITIONS, _S.IDLE, _S.ERROR)
        self.dropped: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self._events: deque[RecipientEvent] = deque()
        self._outbox: list[tuple[Message, Destination]] = []
        self._xid: int | None = None
        self._new_round = True
        self._attempt = 0
        self._start_at: float | None = None
        self._round_attempt = 0  # solicits in this round (xid): drives the backoff
        self._window_at: float | None = None
        self._retransmit_at: float | None = None
        self._accept_deadline: float | None = None
        self._pool: list[_Candidate] = []
        self._late: list[_Candidate] = []
        self._ranked: list[_Candidate] = []
        self._current: _Candidate | None = None
        self._offered_this_round: set[str] = set()
        self._round_excluded: dict[str, str] = {}
        self._failed_donors: set[str] = set()
        self._declined: dict[str, None] = {}  # insertion-ordered set of digests
        self._excluded: dict[str, str] = {}  # donor id -> why (swarming: already in use)
        self._needle = f'"recipient_id":"{identity.node_id}"'.encode("ascii")
        self._required_digest: str | None = None
        # ACCEPTs that timed out: (xid, donor id), oldest first (late ACKs get a RELEASE)
        self._abandoned: dict[tuple[int, str], None] = {}

    # --- inspection ------------------------------------------------------------------------

    @property
    def state(self) -> RecipientState:
        return self._sm.state

    @property
    def xid(self) -> int | None:
        return self._xid

    @property
    def declined_digests(self) -> tuple[str, ...]:
        return tuple(self._declined)

    # --- driver interface ------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Schedule the first SOLICIT after a random start-up jitter."""
        self._sm.fire(_I.START)
        self._start_at = now + self._rng.uniform(0.0, self.timers.startup_jitter)

    def get_timer(self) -> float | None:
        state = self._sm.state
        if state is _S.STARTING:
            return self._start_at
        if state is _S.SOLICITING:
            deadlines = [self._retransmit_at]
            if self._pool:
                deadlines.append(self._window_at)
            return min((d for d in deadlines if d is not None), default=None)
        if state is _S.ACCEPTING:
            return self._accept_deadline
        return None

    def handle_timer(self, now: float) -> None:
        state = self._sm.state
        if state is _S.STARTING and self._start_at is not None and now >= self._start_at:
            self._send_solicit(now)
        elif state is _S.SOLICITING:
            if self._window_at is not None and now >= self._window_at:
                self._window_at = None
                if self._pool:
                    self._select(now)
                    return
            if self._retransmit_at is not None and now >= self._retransmit_at:
                if self._pool:
                    self._select(now)
                elif self._attempt >= self.timers.max_solicits:
                    self._give_up(f"no acceptable offer after {self._attempt} solicit(s)")
                else:
                    self._send_solicit(now)
        elif state is _S.ACCEPTING and self._accept_deadline is not None \
                and now >= self._accept_deadline and self._current is not None:
            offer = self._current[0]
            why = f"donor {offer.donor_id} sent no ACK within {self.timers.accept_timeout:g} s"
            self._events.append(AcceptTimedOut(offer=offer, reason=why))
            self._round_excluded[offer.donor_id] = "did not ACK in this round"
            self._abandon(offer.xid, offer.donor_id)
            self._next(now, why)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Process one datagram. Never raises for bad input: it is dropped and counted.

        Storm control: only OFFER, ACK and NAK addressed to this node matter, and every
        fwrescue encoder writes compact JSON, so a datagram that does not contain
        ``"recipient_id":"<node id>"`` is dropped before it is authenticated or parsed
        (dropping is always safe; nothing is accepted on this test)."""
        if self._sm.state in (_S.IDLE, _S.DONE, _S.GAVE_UP, _S.ERROR):
            self._drop("session not active", addr)
            return
        if data[:4] == b"FWRN" and self._needle not in data:  # malformed ones: decoded
            self.ignored["not addressed to us (prefilter)"] += 1
            return
        try:
            msg = self._codec.decode(data, now)
        except RemoteProtocolError as e:
            self._drop(f"invalid: {e.message}", addr)
            return
        if isinstance(msg, Offer):
            if msg.recipient_id != self.identity.node_id:
                self.ignored["offer for another recipient"] += 1
            else:
                self._on_offer(msg, addr, now)
        elif isinstance(msg, Ack | Nak):
            self._on_reply(msg, addr, now)
        elif isinstance(msg, Solicit | Accept):
            self.ignored[f"{msg.TYPE} on the group"] += 1
        else:
            self._drop(f"{msg.TYPE} sent to a recipient", addr)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Destination]]:
        """Encode and hand out queued messages; a poisoned session sends nothing."""
        if self._sm.state is _S.ERROR:
            self._outbox.clear()
        out = [(self._codec.encode(msg, now), dest) for msg, dest in self._outbox]
        self._outbox.clear()
        return out

    def next_event(self) -> RecipientEvent | None:
        return self._events.popleft() if self._events else None

    # --- caller API ------------------------------------------------------------------------

    def require_digest(self, digest: str) -> None:
        """Accept only offers of ``digest`` (a swarm's extra sessions: same image); offers
        of other digests are rejected and their digests declined in later SOLICITs."""
        self._required_digest = digest

    def exclude_donor(self, donor_id: str, reason: str) -> None:
        """Never accept ``donor_id`` in this session (e.g. already serving this image to us
        in another session). Offers from it are rejected with ``reason``."""
        self._excluded[donor_id] = _clean_reason(reason)


    def _bound(self, action: str) -> _Candidate:
        """The accepted offer, for an ``action`` allowed only in BOUND; raise
        LocalProtocolError (poisoning the session) otherwise."""
        self._sm.expect(_S.BOUND, action=action)
        if self._current is None:  # BOUND always has one: reaching this is a local bug
            self._sm.state = _S.ERROR
            raise LocalProtocolError(f"{action}: bound without an accepted offer")
        return self._current

    def donor_failed(self, reason: str, now: float) -> None:
        """The transfer from the ACKed donor failed: never use it again; try the next offer."""
        offer = self._bound("donor_failed")[0]
        self._failed_donors.add(offer.donor_id)
        self._next(now, f"donor {offer.donor_id} failed: {_clean_reason(reason)}")

    def decline(self, reason: str, now: float) -> None:
        """The ACKed donor's package failed verification: DECLINE it, blacklist its digest."""
        offer, addr = self._bound("decline")
        why = _clean_reason(reason)
        self._outbox.append((Decline(xid=offer.xid, recipient_id=self.identity.node_id,
                                     donor_id=offer.donor_id,
                                     manifest_digest=offer.manifest_digest, reason=why), addr))
        self._declined[offer.manifest_digest] = None
        self._next(now, f"declined {offer.manifest_digest[:12]}… from {offer.donor_id}: {why}")

    def reject_carrier(self, reason: str, now: float) -> None:
        """The ACKed donor sent bytes that do not match what it offered (a manifest that does
        not hash to the offered digest, a chunk off the signed list): the *carrier* is bad,
        not necessarily the image. DECLINE it so its reservation ends at once, never use
        that donor again, but keep the digest acceptable from honest donors."""
        offer, addr = self._bound("reject_carrier")
        why = _clean_reason(reason)
        self._outbox.append((Decline(xid=offer.xid, recipient_id=self.identity.node_id,
                                     donor_id=offer.donor_id,
                                     manifest_digest=offer.manifest_digest, reason=why), addr))
        self._failed_donors.add(offer.donor_id)
        self._next(now, f"donor {offer.donor_id} sent bytes off its offer: {why}")

    def release(self, outcome: str, bytes_received: int, now: float) -> None:
        """Done with the donor: send RELEASE; the session ends (state DONE)."""
        offer, addr = self._bound("release")
        msg = Release(xid=offer.xid, recipient_id=self.identity.node_id,
                      donor_id=offer.donor_id, outcome=outcome, bytes_received=bytes_received)
        self._outbox.append((msg, addr))
        self._sm.fire(_I.RELEASE)

    # --- internals -------------------------------------------------------------------------

    def _drop(self, reason: str, addr: Address) -> None:
        self.dropped[reason] += 1
        log.debug("recipient %s dropped a datagram from %s: %s", self.identity.node_id,
                  addr, reason)

    def _send_solicit(self, now: float) -> None:
        self._sm.fire(_I.SOLICIT)
        if self._new_round or self._xid is None:
            self._xid = self._rng.getrandbits(32)
            self._new_round = False
            self._round_attempt = 0
            self._pool.clear()
            self._late.clear()
            self._offered_this_round.clear()
            self._round_excluded.clear()
        self._attempt += 1
        self._round_attempt += 1
        declined = tuple(self._declined)[-MAX_DECLINED:]
        self._outbox.append((self.identity.solicit(xid=self._xid, declined=declined), GROUP))
        self._events.append(SolicitSent(xid=self._xid, attempt=self._attempt))
        self._window_at = now + self.timers.offer_window
        self._retransmit_at = now + self.timers.backoff(self._round_attempt, self._rng)

    def _reject_reason(self, offer: Offer) -> str | None:
        ident = self.identity
        if offer.xid != self._xid:
            return f"stale xid {offer.xid:#010x} (current {self._xid or 0:#010x})"
        if offer.target != ident.target:
            return f"wrong target {offer.target!r} (want {ident.target!r})"
        if offer.security_version < ident.min_security_version:
            return (f"security_version {offer.security_version} below minimum "
                    f"{ident.min_security_version}")
        if offer.manifest_digest in self._declined:
            return f"manifest digest {offer.manifest_digest[:12]}… was declined earlier"
        if offer.donor_id in self._failed_donors:
            return f"donor {offer.donor_id} failed earlier"
        if offer.donor_id in self._excluded:
            return f"donor {offer.donor_id} excluded: {self._excluded[offer.donor_id]}"
        if self._required_digest is not None and offer.manifest_digest != self._required_digest:
            # Committed to one image: every other digest is declined for this session, and
            # the next SOLICIT says so, so its donors stop offering (and suppressing others).
            self._declined[offer.manifest_digest] = None
            return f"not the image being fetched ({offer.manifest_digest[:12]}…)"
        if offer.donor_id in self._round_excluded:
            return f"donor {offer.donor_id} {self._round_excluded[offer.donor_id]}"
        return None

    def _on_offer(self, offer: Offer, addr: Address, now: float) -> None:
        state = self._sm.state
        if state is _S.STARTING:
            self._drop("offer before any solicit", addr)
            return
        self._events.append(OfferReceived(offer=offer))
        reason = self._reject_reason(offer)
        if reason is None and offer.donor_id in self._offered_this_round:
            reason = f"duplicate offer from donor {offer.donor_id} in this round"
        if reason is None and len(self._pool) + len(self._late) >= self.timers.enough_offers:
            reason = f"already holding {self.timers.enough_offers} offers (enough_offers)"
        if reason is not None:
            self._events.append(OfferRejected(offer=offer, reason=reason))
            return
        self._offered_this_round.add(offer.donor_id)
        if state is not _S.SOLICITING:  # arrived after selection: keep as a fallback
            self._late.append((offer, addr))
            return
        self._pool.append((offer, addr))
        if (self.timers.offer_window == 0 or self._window_at is None
                or now >= self._window_at or len(self._pool) >= self.timers.enough_offers):
            self._select(now)

    def _on_reply(self, msg: Ack | Nak, addr: Address, now: float) -> None:
        current = self._current
        if msg.recipient_id != self.identity.node_id:
            self._drop(f"{msg.TYPE} for another recipient", addr)
        elif msg.xid != (current[0].xid if current is not None else self._xid):
            self._drop(f"{msg.TYPE} for an unknown xid", addr)
            self._release_late_ack(msg, addr)
        elif self._sm.state is not _S.ACCEPTING or current is None:
            self._drop(f"{msg.TYPE} out of state ({self._sm.state.value})", addr)
            self._release_late_ack(msg, addr)
        elif msg.donor_id != current[0].donor_id:
            self._drop(f"{msg.TYPE} from a donor we did not accept", addr)
            self._release_late_ack(msg, addr)
        elif isinstance(msg, Ack):
            self._sm.fire(_I.ACK)
            self._accept_deadline = None
            self._events.append(DonorAcked(offer=current[0], token=msg.token,
                                           lease_expires_at=now + msg.lease_expires))
        else:
            self._events.append(DonorNaked(offer=current[0], reason=msg.reason))
            self._round_excluded[msg.donor_id] = "NAKed in this round"
            self._next(now, f"donor {msg.donor_id} NAKed: {msg.reason}")

    def _select(self, now: float) -> None:
        candidates, self._pool = self._pool, []
        self._window_at = None
        if not self._rank(candidates, now, why="offer window closed"):
            return  # nothing the policy accepts: keep soliciting until the next deadline

    def _rank(self, candidates: list[_Candidate], now: float, why: str) -> bool:
        """Rank ``candidates`` and ACCEPT the best; False if the policy accepted none."""
        by_donor = {offer.donor_id: (offer, addr) for offer, addr in candidates}
        selection = self.policy.select([offer for offer, _ in candidates], self._ctx)
        ranked: list[_Candidate] = []
        for offer in selection.ranked:
            cand = by_donor.pop(offer.donor_id, None)
            if cand is not None and cand[0] == offer:  # ignore offers a policy made up
                ranked.append(cand)
        if self._required_digest is not None:
            # Swarming, one image: versions are equal, so prefer what serves us most — a
            # complete donor, then the partial donor holding the most chunks, then the
            # least loaded (stable: the policy's order breaks the remaining ties).
            ranked.sort(key=lambda c: (c[0].held is not None, -(c[0].held or 0),
                                       c[0].load_ratio))
        for offer, _ in by_donor.values():
            reason = f"not ranked by policy: {selection.reason}"
            self._events.append(OfferRejected(offer=offer, reason=reason))
            self._round_excluded[offer.donor_id] = "was ranked out by the policy"
        if not ranked:
            return False
        self._events.append(DonorSelected(offer=ranked[0][0], reason=selection.reason,
                                          ranked=tuple(o for o, _ in ranked)))
        self._ranked = ranked[1:]
        self._accept(ranked[0], now)
        return True

    def _accept(self, cand: _Candidate, now: float) -> None:
        offer = cand[0]
        self._sm.fire(_I.ACCEPT)
        self._current = cand
        self._accept_deadline = now + self.timers.accept_timeout
        self._outbox.append((Accept(xid=offer.xid, recipient_id=self.identity.node_id,
                                    donor_id=offer.donor_id,
                                    manifest_digest=offer.manifest_digest), GROUP))

    def _next(self, now: float, why: str) -> None:
        """Move to the next acceptable ranked offer, the late offers, or a new round."""
        self._current = None
        self._accept_deadline = None
        while self._ranked:
            cand = self._ranked.pop(0)
            reason = self._reject_reason(cand[0])
            if reason is not None:
                self._events.append(OfferRejected(offer=cand[0], reason=reason))
                continue
            remaining = (cand[0], *(o for o, _ in self._ranked))
            self._events.append(DonorSelected(offer=cand[0], reason=f"next-ranked after: {why}",
                                              ranked=remaining))
            self._accept(cand, now)
            return
        late, self._late = self._late, []
        usable = [c for c in late if self._reject_reason(c[0]) is None]
        if usable and self._rank(usable, now, why):
            return
        if self._attempt >= self.timers.max_solicits:
            self._give_up(f"no donor left ({why}) after {self._attempt} solicit(s)")
            return
        # New round (new xid) after the *initial* backoff interval, like a DHCP client
        # restarting in INIT after a NAK (RFC 2131 §3.1 step 5): donors exist, they were busy
        # or failed, and a slot frees within about one transfer — a doubled wait would leave
        # the recipient idle while donors (recovered peers among them) sit free. The solicit
        # counter keeps counting across rounds, so the session stays bounded.
        self._sm.fire(_I.SOLICIT)
        self._new_round = True
        self._window_at = None
        self._retransmit_at = now + self.timers.backoff(1, self._rng)

    def _abandon(self, xid: int, donor_id: str) -> None:
        """Remember an ACCEPT we stopped waiting for: its ACK may still come (bounded)."""
        self._abandoned.pop((xid, donor_id), None)
        self._abandoned[(xid, donor_id)] = None
        while len(self._abandoned) > _MAX_ABANDONED:
            self._abandoned.pop(next(iter(self._abandoned)))

    def _release_late_ack(self, msg: Ack | Nak, addr: Address) -> None:
        """An ACK for an ACCEPT of ours that timed out: the donor holds a reservation we
        will never use. RELEASE it at once, or it keeps the slot for its whole lease and,
        under load, honest donors fill up with such reservations and stop offering."""
        key = (msg.xid, msg.donor_id)
        if not isinstance(msg, Ack) or key not in self._abandoned:
            return
        del self._abandoned[key]
        self._outbox.append((Release(xid=msg.xid, recipient_id=self.identity.node_id,
                                     donor_id=msg.donor_id, outcome="aborted",
                                     bytes_received=0), addr))

    def _give_up(self, reason: str) -> None:
        self._sm.fire(_I.GIVE_UP)
        self._events.append(GaveUp(reason=reason))
