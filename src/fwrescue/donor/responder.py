"""The donor side of the negotiation, sans-IO: answers SOLICITs, reserves on ACCEPT.

Per SOLICIT (keyed by recipient id and xid) a donor:

* offers the best image it holds for the solicit's target and machine name with
  ``security_version >= min_security_version`` and a digest the recipient has not declined
  (highest security_version, then version) — unless it is at capacity;
* waits a **load-scaled offer delay** first: ``base_delay · load/capacity + U(0, jitter)``,
  plus ``console_extra_delay`` for a console, so idle peers answer first;
* sends the OFFER to the **group**, so other donors overhear it; a donor that has overheard
  ``suppress_after`` offers for the same (recipient, xid) before its own delay ends stays
  quiet (duplicate-answer suppression, as in mDNS, RFC 6762 §7.4). On a LAN this bounds
  the offers per solicit to about ``suppress_after`` plus those sent within one network
  delay of each other (see docs/protocol.md). Suppression yields to a recipient that keeps
  asking: after staying quiet for ``suppress_rounds`` solicits of one recipient in a row, the
  donor offers to it whatever it overhears — otherwise a few donors that answer first (rogues
  serving the genuine digest, which a recipient blames on the donor rather than declining)
  would silence every honest donor for good;
* drops its pending offer when it overhears an ACCEPT naming another donor;
* counts the REPORTs it overhears in a :class:`~fwrescue.protocol.breaker.CircuitBreaker`:
  a digest that ``breaker_threshold`` distinct recipients failed to boot is withheld (no
  more offers, ACCEPTs NAKed) and an :class:`ImageWithheld` event is reported once.

A catalog entry with ``held`` set is a *partial* image (this node is still receiving
it): the OFFER carries ``held``; a complete image of the same version is preferred.

On an ACCEPT naming it, the donor NAKs when the digest is unknown or it is at capacity,
else ACKs with a fresh 128-bit token and holds a **reservation** until the lease ends,
the recipient RELEASEs or DECLINEs, its ACCEPT names another donor, or the transfer
server calls :meth:`DonorResponder.end_reservation` (when it turns the reservation into
an upload; the token is one-time). Load = live reservations + active uploads reported
through :meth:`DonorResponder.set_active_uploads`. Retransmitted SOLICITs and ACCEPTs
never create a second reservation: a repeated ACCEPT gets the same ACK again.

Tokens come from the injected ``rng``: production passes :class:`random.SystemRandom`.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fwrescue.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from fwrescue.protocol.breaker import CircuitBreaker
from fwrescue.protocol.codec import Codec
from fwrescue.protocol.events import (
    Declined,
    DonorEvent,
    ImageWithheld,
    OfferSent,
    Released,
    ReservationEnded,
    ReservationGranted,
)
from fwrescue.protocol.messages import (
    Accept,
    Ack,
    Decline,
    DonorKind,
    Message,
    Nak,
    Offer,
    Release,
    Report,
    Solicit,
)
from fwrescue.protocol.policy import version_key
from fwrescue.protocol.session import GROUP, Address, Destination
from fwrescue.protocol.states import DONOR_TRANSITIONS, DonorInput, DonorState, StateMachine

__all__ = ["DonorIdentity", "DonorLimits", "DonorResponder", "OfferableImage"]

log = logging.getLogger(__name__)
_S, _I = DonorState, DonorInput
_PLACEHOLDER_DIGEST = "0" * 64
# The first bytes of every encoded OFFER body (compact JSON, type first: codec.py).
_OFFER_PREFIX = b'{"t":"offer"'

# An OFFER nobody ACCEPTed or overheard losing within this long no longer holds a slot.
OFFER_LIFETIME_S = 1.0
# Deferred solicits that expired are swept from the waiting table this often.
_WAIT_PURGE_S = 0.5


@dataclass(frozen=True, kw_only=True)
class DonorIdentity:
    """Who is offering, and where the transfer server listens. Raises ConfigError."""

    donor_id: str
    kind: DonorKind
    transfer_url: str
    topology: str | None = None

    def __post_init__(self) -> None:
        try:  # one set of field rules: the OFFER's
            Offer(xid=0, recipient_id="x", donor_id=self.donor_id, donor_kind=self.kind,
                  target="x", manifest_digest=_PLACEHOLDER_DIGEST, version="0",
                  security_version=0, size=1, load=0, capacity=1,
                  transfer_url=self.transfer_url, lease_s=1.0, topology=self.topology)
        except LocalProtocolError as e:
            raise ConfigError(f"bad donor identity: {e.message}", **e.fields) from e


@dataclass(frozen=True, kw_only=True)
class OfferableImage:
    """An image this donor can serve (its manifest verified when it was stored)."""

    manifest_digest: str
    image_sha256: str
    target: str
    machine_names: tuple[str, ...]
    version: str
    security_version: int
    size: int
    held: int | None = None  # verified chunks of a partial image; None = complete

    def __post_init__(self) -> None:
        try:
            Offer(xid=0, recipient_id="x", donor_id="x", donor_kind=DonorKind.PEER,
                  target=self.target, manifest_digest=self.manifest_digest,
                  version=self.version, security_version=self.security_version,
                  size=self.size, load=0, capacity=1, transfer_url="http://x", lease_s=1.0,
                  held=self.held)
            Offer(xid=0, recipient_id="x", donor_id="x", donor_kind=DonorKind.PEER,
                  target="x", manifest_digest=self.image_sha256, version="0",
                  security_version=0, size=1, load=0, capacity=1, transfer_url="http://x",
                  lease_s=1.0)
            if not isinstance(self.machine_names, tuple) or not 1 <= len(self.machine_names) <= 32:
                raise LocalProtocolError("machine_names must hold 1..32 names")
            for name in self.machine_names:
                Solicit(xid=0, recipient_id="x", target="x", machine_name=name,
                        installed_version=None, security_version=0, min_security_version=0)
        except LocalProtocolError as e:
            raise ConfigError(f"bad offerable image: {e.message}", **e.fields) from e

    def fits(self, solicit: Solicit) -> bool:
        return (self.target == solicit.target and solicit.machine_name in self.machine_names
                and self.security_version >= solicit.min_security_version
                and self.manifest_digest not in solicit.declined)


@dataclass(frozen=True, kw_only=True)
class DonorLimits:
    """Admission control and offer pacing, in seconds and counts. Raises ConfigError."""

    capacity: int = 4  # concurrent uploads + reservations
    lease_s: float = 30.0  # how long an ACK reserves a slot (DHCP's lease, scaled down)
    base_delay: float = 0.2  # offer delay at full load; idle donors answer at ~0
    jitter: float = 0.1  # spreads idle donors so suppression can work
    console_extra_delay: float = 0.1  # consoles answer after peers (keeps console egress low)
    suppress_after: int = 3  # stay quiet after overhearing this many offers for one solicit
    suppress_rounds: int = 2  # … but for at most this many solicits of a recipient in a row
    max_tracked: int = 1024  # solicits remembered at once (bounds memory under a flood)
    state_ttl: float = 60.0  # forget a solicit this long after its last message
    breaker_threshold: int = 3  # distinct boot_failed REPORTs that withhold an image
    # Deferred offers: keep a solicit we cannot answer yet (full, or image not held yet)
    # this long and re-check every recheck_s (0 turns deferral off).
    defer_s: float = 0.0
    recheck_s: float = 0.1

    def __post_init__(self) -> None:
        for name in ("lease_s", "base_delay", "jitter", "console_extra_delay", "state_ttl",
                     "defer_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError("limit must be finite non-negative seconds", limit=name)
        if not 0 < self.lease_s <= 86_400:
            raise ConfigError("lease_s must be in (0, 86400]")
        if not 0.01 <= self.recheck_s <= 60 or self.defer_s > 3600:
            raise ConfigError("recheck_s must be in [0.01, 60] and defer_s at most 3600")
        for name in ("capacity", "suppress_after", "suppress_rounds", "max_tracked",
                     "breaker_threshold"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65_535:
                raise ConfigError("limit must be an integer in [1, 65535]", limit=name)


class _SolicitState:
    """What a donor remembers about one (recipient, xid)."""

    def __init__(self, solicit: Solicit, now: float) -> None:
        self.sm: StateMachine[DonorState, DonorInput] = StateMachine(
            DONOR_TRANSITIONS, _S.PENDING, _S.ERROR)
        self.solicit = solicit
        self.offer_at: float | None = None
        self.offered_at: float | None = None  # when our OFFER went out (pending until ACCEPT)
        self.overheard = 0
        self.last_seen = now
        self.token: str | None = None


@dataclass(frozen=True, kw_only=True)
class _Reservation:
    key: tuple[str, int]
    manifest_digest: str
    expires_at: float


class DonorResponder:
    """Answers solicits for the images in ``catalog()``; see the module docstring."""

    def __init__(self, *, identity: DonorIdentity, catalog: Callable[[], Sequence[OfferableImage]],
                 limits: DonorLimits, codec: Codec, rng: random.Random) -> None:
        self.identity = identity
        self.limits = limits
        self._catalog = catalog
        self._codec = codec
        self._rng = rng
        self._active_uploads = 0
        self._solicits: dict[tuple[str, int], _SolicitState] = {}
        # recipient id -> solicits in a row this donor stayed quiet for (oldest first)
        self._quiet_for: OrderedDict[str, int] = OrderedDict()
        self._reservations: dict[str, _Reservation] = {}
        self._outbox: list[tuple[Message, Destination]] = []
        self._events: deque[DonorEvent] = deque()
        self.dropped: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()  # solicits deliberately left unanswered, by why
        self.breaker = CircuitBreaker(threshold=limits.breaker_threshold)
        # solicits we could not answer yet -> until when we keep trying (deferred offers)
        self._waiting: dict[tuple[str, int], float] = {}
        self._recheck_at: float | None = None
        self._wait_purge_at = 0.0
        # digest -> when a complete peer's offer of it was last overheard (insertion order)
        self.peer_offers: dict[str, float] = {}
        self._purge_due = math.inf  # no tracked solicit can expire before this

    # --- inspection ------------------------------------------------------------------------

    @property
    def load(self) -> int:
        return self._active_uploads + len(self._reservations)

    @property
    def reservations(self) -> int:
        return len(self._reservations)

    def solicit_state(self, recipient_id: str, xid: int) -> DonorState | None:
        st = self._solicits.get((recipient_id, xid))
        return st.sm.state if st is not None else None

    # --- driver interface ------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Process one datagram. Never raises for bad input: it is dropped and counted.

        Storm control: an overheard OFFER only matters for suppression of a pending offer
        of ours, or (a console) to learn that peers serve an image; otherwise it is
        dropped before it is authenticated or parsed (compact JSON: the type comes first)."""
        if (self.identity.kind is DonorKind.PEER and data[8:20] == _OFFER_PREFIX
                and not any(st.offer_at is not None for st in self._solicits.values())):
            self.ignored["overheard offer (prefilter)"] += 1
            return
        try:
            msg = self._codec.decode(data, now)
        except RemoteProtocolError as e:
            self._drop(f"invalid: {e.message}", addr)
            return
        self._purge(now)
        if isinstance(msg, Solicit):
            self._on_solicit(msg, now)
        elif isinstance(msg, Offer):
            self._on_offer(msg, now)
        elif isinstance(msg, Accept):
            self._on_accept(msg, addr, now)
        elif isinstance(msg, Release | Decline):
            self._on_end(msg, addr, now)
        elif isinstance(msg, Report):
            self._on_report(msg, now)
        else:
            self._drop(f"{msg.TYPE} sent to a donor", addr)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Destination]]:
        out = [(self._codec.encode(msg, now), dest) for msg, dest in self._outbox]
        self._outbox.clear()
        return out

    def get_timer(self) -> float | None:
        deadlines = [st.offer_at for st in self._solicits.values() if st.offer_at is not None]
        deadlines.extend(r.expires_at for r in self._reservations.values())
        if self._waiting and self._recheck_at is not None:
            deadlines.append(self._recheck_at)
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        for st in list(self._solicits.values()):
            if st.offer_at is not None and now >= st.offer_at:
                self._send_offer(st, now)
        if self._waiting and self._recheck_at is not None and now >= self._recheck_at:
            self._recheck(now)
        for token, res in list(self._reservations.items()):
            if now >= res.expires_at:
                self._end(token, "lease expired")
        self._purge(now)

    def next_event(self) -> DonorEvent | None:
        return self._events.popleft() if self._events else None

    # --- caller API ------------------------------------------------------------------------

    def set_active_uploads(self, n: int) -> None:
        """The transfer server's count of uploads running outside a live reservation."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise LocalProtocolError("active uploads must be a non-negative integer")
        self._active_uploads = n

    def end_reservation(self, token: str, now: float) -> None:
        """End the reservation for ``token`` (upload started or finished). Unknown: no-op."""
        if token in self._reservations:
            self._end(token, "ended by the transfer server")
        else:
            self.ignored["end of an unknown reservation"] += 1

    # --- internals -------------------------------------------------------------------------

    def _drop(self, reason: str, addr: Address) -> None:
        self.dropped[reason] += 1
        log.debug("donor %s dropped a datagram from %s: %s", self.identity.donor_id, addr,
                  reason)

    def _purge(self, now: float) -> None:
        # Called on every datagram: scan only once the oldest entry can have expired
        # (last_seen only grows, new entries start at now), so a console tracking a
        # thousand solicits does not scan them all per datagram. Same result as a full scan.
        if now < self._purge_due:
            return
        horizon = now - self.limits.state_ttl
        for key, st in list(self._solicits.items()):
            if st.last_seen < horizon and st.sm.state is not _S.RESERVED:
                del self._solicits[key]
        oldest = min((st.last_seen for st in self._solicits.values()), default=math.inf)
        self._purge_due = oldest + self.limits.state_ttl

    def _track(self, key: tuple[str, int], st: _SolicitState, now: float) -> _SolicitState:
        self._solicits[key] = st
        self._purge_due = min(self._purge_due, now + self.limits.state_ttl)
        return st

    def _best_image(self, solicit: Solicit) -> OfferableImage | None:
        withheld = self.breaker.is_withheld
        fitting = [img for img in self._catalog()
                   if img.fits(solicit) and not withheld(img.manifest_digest)]
        if not fitting:
            return None
        return max(fitting, key=lambda i: (i.security_version, version_key(i.version),
                                           i.held is None, i.held or 0))

    def _on_report(self, report: Report, now: float) -> None:
        trip = self.breaker.record(report, now)
        if trip is None:
            self.ignored[f"report ({report.outcome.value})"] += 1
            return
        log.warning("donor %s withholds %s: %d recipients failed to boot it",
                    self.identity.donor_id, trip.manifest_digest[:12], trip.failures)
        self._events.append(ImageWithheld(manifest_digest=trip.manifest_digest,
                                          target=trip.target, failures=trip.failures,
                                          recipients=trip.recipients))

    def _offer_delay(self) -> float:
        lim = self.limits
        delay = lim.base_delay * min(1.0, self.load / lim.capacity)
        delay += self._rng.uniform(0.0, lim.jitter)
        if self.identity.kind is DonorKind.CONSOLE:
            delay += lim.console_extra_delay
        return delay

    def _on_solicit(self, solicit: Solicit, now: float) -> None:
        if solicit.recipient_id == self.identity.donor_id:
            self.ignored["own solicit looped back"] += 1  # a node never donates to itself
            return
        key = (solicit.recipient_id, solicit.xid)
        st = self._solicits.get(key)
        deferred = False
        if st is not None:
            st.last_seen = now
            deferred = st.sm.state is _S.PENDING and st.offer_at is None
            if not deferred and not st.sm.can(_I.RESOLICIT):
                self.ignored[f"repeated solicit while {st.sm.state.value}"] += 1
                return
        why = None
        if self.load >= self.limits.capacity:
            why = "at capacity"
        elif self._best_image(solicit) is None:
            why = "no matching image"
        if why is not None and self.limits.defer_s <= 0:
            self.skipped[why] += 1
            return
        if st is None:
            if len(self._solicits) >= self.limits.max_tracked:
                self.skipped["tracking table full"] += 1
                return
            st = self._track(key, _SolicitState(solicit, now), now)
        elif deferred:  # a retransmit of a solicit we deferred: still pending
            self._waiting.pop(key, None)
            st.solicit, st.overheard = solicit, 0
        else:
            st.sm.fire(_I.RESOLICIT)
            st.solicit, st.overheard = solicit, 0
        if why is not None:
            # Deferred offer: remember the solicit for ``defer_s`` and offer as soon as a
            # slot frees or the image arrives (a partial donor's first verified chunk),
            # instead of leaving the recipient to its next, backed-off retransmit.
            self.skipped[f"{why} (deferred)"] += 1
            self._waiting.pop(key, None)
            self._waiting[key] = now + self.limits.defer_s
            if self._recheck_at is None or self._recheck_at <= now:
                self._recheck_at = now + self.limits.recheck_s
            return
        st.offer_at = now + self._offer_delay()

    def _recheck(self, now: float) -> None:
        """Offer to waiting solicits while free slots last. The waiting solicits are
        taken in **random** order: every partial donor gets its first chunk at about the
        same time, and first-come order would send all their offers to the same few
        recipients while the rest wait. O(free slots) when able; expired entries are
        purged at most every :data:`_WAIT_PURGE_S`."""
        self._recheck_at = now + self.limits.recheck_s
        if now >= self._wait_purge_at:
            self._wait_purge_at = now + _WAIT_PURGE_S
            for key, until in list(self._waiting.items()):
                st = self._solicits.get(key)
                if until < now or st is None or st.sm.state is not _S.PENDING \
                        or st.offer_at is not None:
                    del self._waiting[key]
        free = self.limits.capacity - self.load - self._offers_out(now) - sum(
            1 for st in self._solicits.values() if st.offer_at is not None)
        if free > 0 and self._waiting:
            withheld = self.breaker.is_withheld
            catalog = [i for i in self._catalog() if not withheld(i.manifest_digest)]
            keys = list(self._waiting)
            picks = self._rng.sample(keys, min(len(keys), 2 * free)) if catalog else []
            for key in picks:
                st = self._solicits.get(key)
                if st is None or st.sm.state is not _S.PENDING or st.offer_at is not None \
                        or self._waiting[key] < now:
                    del self._waiting[key]
                    continue
                if any(img.fits(st.solicit) for img in catalog):
                    del self._waiting[key]
                    st.offer_at = now + self._offer_delay()
                    free -= 1
                    if free <= 0:
                        break
        if not self._waiting:
            self._recheck_at = None

    def _offers_out(self, now: float) -> int:
        """Offers sent and neither accepted nor lost yet, within one offer lifetime."""
        horizon = now - OFFER_LIFETIME_S
        return sum(1 for st in self._solicits.values()
                   if st.sm.state is _S.OFFERED and st.offered_at is not None
                   and st.offered_at >= horizon)

    def _on_offer(self, offer: Offer, now: float) -> None:
        if offer.donor_id == self.identity.donor_id:
            self.ignored["own offer looped back"] += 1
            return
        self.ignored["overheard offer"] += 1
        if offer.donor_kind is DonorKind.PEER and offer.held is None:
            # A complete peer can serve this image (a console caps itself on this).
            if len(self.peer_offers) >= self.limits.max_tracked:
                self.peer_offers.pop(next(iter(self.peer_offers)))
            self.peer_offers.pop(offer.manifest_digest, None)
            self.peer_offers[offer.manifest_digest] = now
        st = self._solicits.get((offer.recipient_id, offer.xid))
        if st is not None:
            # Known-answer suppression: only an offer at least as new as ours makes ours
            # redundant (a recipient pinned to a newer baseline still hears of it).
            mine = self._best_image(st.solicit)
            if mine is None or (offer.security_version, version_key(offer.version)) >= (
                    mine.security_version, version_key(mine.version)):
                st.overheard += 1
            st.last_seen = now

    def _send_offer(self, st: _SolicitState, now: float) -> None:
        st.offer_at = None
        image = self._best_image(st.solicit)
        why = None
        rid = st.solicit.recipient_id
        if (st.overheard >= self.limits.suppress_after
                and self._quiet_for.get(rid, 0) < self.limits.suppress_rounds):
            why = "suppressed (enough offers overheard)"
            self._quiet_for[rid] = self._quiet_for.pop(rid, 0) + 1
            while len(self._quiet_for) > self.limits.max_tracked:
                self._quiet_for.popitem(last=False)
        elif self.load >= self.limits.capacity:
            why = "at capacity"
        elif self.load + self._offers_out(now) >= self.limits.capacity:
            # Offers are promises: never make more than the free slots could keep, so the
            # other recipients hear no offer from us and others (the console) answer them.
            why = "at capacity (offers outstanding)"
        elif image is None:
            why = "no matching image"
        if why is not None or image is None:
            st.sm.fire(_I.SUPPRESS)
            self.skipped[why or "no matching image"] += 1
            return
        st.sm.fire(_I.SEND)
        st.offered_at = now
        self._quiet_for.pop(rid, None)
        s = st.solicit
        ident = self.identity
        offer = Offer(xid=s.xid, recipient_id=s.recipient_id, donor_id=ident.donor_id,
                      donor_kind=ident.kind, target=image.target,
                      manifest_digest=image.manifest_digest, version=image.version,
                      security_version=image.security_version, size=image.size,
                      load=self.load, capacity=self.limits.capacity,
                      transfer_url=ident.transfer_url, lease_s=self.limits.lease_s,
                      topology=ident.topology, held=image.held)
        self._outbox.append((offer, GROUP))
        self._events.append(OfferSent(xid=s.xid, recipient_id=s.recipient_id,
                                      manifest_digest=image.manifest_digest))

    def _nak(self, accept: Accept, addr: Address, reason: str) -> None:
        self._outbox.append((Nak(xid=accept.xid, recipient_id=accept.recipient_id,
                                 donor_id=self.identity.donor_id, reason=reason), addr))

    def _on_accept(self, accept: Accept, addr: Address, now: float) -> None:
        key = (accept.recipient_id, accept.xid)
        st = self._solicits.get(key)
        if accept.donor_id != self.identity.donor_id:
            self.ignored["accept naming another donor"] += 1
            if st is not None and st.sm.can(_I.LOSE):
                st.offer_at = None
                if st.sm.state is _S.RESERVED and st.token is not None:
                    self._end(st.token, f"superseded: recipient accepted {accept.donor_id}")
                else:
                    st.sm.fire(_I.LOSE)
            return
        if st is not None and st.sm.state is _S.RESERVED and st.token is not None:
            res = self._reservations[st.token]
            if res.manifest_digest != accept.manifest_digest:
                self._nak(accept, addr, "already reserved for another digest on this xid")
                return
            self._outbox.append((Ack(xid=accept.xid, recipient_id=accept.recipient_id,
                                     donor_id=self.identity.donor_id, token=st.token,
                                     lease_expires=max(res.expires_at - now, 0.001)), addr))
            self.ignored["repeated accept (ACK resent)"] += 1
            return
        image = next((i for i in self._catalog()
                      if i.manifest_digest == accept.manifest_digest), None)
        if image is None:
            self._nak(accept, addr, "unknown manifest digest")
            return
        if self.breaker.is_withheld(image.manifest_digest):
            self._nak(accept, addr, "image withheld by the fleet circuit breaker")
            return
        if self.load >= self.limits.capacity:
            self._nak(accept, addr, f"at capacity ({self.load}/{self.limits.capacity})")
            return
        if st is None:
            if len(self._solicits) >= self.limits.max_tracked:
                self._nak(accept, addr, "too many negotiations in progress")
                return
            placeholder = Solicit(xid=accept.xid, recipient_id=accept.recipient_id,
                                  target=image.target, machine_name=image.machine_names[0],
                                  installed_version=None, security_version=0,
                                  min_security_version=0)
            st = self._track(key, _SolicitState(placeholder, now), now)
        st.sm.fire(_I.GRANT)
        st.offer_at, st.last_seen = None, now
        token = f"{self._rng.getrandbits(128):032x}"
        st.token = token
        expires_at = now + self.limits.lease_s
        self._reservations[token] = _Reservation(key=key, manifest_digest=image.manifest_digest,
                                                 expires_at=expires_at)
        self._outbox.append((Ack(xid=accept.xid, recipient_id=accept.recipient_id,
                                 donor_id=self.identity.donor_id, token=token,
                                 lease_expires=self.limits.lease_s), addr))
        self._events.append(ReservationGranted(token=token, manifest_digest=image.manifest_digest,
                                               image_sha256=image.image_sha256,
                                               recipient_id=accept.recipient_id,
                                               expires_at=expires_at))

    def _on_end(self, msg: Release | Decline, addr: Address, now: float) -> None:
        if msg.donor_id != self.identity.donor_id:
            self._drop(f"{msg.TYPE} for another donor", addr)
            return
        st = self._solicits.get((msg.recipient_id, msg.xid))
        if st is None:
            self._drop(f"{msg.TYPE} for an unknown xid", addr)
            return
        st.last_seen = now
        if isinstance(msg, Release):
            self._events.append(Released(xid=msg.xid, outcome=msg.outcome,
                                         bytes_received=msg.bytes_received))
            why = f"released: {msg.outcome}"
        else:
            self._events.append(Declined(xid=msg.xid, recipient_id=msg.recipient_id,
                                         reason=msg.reason))
            why = f"declined: {msg.reason}"
        if st.sm.state is _S.RESERVED and st.token is not None:
            self._end(st.token, why)

    def _end(self, token: str, reason: str) -> None:
        res = self._reservations.pop(token)
        st = self._solicits.get(res.key)
        if st is not None and st.sm.state is _S.RESERVED:
            st.sm.fire(_I.END)
            st.token = None
        self._events.append(ReservationEnded(token=token, reason=reason))
