"""One multi-donor fetch: negotiate donors, drive the :class:`SwarmScheduler`, verify
every chunk before it is kept.

A run owns one or more negotiation *slots*: a sans-IO
:class:`~fwrescue.protocol.recipient.RecipientSession` each, all on the agent's one
shared group link. The first slot negotiates as a single-donor recipient would; its
ACKed donor's manifest is fetched and verified (every trust step), the staging opened
and registered as a partial image (so this node serves its verified chunks onward at
once). From then on:

* while ``scheduler.wants_donor()`` and no slot is negotiating, one more slot starts,
  restricted to the same manifest digest and excluding the donors already in use
  (at most ``max_sessions`` slots per run; a slot that gives up leaves a cool-down);
* each ACKed donor is added to the scheduler, complete (``held = null``) or partial
  (its have-map from ``GET /chunks``, refreshed after each request and while idle),
  the console as the *seed of last resort* (asked only for chunks no peer holds);
* every :class:`~fwrescue.transfer.swarm.ChunkRequest` is one HTTP Range request; each
  chunk is checked with ``Verifier.verify_chunk`` before it is written and marked;
* a donor that sends a bad chunk or another range than asked is dropped and DECLINEd
  (``reject_carrier``: the image stays acceptable from others); one that fails,
  refuses or answers 416 for a range its have-map claimed is dropped (``donor_failed``);
  one whose have-map shrank is dropped as a liar. Each drop is logged with its reason
  and written to the transcript; the slot then negotiates on for another donor;
* a donor whose upload slots are all busy answers 503 *busy* (upload slot rotation,
  docs/transfer.md): it is *choked*, not dropped: taken out of the scheduler (its
  chunks go back to pending, so other donors get them), kept bound, and put back after
  a short backoff (doubling while it stays busy) with a fresh have-map;
* a partial donor that stays idle (holds nothing we lack) is RELEASEd, freeing both its
  upload slot and ours; it is not banned, and may be bound again once it holds more;
* at the end every bound donor is RELEASEd with the bytes it sent.

Resume: the scheduler starts from the chunks the staging re-verified on open, so a
restarted agent never fetches a verified chunk twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fwrescue.errors import (
    ChunkMismatch,
    DonorUnavailable,
    FwRescueError,
    LocalError,
    LocalProtocolError,
    RecoveryFailed,
    RemoteProtocolError,
    TransferError,
    TrustError,
)
from fwrescue.protocol.events import DonorAcked, Event, GaveUp, OfferRejected
from fwrescue.protocol.messages import DonorKind, Offer
from fwrescue.protocol.recipient import RecipientSession
from fwrescue.recovery.fetch_log import SwarmStats, describe, reason_text
from fwrescue.recovery.ports import FetchRequest, Located, TranscriptLog
from fwrescue.transfer.client import ImageFetcher
from fwrescue.transfer.staging import StagedImage
from fwrescue.transfer.swarm import ChunkRequest, SwarmScheduler
from fwrescue.transport.udp import SessionDriver
from fwrescue.trust.digests import addressed
from fwrescue.trust.verifier import VerifiedManifest

if TYPE_CHECKING:
    from fwrescue.recovery.network import NetworkRecovery

__all__ = ["SwarmRun", "SwarmStats"]

log = logging.getLogger(__name__)

# How long a partial donor that just finished gets before its have-map is re-read.
GRACE_S = 0.3
# The longest a busy (choking) donor is left out of the scheduler.
CHOKE_MAX_S = 2.0


@dataclass(eq=False)
class _Slot:
    """One negotiation session and, once ACKed, the donor it bound."""

    number: int
    session: RecipientSession
    driver: SessionDriver
    offer: Offer | None = None
    token: str | None = None
    in_flight: int = 0
    refresh: asyncio.Task[None] | None = None
    idle_since: float | None = None
    done: bool = False
    grace_used: bool = False  # a partial donor's one 404 while it moves into its store
    chokes: int = 0  # busy answers in a row (backoff doubles with each)
    choked: bool = False  # out of the scheduler until the backoff ends

    @property
    def donor_id(self) -> str | None:
        return self.offer.donor_id if self.offer is not None else None


class SwarmRun:
    """One fetch for one :class:`FetchRequest` (see the module docstring)."""

    def __init__(self, owner: NetworkRecovery, request: FetchRequest, fetcher: ImageFetcher,
                 log_event: TranscriptLog, progress: Callable[[int, int], None]) -> None:
        self._owner = owner
        self._request = request
        self._fetcher = fetcher
        self._log = log_event
        self._progress = progress
        self._settings = owner.swarm_settings
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._slots: list[_Slot] = []
        self._by_donor: dict[str, _Slot] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._cooldown_until = 0.0
        self._fruitless = 0  # sessions that gave up since a donor was last added
        self._verified: VerifiedManifest | None = None
        self._digest: str | None = None
        self._staged: StagedImage | None = None
        self._scheduler: SwarmScheduler | None = None
        self._sync: asyncio.Future[None] | None = None
        self._refresh_s = self._settings.have_refresh_s
        self._choke_s = 0.25  # first backoff from a busy donor: two chunk times
        self._done_bytes = 0
        self._started = time.monotonic()
        self.stats = SwarmStats()

    # --- the loop ---------------------------------------------------------------------

    async def run(self) -> Located:
        await self._new_slot()
        while True:
            item = await self._queue.get()
            kind = item[0]
            if kind == "event":
                await self._on_event(item[1], item[2])
            elif kind == "done":
                self._on_request_done(item[1], item[2], item[3])
            elif kind == "have":
                self._on_have(item[1], item[2])
            elif kind == "unchoke":
                self._on_unchoke(item[1], item[2], item[3])
            scheduler = self._scheduler
            if scheduler is not None and scheduler.complete:
                return await self._finish()
            await self._pump()

    async def close(self) -> None:
        """Stop every task and session; the staging stays on disk for a resume."""
        for task in list(self._tasks):
            task.cancel()
        for slot in self._slots:
            if slot.refresh is not None:
                slot.refresh.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for slot in self._slots:
            await slot.driver.close()
        await self._await_sync()
        staged, self._staged = self._staged, None
        if staged is not None:
            self._owner.forget_partial(staged.sha256)
            staged.close()

    # --- slots ------------------------------------------------------------------------

    async def _new_slot(self) -> None:
        number = len(self._slots) + 1
        session = self._owner.new_session(self._request, secondary=number > 1)
        session.exclude_donor(self._owner.node_id, "this node itself")
        if self._digest is not None:
            session.require_digest(self._digest)
            for donor_id in self._by_donor:
                session.exclude_donor(donor_id, "already serving this image to us")
            if self._scheduler is not None:
                for donor_id, why in self._scheduler.dropped.items():
                    session.exclude_donor(donor_id, f"dropped: {why}")

        slot_ref: list[_Slot] = []

        async def on_event(event: Event) -> None:
            self._queue.put_nowait(("event", slot_ref[0], event))

        driver = SessionDriver(session, self._owner.open_link(), on_event=on_event)
        slot = _Slot(number=number, session=session, driver=driver)
        slot_ref.append(slot)
        self._slots.append(slot)
        self.stats.sessions = number
        await driver.start()
        driver.act(session.start)

    def _negotiating(self) -> int:
        return sum(1 for s in self._slots if not s.done and s.offer is None)

    async def _pump(self) -> None:
        scheduler = self._scheduler
        if scheduler is None:
            return
        now = time.monotonic()
        for req in scheduler.next_requests(now):
            slot = self._by_donor[req.donor_id]
            slot.in_flight += 1
            slot.idle_since = None
            self._spawn(self._run_request(slot, req))
        settings = self._settings
        for slot in list(self._by_donor.values()):
            if (slot.in_flight or slot.choked or slot.offer is None
                    or slot.offer.held is None):
                continue
            if slot.idle_since is None:
                slot.idle_since = now
            if now - slot.idle_since >= settings.idle_release_s:
                self._drop(slot, "idle: holds no chunk we still lack", release=True)
            elif slot.refresh is None:
                slot.refresh = asyncio.create_task(self._refresh(slot, self._refresh_s))
        stuck = not self._by_donor and not self._negotiating() and not self._tasks
        if stuck and self._fruitless >= settings.max_fruitless:
            raise RecoveryFailed("no donor delivered a verified image: every donor of the "
                                 "image failed or was dropped", dropped=len(scheduler.dropped),
                                 sessions=len(self._slots))
        negotiating = self._negotiating()
        wanted = scheduler.wants_donor() and (
            len(self._by_donor) + negotiating < settings.limits.max_donors)
        if (wanted and negotiating < settings.max_negotiating
                and len(self._slots) < settings.max_sessions
                and (stuck or now >= self._cooldown_until)):
            if stuck and now < self._cooldown_until:  # nothing else to wait for
                await asyncio.sleep(self._cooldown_until - now)
            await self._new_slot()
        elif stuck:
            raise RecoveryFailed("no donor delivered a verified image: every donor of the "
                                 "image failed or was dropped", dropped=len(scheduler.dropped),
                                 sessions=len(self._slots))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- negotiation events -----------------------------------------------------------

    async def _on_event(self, slot: _Slot, event: Event) -> None:
        # Offers are the transcript's "who answered" (at most enough_offers a round); the
        # rejects of a busy group are noise.
        if not isinstance(event, OfferRejected):
            self._log(type(event).__name__, slot=slot.number, **describe(event))
        if isinstance(event, GaveUp):
            slot.done = True
            if self._verified is None:
                raise RecoveryFailed("no donor delivered a verified image", reason=event.reason)
            self._cooldown_until = time.monotonic() + self._settings.give_up_cooldown_s
            self._fruitless += 1
            return
        if not isinstance(event, DonorAcked):
            return
        slot.offer, slot.token = event.offer, event.token
        if self._verified is None:
            await self._first_donor(slot)
        else:
            await self._add_donor(slot)

    async def _first_donor(self, slot: _Slot) -> None:
        """Fetch and verify the manifest the first ACKed donor names; open the staging."""
        offer, token = slot.offer, slot.token
        assert offer is not None and token is not None
        request, verifier = self._request, self._owner.verifier
        manifest_at_fault = False
        try:
            raw = await self._fetcher.fetch_manifest(offer.transfer_url,
                                                     offer.manifest_digest, token)
            manifest_at_fault = addressed(raw, offer.manifest_digest)
            verified = verifier.verify_manifest(
                raw, target=request.target, machine_name=request.machine_name,
                expected_digest=offer.manifest_digest)
        except TrustError as e:
            blame = "manifest" if manifest_at_fault else "donor"
            log.warning("%s: declining %s's manifest: %s", self._owner.node_id,
                        offer.donor_id, e)
            self._log("declined", donor=offer.donor_id, reason=str(e), blame=blame)
            why = reason_text(e)
            slot.offer = slot.token = None
            if manifest_at_fault:
                slot.driver.act(lambda now: slot.session.decline(why, now))
            else:
                slot.driver.act(lambda now: slot.session.reject_carrier(why, now))
            return
        except TransferError as e:
            self._fail_slot(slot, f"manifest fetch failed: {e}")
            return
        self._log("manifest verified", donor=offer.donor_id, version=verified.manifest.version,
                  security_version=verified.manifest.security_version)
        # opening re-checks chunks kept from an earlier attempt: hashing, off the loop
        staged = await asyncio.to_thread(self._owner.staging.open, verified)
        self._verified, self._digest, self._staged = verified, offer.manifest_digest, staged
        self._owner.share_partial(staged, raw, offer.manifest_digest)
        kept = staged.verified_chunks()
        m = verified.manifest
        self._done_bytes = sum(m.chunk_span(i)[1] for i in kept)
        if kept:
            self._log("resumed", verified_chunks=len(kept), chunks=m.chunk_count)
        self._scheduler = SwarmScheduler(chunk_count=m.chunk_count, verified=kept,
                                         rng=self._owner.rng, limits=self._settings.limits)
        # Re-read idle partial donors about every two chunk times of this node's link: a
        # partial donor gains about one chunk per chunk time, so slower polling idles us.
        ingress = self._owner.ingress_bps
        self._refresh_s = self._settings.have_refresh_s
        if ingress:
            self._refresh_s = min(self._refresh_s, max(0.05, 2 * m.chunk_size / ingress))
            self._choke_s = max(0.05, 2 * m.chunk_size / ingress)
        slot.session.require_digest(offer.manifest_digest)
        await self._add_donor(slot)

    async def _add_donor(self, slot: _Slot) -> None:
        offer, token, scheduler = slot.offer, slot.token, self._scheduler
        assert offer is not None and token is not None and scheduler is not None
        assert self._verified is not None
        donor_id = offer.donor_id
        if (offer.manifest_digest != self._digest or donor_id in self._by_donor
                or donor_id in scheduler.dropped or not scheduler.wants_donor()):
            self._release(slot, "not-needed")
            return
        have = None
        if offer.held is not None:
            try:
                have = await self._fetcher.fetch_have_map(offer.transfer_url, token,
                                                          self._verified)
            except TransferError as e:
                self._fail_slot(slot, f"have-map: {e}")
                return
        if scheduler.complete or not scheduler.wants_donor():
            self._release(slot, "not-needed")
            return
        try:
            scheduler.add_donor(donor_id, have, time.monotonic(),
                                last_resort=offer.donor_kind is DonorKind.CONSOLE)
        except RemoteProtocolError as e:
            self._fail_slot(slot, f"bad have-map: {e.message}", carrier=True)
            return
        self._by_donor[donor_id] = slot
        self._fruitless = 0
        self.stats.bytes_by_donor.setdefault(donor_id, 0)
        self._log("donor added", donor=donor_id, kind=str(offer.donor_kind),
                  held=None if have is None else len(have), slot=slot.number)

    # --- requests ---------------------------------------------------------------------

    async def _run_request(self, slot: _Slot, req: ChunkRequest) -> None:
        offer, token, verified = slot.offer, slot.token, self._verified
        assert offer is not None and token is not None and verified is not None
        donor_bytes = self.stats.bytes_by_donor
        # [next chunk index, bytes of it received so far]: a chunk whose bytes arrived but
        # was not kept is recorded in the staging map (a later fetch of it is a refetch).
        progress = [req.first, 0]

        def on_bytes(n: int) -> None:
            self.stats.bytes_received += n
            donor_bytes[req.donor_id] = donor_bytes.get(req.donor_id, 0) + n
            progress[1] += n

        def deliver(index: int, data: bytes) -> None:
            progress[0], progress[1] = index + 1, 0
            self._keep(req, index, data)

        try:
            await self._fetcher.fetch_chunks(offer.transfer_url, token, verified, req.first,
                                             req.last, deliver, on_bytes)
        except asyncio.CancelledError:
            self._abandon(progress[0] if progress[1] else None)
            raise
        except BaseException as e:  # handed to the loop, which decides
            if isinstance(e, ChunkMismatch):  # raised by deliver: its bytes all arrived
                self._abandon(progress[0] - 1)
            else:
                self._abandon(progress[0] if progress[1] else None)
            self._queue.put_nowait(("done", slot, req, e))
        else:
            self._queue.put_nowait(("done", slot, req, None))

    def _abandon(self, index: int | None) -> None:
        """Record that bytes of chunk ``index`` arrived but were not kept."""
        staged = self._staged
        if index is None or staged is None:
            return
        with contextlib.suppress(FwRescueError):
            if not staged.is_verified(index):
                staged.begin_chunk(index)

    def _keep(self, req: ChunkRequest, index: int, data: bytes) -> None:
        """Verify one chunk, then write and mark it (ChunkMismatch aborts the request)."""
        verified, staged, scheduler = self._verified, self._staged, self._scheduler
        assert verified is not None and staged is not None and scheduler is not None
        self._owner.verifier.verify_chunk(verified, index, data)
        if staged.is_verified(index):  # an endgame copy that lost the race
            self.stats.refetched_chunks += 1
            scheduler.chunk_verified(req, index, time.monotonic())
            return
        if staged.was_fetched(index):  # its bytes had arrived before and were not kept
            self.stats.refetched_chunks += 1
        staged.write_chunk(index, data)
        staged.mark_verified(index)
        scheduler.chunk_verified(req, index, time.monotonic())
        self.stats.chunks_fetched += 1
        self._done_bytes += len(data)
        self._progress(self._done_bytes, verified.manifest.size)
        if staged.sync_due and (self._sync is None or self._sync.done()):
            previous = self._sync
            if previous is not None:
                previous.result()  # a failed sync is a StagingError now, not later
            self._sync = asyncio.get_running_loop().run_in_executor(None, self._background)

    def _background(self) -> None:
        staged = self._staged
        if staged is not None:
            staged.sync()
            staged.digest_ahead()

    async def _await_sync(self) -> None:
        sync, self._sync = self._sync, None
        if sync is not None:
            with contextlib.suppress(Exception):
                await sync

    def _on_request_done(self, slot: _Slot, req: ChunkRequest, error: BaseException | None,
                         ) -> None:
        scheduler = self._scheduler
        assert scheduler is not None
        now = time.monotonic()
        slot.in_flight = max(0, slot.in_flight - 1)
        scheduler.request_ended(req, now)
        if error is None:
            slot.chokes = 0
            if slot.offer is not None and slot.offer.held is not None and slot.refresh is None:
                slot.refresh = asyncio.create_task(self._refresh(slot, 0.0))
            return
        if slot.donor_id != req.donor_id:
            return  # the slot moved on already
        if self._finishing_donor(slot, error):
            return
        if isinstance(error, DonorUnavailable) and error.fields.get("busy") is True:
            self._choke(slot)
            return
        if isinstance(error, ChunkMismatch):
            index = error.fields.get("index")
            scheduler.chunk_failed(req, index if isinstance(index, int) else req.first,
                                   reason_text(error), now)
            self._drop(slot, f"bad chunk: {error}", carrier=True)
        elif isinstance(error, TrustError | TransferError):
            self._drop(slot, str(error), carrier=not isinstance(error, TransferError)
                       or "another range" in str(error) or "another length" in str(error))
        elif isinstance(error, LocalError | FwRescueError):
            raise error
        else:
            raise error

    # --- have-maps --------------------------------------------------------------------

    async def _refresh(self, slot: _Slot, delay: float) -> None:
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            offer, token, verified = slot.offer, slot.token, self._verified
            if offer is None or token is None or verified is None:
                self._queue.put_nowait(("have", slot, None))
                return
            have: list[int] | BaseException
            try:
                have = await self._fetcher.fetch_have_map(offer.transfer_url, token, verified)
            except TransferError as e:
                have = e
            self._queue.put_nowait(("have", slot, (offer.donor_id, have)))
        finally:
            slot.refresh = None

    def _on_have(self, slot: _Slot, result: tuple[str, list[int] | BaseException] | None,
                 ) -> None:
        scheduler = self._scheduler
        if result is None or scheduler is None:
            return
        donor_id, have = result
        if slot.donor_id != donor_id or donor_id not in scheduler.active_donors:
            return
        if isinstance(have, BaseException):
            if not self._finishing_donor(slot, have):
                self._drop(slot, f"have-map: {have}")
            return
        try:
            scheduler.update_have(donor_id, have, time.monotonic())
        except RemoteProtocolError as e:
            self._drop(slot, f"bad have-map: {e.message}", carrier=True)
            return
        if donor_id in scheduler.dropped:  # the map shrank: a lie
            self._drop(slot, scheduler.dropped[donor_id], carrier=True)

    # --- upload slot rotation ----------------------------------------------------------

    def _choke(self, slot: _Slot) -> None:
        """Every upload slot of the slot's donor is busy: let other donors have its
        chunks for a backoff (two chunk times, doubling while busy, at most 2 s)."""
        scheduler, offer = self._scheduler, slot.offer
        if scheduler is None or offer is None or slot.choked:
            return
        slot.chokes += 1
        slot.choked = True
        self.stats.chokes += 1
        scheduler.remove_donor(offer.donor_id, time.monotonic())
        delay = min(CHOKE_MAX_S, self._choke_s * 2 ** min(slot.chokes - 1, 8))
        delay *= 0.5 + self._owner.rng.random()
        self._spawn(self._unchoke(slot, offer.donor_id, delay))

    async def _unchoke(self, slot: _Slot, donor_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        offer, token, verified = slot.offer, slot.token, self._verified
        have: list[int] | BaseException | None = None
        if offer is not None and token is not None and verified is not None \
                and offer.held is not None:
            try:
                have = await self._fetcher.fetch_have_map(offer.transfer_url, token, verified)
            except TransferError as e:
                have = e
        self._queue.put_nowait(("unchoke", slot, donor_id, have))

    def _on_unchoke(self, slot: _Slot, donor_id: str,
                    have: list[int] | BaseException | None) -> None:
        scheduler = self._scheduler
        slot.choked = False
        if (scheduler is None or slot.donor_id != donor_id or scheduler.complete
                or donor_id in scheduler.dropped or donor_id in scheduler.active_donors):
            return
        if isinstance(have, BaseException):
            if not self._finishing_donor(slot, have):
                self._drop(slot, f"have-map: {have}")
            return
        offer = slot.offer
        assert offer is not None
        try:
            scheduler.add_donor(donor_id, have, time.monotonic(),
                                last_resort=offer.donor_kind is DonorKind.CONSOLE)
        except RemoteProtocolError as e:
            self._drop(slot, f"bad have-map: {e.message}", carrier=True)
            return
        except LocalProtocolError:  # another donor took its place meanwhile
            self._drop(slot, "replaced while it was busy", release=True)
            return
        slot.idle_since = None

    # --- donor endings ----------------------------------------------------------------

    def _finishing_donor(self, slot: _Slot, error: BaseException) -> bool:
        """A partial donor answers 404 for a moment while its finished image moves from
        staging into its store: give it one grace re-read of its have-map."""
        offer = slot.offer
        if (offer is None or offer.held is None or slot.grace_used
                or not isinstance(error, DonorUnavailable) or error.fields.get("status") != 404):
            return False
        slot.grace_used = True
        if slot.refresh is None:
            slot.refresh = asyncio.create_task(self._refresh(slot, GRACE_S))
        self._log("donor finishing", donor=offer.donor_id, retry_s=GRACE_S)
        return True

    def _drop(self, slot: _Slot, reason: str, *, carrier: bool = False,
              release: bool = False) -> None:
        """Stop using the slot's donor for this image, with a logged reason."""
        donor_id = slot.donor_id
        scheduler = self._scheduler
        if donor_id is None:
            return
        self._by_donor.pop(donor_id, None)
        if release:  # it did nothing wrong: it may be bound again once it holds more
            if scheduler is not None:
                scheduler.remove_donor(donor_id, time.monotonic())
            self.stats.released[donor_id] = reason
            log.info("%s: releasing %s: %s", self._owner.node_id, donor_id, reason)
            self._log("donor released", donor=donor_id, reason=reason)
            self._release(slot, "idle")
            return
        if scheduler is not None and carrier:
            scheduler.drop_donor(donor_id, reason, time.monotonic())
        elif scheduler is not None:  # a stall or reset may be our own link (cut): not
            scheduler.remove_donor(donor_id, time.monotonic())  # banned, may bind again
        self.stats.dropped[donor_id] = reason
        log.warning("%s: dropped donor %s: %s", self._owner.node_id, donor_id, reason)
        self._log("donor dropped", donor=donor_id, reason=reason,
                  blame="donor" if carrier else "transfer")
        if carrier:  # it is DECLINEd as a bad carrier (the image stays acceptable)
            self._log("declined", donor=donor_id, reason=reason, blame="donor")
        self._fail_slot(slot, reason, carrier=carrier)

    def _fail_slot(self, slot: _Slot, reason: str, *, carrier: bool = False) -> None:
        """The slot's session moves on to another donor (DECLINE first for a bad carrier)."""
        why = reason_text(Exception(reason))
        slot.offer = slot.token = None
        slot.in_flight, slot.idle_since = 0, None
        session = slot.session
        if carrier:
            slot.driver.act(lambda now: session.reject_carrier(why, now))
        else:
            slot.driver.act(lambda now: session.donor_failed(why, now))

    def _release(self, slot: _Slot, outcome: str) -> None:
        donor_id = slot.donor_id
        sent = self.stats.bytes_by_donor.get(donor_id, 0) if donor_id else 0
        slot.offer = slot.token = None
        slot.done = True
        session = slot.session
        with contextlib.suppress(FwRescueError):
            slot.driver.act(lambda now: session.release(outcome, sent, now))

    # --- the end ----------------------------------------------------------------------

    async def _finish(self) -> Located:
        verified, staged, scheduler = self._verified, self._staged, self._scheduler
        assert verified is not None and staged is not None and scheduler is not None
        self.stats.staged_at = time.monotonic()
        for task in list(self._tasks):  # endgame copies still running
            task.cancel()
        best = max(self._by_donor.values(),
                   key=lambda s: self.stats.bytes_by_donor.get(s.donor_id or "", 0),
                   default=None)
        origin = best.offer if best is not None else None
        for slot in list(self._by_donor.values()):
            self._release(slot, "success")
        self._by_donor.clear()
        await self._await_sync()
        self._staged = None
        self._owner.finalizing_partial(staged.sha256)
        try:
            image = await asyncio.to_thread(staged.finalize, self._owner.verifier, verified)
            # Keep serving the whole image from its final path until the store has it.
            self._owner.finish_partial(staged.sha256, image)
        except ChunkMismatch as e:
            self._owner.forget_partial(staged.sha256)
            # Every chunk matched the signed list: the signed manifest contradicts itself.
            raise RecoveryFailed("the verified chunks do not form the signed image",
                                 detail=str(e)) from e
        stats = self.stats
        stats.rerequested_chunks = scheduler.refetched
        stats.dropped.update(scheduler.dropped)
        stats.seconds = time.monotonic() - self._started
        self._log("transferred", bytes=stats.bytes_received, chunks=stats.chunks_fetched,
                  refetched_chunks=stats.refetched_chunks,
                  rerequested_chunks=stats.rerequested_chunks, chokes=stats.chokes,
                  donors=dict(stats.bytes_by_donor),
                  dropped=dict(stats.dropped), sessions=stats.sessions,
                  seconds=round(stats.seconds, 3))
        kind = str(origin.donor_kind) if origin is not None else None
        donor_id = origin.donor_id if origin is not None else None
        return Located(verified=verified, image=image, origin=f"{kind}:{donor_id}",
                       donor_id=donor_id, donor_kind=kind)

