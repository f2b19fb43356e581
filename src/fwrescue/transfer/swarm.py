"""Which chunk comes from which donor, for one image: the sans-IO swarm scheduler.

A recipient fetches one image from up to ``SwarmLimits.max_donors`` donors at once. A
donor is *complete* (it holds the whole image: a healthy peer or the console) or
*partial* (a recipient that is still receiving and serves only the chunks it has already
verified; it says which in its have-map). This module decides, for every free request
slot of every donor, which contiguous run of chunks to ask that donor for. It never
touches a socket, a clock or a file: the shell tells it what happened (a chunk verified,
a chunk failed, a request ended, a donor appeared or vanished) and asks it what to do
next. ``now`` is a parameter of every call so the policy may use time later; randomness
comes from the injected ``random.Random``, so a seeded run is reproducible.

Piece selection (the reason is in ``docs/transfer.md``):

* **Rarest first, random among equals.** A chunk's rarity is the number of this
  recipient's active donors that hold it. A donor is given the rarest pending chunk it
  holds, chosen at random among the equally rare ones, so a complete donor is spent on
  the chunks only it can serve, and recipients that start together fetch different
  chunks and can serve each other sooner.
* **Runs inside aligned blocks.** A request asks for one contiguous run (one HTTP
  Range): the stretch of pending chunks the donor holds around the chosen chunk, inside
  the aligned block of ``max_run`` chunks that contains it. Runs never straddle blocks,
  so the image does not fragment into one-chunk gaps.
* **No chunk is asked of two donors** until every missing chunk is in flight. Then
  (``endgame``) a free donor may be asked for a chunk one other request already covers,
  never more than two copies at once, so one slow donor does not hold up the end.
* **Seed of last resort.** A donor added with ``last_resort=True`` (the console) is only
  asked for chunks that no other active donor holds, and never for endgame copies.

Bad input: a have-map index outside the image raises ``RemoteProtocolError`` and changes
nothing; a have-map that no longer lists a chunk it listed before is a lie and drops the
donor (``'have-map shrank'``); a chunk that fails verification drops its donor. A dropped
donor is never used again for this image. API misuse (an unknown donor, one donor added
twice, more than ``max_donors``) raises ``LocalProtocolError`` and changes nothing.

Cost per call is O(run length × active donors), never O(chunks × donors): pending chunks
sit in buckets by rarity, one set of buckets shared by the complete donors and one per
partial donor, each an indexable set with O(1) add, remove and random choice.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fwrescue.errors import ConfigError, LocalProtocolError, RemoteProtocolError

__all__ = ["MAX_CHUNK_COUNT", "ChunkRequest", "SwarmLimits", "SwarmScheduler"]

# An image of 64 MiB in 4 KiB chunks; far above any BIOS image the manifest allows.
MAX_CHUNK_COUNT = 1 << 14
# Upper bounds on the limits: a BMC serves a handful of uploads (transfer server default
# max_uploads=4), and a run beyond 64 chunks gains nothing over HTTP keep-alive.
_MAX_DONORS = 64
_MAX_REQUESTS_PER_DONOR = 16
_MAX_RUN = 64

_PENDING = 0
_IN_FLIGHT = 1
_VERIFIED = 2


@dataclass(frozen=True, kw_only=True)
class SwarmLimits:
    """How wide one recipient swarms. Raises ``ConfigError`` on a value out of range."""

    max_donors: int = 4  # donors used at once for one image
    requests_per_donor: int = 1  # outstanding requests per donor
    max_run: int = 4  # contiguous chunks per request (one HTTP Range)
    endgame: bool = True  # when every missing chunk is in flight, duplicate the last ones

    def __post_init__(self) -> None:
        for name, value, top in (
            ("max_donors", self.max_donors, _MAX_DONORS),
            ("requests_per_donor", self.requests_per_donor, _MAX_REQUESTS_PER_DONOR),
            ("max_run", self.max_run, _MAX_RUN),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ConfigError(f"swarm {name} must be an integer in 1..{top}, got {value!r}")
        if not isinstance(self.endgame, bool):
            raise ConfigError(f"swarm endgame must be a bool, got {self.endgame!r}")


@dataclass(frozen=True, kw_only=True)
class ChunkRequest:
    """Ask ``donor_id`` for chunks ``first..last`` (inclusive), one contiguous run."""

    donor_id: str
    first: int  # inclusive chunk indices of one contiguous run
    last: int

    def __post_init__(self) -> None:
        if not isinstance(self.donor_id, str) or not self.donor_id:
            raise LocalProtocolError("a chunk request needs a non-empty donor id")
        if not 0 <= self.first <= self.last:
            raise LocalProtocolError(f"bad chunk run {self.first}..{self.last}")

    @property
    def indices(self) -> range:
        """The chunk indices this request covers."""
        return range(self.first, self.last + 1)


class _IndexedSet:
    """A set of ints with O(1) add, discard, membership and uniform random choice."""

    __slots__ = ("_items", "_where")

    def __init__(self) -> None:
        self._items: list[int] = []
        self._where: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: int) -> bool:
        return item in self._where

    def add(self, item: int) -> None:
        if item not in self._where:
            self._where[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: int) -> None:
        at = self._where.pop(item, None)
        if at is None:
            return
        tail = self._items.pop()
        if at < len(self._items):
            self._items[at] = tail
            self._where[tail] = at

    def choice(self, rng: random.Random) -> int:
        return self._items[rng.randrange(len(self._items))]


@dataclass
class _Donor:
    donor_id: str
    have: set[int] | None  # None: complete
    last_resort: bool
    # Partial donors only: buckets[a] holds the pending chunks this donor has whose
    # rarity (partial donors holding it, not counting last-resort ones) is a.
    buckets: list[_IndexedSet] = field(default_factory=list)
    requests: list[ChunkRequest] = field(default_factory=list)
    fetching: dict[int, int] = field(default_factory=dict)  # chunk -> own requests covering

    def holds(self, index: int) -> bool:
        return self.have is None or index in self.have


class SwarmScheduler:
    """Which chunk comes from which donor, for one image. Sans-IO.

    The shell's loop: ``add_donor`` for every donor it negotiates (while
    ``wants_donor()``), send every request ``next_requests(now)`` returns, report each
    chunk with ``chunk_verified`` or ``chunk_failed`` and each finished or aborted
    request with ``request_ended``, ``drop_donor`` a donor that vanished, and call
    ``next_requests`` again after each of these until ``complete``.
    """

    def __init__(
        self,
        *,
        chunk_count: int,
        verified: Iterable[int] = (),
        rng: random.Random,
        limits: SwarmLimits | None = None,
    ) -> None:
        """Raises ``LocalProtocolError`` for a chunk count outside 1..MAX_CHUNK_COUNT or a
        verified index outside the image."""
        if isinstance(chunk_count, bool) or not 1 <= chunk_count <= MAX_CHUNK_COUNT:
            raise LocalProtocolError(f"chunk_count must be in 1..{MAX_CHUNK_COUNT}")
        self._count = chunk_count
        self._rng = rng
        self._limits = limits if limits is not None else SwarmLimits()
        self._state = bytearray(chunk_count)
        self._verified_count = 0
        for index in verified:
            self._check_index(index, LocalProtocolError)
            if self._state[index] != _VERIFIED:
                self._state[index] = _VERIFIED
                self._verified_count += 1
        width = self._limits.max_donors + 1
        self._rarity = [0] * chunk_count  # active partial non-last-resort donors holding it
        self._complete_helpers = 0  # active complete donors that are not last-resort
        self._global: list[_IndexedSet] = [_IndexedSet() for _ in range(width)]
        for index in range(chunk_count):
            if self._state[index] == _PENDING:
                self._global[0].add(index)
        self._pending_count = chunk_count - self._verified_count
        self._in_flight: dict[int, int] = {}  # chunk -> outstanding requests covering it
        self._donors: dict[str, _Donor] = {}
        self._dropped: dict[str, str] = {}
        self._requested: set[int] = set()
        self._refetched = 0

    # --- donors ---------------------------------------------------------------------

    def add_donor(
        self,
        donor_id: str,
        have: Iterable[int] | None,
        now: float,
        *,
        last_resort: bool = False,
    ) -> None:
        """have=None: a complete donor. A donor dropped earlier is refused (stays dropped).

        ``last_resort``: only ask this donor for chunks no other active donor holds.
        Raises ``RemoteProtocolError`` for a have index outside the image and
        ``LocalProtocolError`` for a donor already active or one past ``max_donors``;
        either way nothing changes.
        """
        if donor_id in self._dropped:
            return
        if not isinstance(donor_id, str) or not donor_id:
            raise LocalProtocolError("a donor needs a non-empty id")
        if donor_id in self._donors:
            raise LocalProtocolError(f"donor {donor_id!r} is already active")
        if len(self._donors) >= self._limits.max_donors:
            raise LocalProtocolError(f"already {self._limits.max_donors} donors")
        held = None if have is None else self._checked_have(have)
        donor = _Donor(donor_id=donor_id, have=held, last_resort=last_resort)
        self._donors[donor_id] = donor
        if held is None:
            if not last_resort:
                self._complete_helpers += 1
            return
        donor.buckets = [_IndexedSet() for _ in range(self._limits.max_donors + 1)]
        self._gain(donor, held)

    def update_have(self, donor_id: str, have: Iterable[int], now: float) -> None:
        """A partial donor's have-map grew. One that no longer lists a chunk it listed
        before is lying: dropped with reason 'have-map shrank'.

        ``have`` is the donor's whole have-map, not the new chunks only. A dropped donor
        is ignored; an unknown one raises ``LocalProtocolError``; an index outside the
        image raises ``RemoteProtocolError`` and changes nothing.
        """
        if donor_id in self._dropped:
            return
        donor = self._donors.get(donor_id)
        if donor is None:
            raise LocalProtocolError(f"unknown donor {donor_id!r}")
        held = self._checked_have(have)
        if donor.have is None:
            if len(held) < self._count:
                self.drop_donor(donor_id, "have-map shrank", now)
            return
        if not donor.have <= held:
            self.drop_donor(donor_id, "have-map shrank", now)
            return
        self._gain(donor, held - donor.have)

    def drop_donor(self, donor_id: str, reason: str, now: float) -> None:
        """Never used again for this image; its in-flight chunks go back to pending.

        Dropping an id never added bans it in advance. Dropping twice keeps the first
        reason.
        """
        if donor_id in self._dropped:
            return
        self._dropped[donor_id] = reason
        self._remove(donor_id)

    def remove_donor(self, donor_id: str, now: float) -> None:
        """Stop using a donor that did nothing wrong (released: idle, or done with it);
        its in-flight chunks go back to pending and it may be added again later.
        Unknown or dropped ids are ignored."""
        self._remove(donor_id)

    def _remove(self, donor_id: str) -> None:
        donor = self._donors.pop(donor_id, None)
        if donor is None:
            return
        for request in list(donor.requests):
            self._end(donor, request)
        if donor.have is None:
            if not donor.last_resort:
                self._complete_helpers -= 1
            return
        if donor.last_resort:
            return
        for index in donor.have:
            self._rerate(index, -1)

    # --- requests -------------------------------------------------------------------

    def next_requests(self, now: float) -> list[ChunkRequest]:
        """New requests for every free donor slot; each is marked in flight."""
        out: list[ChunkRequest] = []
        for donor in list(self._donors.values()):
            while len(donor.requests) < self._limits.requests_per_donor:
                request = self._pick(donor)
                if request is None:
                    break
                out.append(request)
        return out

    def chunk_verified(self, request: ChunkRequest, index: int, now: float) -> None:
        """Chunk ``index`` of ``request`` passed verification and is kept.

        Accepted even after the request ended or its donor was dropped: the bytes were
        checked against the signed manifest, so they are good whoever carried them. A
        chunk already verified (an endgame copy) changes nothing. Raises
        ``LocalProtocolError`` for an index outside the request.
        """
        if index not in request.indices or index >= self._count:
            raise LocalProtocolError(f"chunk {index} is not in request {request}")
        if self._state[index] == _VERIFIED:
            return
        if self._state[index] == _PENDING:
            self._leave_pending(index)
        self._state[index] = _VERIFIED
        self._verified_count += 1

    def chunk_failed(self, request: ChunkRequest, index: int, reason: str, now: float) -> None:
        """A chunk failed verification (or was not what was asked): drops the donor."""
        self.drop_donor(request.donor_id, f"bad chunk {index}: {reason}", now)

    def request_ended(self, request: ChunkRequest, now: float) -> None:
        """The request finished or was aborted; its unresolved chunks go back to pending.

        Idempotent: a request already ended (or whose donor was dropped) is ignored.
        """
        donor = self._donors.get(request.donor_id)
        if donor is not None and request in donor.requests:
            self._end(donor, request)

    def superfluous(self, request: ChunkRequest) -> bool:
        """Whether every chunk of ``request`` is verified already (so the shell may
        abort it, e.g. the slower copy in endgame)."""
        return all(self._state[i] == _VERIFIED for i in request.indices if i < self._count)

    # --- state ----------------------------------------------------------------------

    def wants_donor(self) -> bool:
        """Whether the shell should negotiate for one more donor (fewer than max_donors
        active and chunks remain)."""
        return len(self._donors) < self._limits.max_donors and not self.complete

    @property
    def complete(self) -> bool:
        """Every chunk is verified."""
        return self._verified_count == self._count

    def missing(self) -> list[int]:
        """The chunks not yet verified, ascending."""
        return [i for i in range(self._count) if self._state[i] != _VERIFIED]

    @property
    def active_donors(self) -> frozenset[str]:
        """Donors in use now."""
        return frozenset(self._donors)

    @property
    def dropped(self) -> Mapping[str, str]:
        """donor_id -> the reason it was dropped (read-only view)."""
        return MappingProxyType(self._dropped)

    @property
    def refetched(self) -> int:
        """Chunk requests beyond the first for the same chunk (an aborted request's
        chunks asked again, endgame copies)."""
        return self._refetched

    def unavailable(self) -> int:
        """Missing chunks, not in flight, that no active donor other than a last-resort
        one holds: what only the seed of last resort (or a donor not yet found) can give."""
        return 0 if self._complete_helpers else len(self._global[0])

    @property
    def in_flight(self) -> int:
        """Chunks covered by at least one outstanding request."""
        return len(self._in_flight)

    # --- internals ------------------------------------------------------------------

    def _check_index(self, index: object, error: type[Exception]) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self._count:
            raise error(f"chunk index {index!r} outside 0..{self._count - 1}")

    def _checked_have(self, have: Iterable[int]) -> set[int]:
        held: set[int] = set()
        for index in have:
            self._check_index(index, RemoteProtocolError)
            held.add(index)
        return held

    def _gain(self, donor: _Donor, new: set[int]) -> None:
        """``donor`` (partial, already in ``_donors``) now also holds ``new``."""
        assert donor.have is not None
        donor.have |= new
        for index in new:
            if self._state[index] == _PENDING:
                donor.buckets[self._rarity[index]].add(index)
            if not donor.last_resort:
                self._rerate(index, +1)

    def _rerate(self, index: int, delta: int) -> None:
        """Chunk ``index`` is held by ``delta`` more partial donors: move its buckets."""
        old = self._rarity[index]
        new = old + delta
        self._rarity[index] = new
        if self._state[index] != _PENDING:
            return
        self._global[old].discard(index)
        self._global[new].add(index)
        for other in self._donors.values():
            if other.have is not None and index in other.have:
                other.buckets[old].discard(index)
                other.buckets[new].add(index)

    def _leave_pending(self, index: int) -> None:
        rarity = self._rarity[index]
        self._global[rarity].discard(index)
        for donor in self._donors.values():
            if donor.have is not None and index in donor.have:
                donor.buckets[rarity].discard(index)
        self._pending_count -= 1

    def _enter_pending(self, index: int) -> None:
        self._state[index] = _PENDING
        rarity = self._rarity[index]
        self._global[rarity].add(index)
        for donor in self._donors.values():
            if donor.have is not None and index in donor.have:
                donor.buckets[rarity].add(index)
        self._pending_count += 1

    def _eligible(self, donor: _Donor, index: int) -> bool:
        if self._state[index] != _PENDING or not donor.holds(index):
            return False
        return not donor.last_resort or self._rarity[index] == 0

    def _pick(self, donor: _Donor) -> ChunkRequest | None:
        if self._pending_count == 0:
            return self._pick_endgame(donor)
        start = self._pick_start(donor)
        if start is None:
            return None
        block = start - start % self._limits.max_run
        end = min(block + self._limits.max_run, self._count) - 1
        first = start
        while first > block and self._eligible(donor, first - 1):
            first -= 1
        last = start
        while last < end and self._eligible(donor, last + 1):
            last += 1
        return self._issue(donor, first, last)

    def _pick_start(self, donor: _Donor) -> int | None:
        if donor.last_resort:
            # Only the chunks no other donor holds: rarity 0 and no complete helper.
            if self._complete_helpers:
                return None
            buckets = self._global[:1] if donor.have is None else donor.buckets[:1]
        else:
            buckets = self._global if donor.have is None else donor.buckets
        for bucket in buckets:
            if len(bucket):
                return bucket.choice(self._rng)
        return None

    def _pick_endgame(self, donor: _Donor) -> ChunkRequest | None:
        if not self._limits.endgame or donor.last_resort:
            return None
        # Few chunks are in flight here (at most donors × slots × max_run): scan them.
        candidates = sorted(
            i
            for i, copies in self._in_flight.items()
            if copies == 1 and i not in donor.fetching and donor.holds(i)
        )
        if not candidates:
            return None
        index = candidates[self._rng.randrange(len(candidates))]
        return self._issue(donor, index, index)

    def _issue(self, donor: _Donor, first: int, last: int) -> ChunkRequest:
        request = ChunkRequest(donor_id=donor.donor_id, first=first, last=last)
        for index in request.indices:
            if self._state[index] == _PENDING:
                self._leave_pending(index)
                self._state[index] = _IN_FLIGHT
            self._in_flight[index] = self._in_flight.get(index, 0) + 1
            donor.fetching[index] = donor.fetching.get(index, 0) + 1
            if index in self._requested:
                self._refetched += 1
            else:
                self._requested.add(index)
        donor.requests.append(request)
        return request

    def _end(self, donor: _Donor, request: ChunkRequest) -> None:
        donor.requests.remove(request)
        for index in request.indices:
            own = donor.fetching[index] - 1
            if own:
                donor.fetching[index] = own
            else:
                del donor.fetching[index]
            copies = self._in_flight[index] - 1
            if copies:
                self._in_flight[index] = copies
                continue
            del self._in_flight[index]
            if self._state[index] == _IN_FLIGHT:
                self._enter_pending(index)
