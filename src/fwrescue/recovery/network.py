"""Fetch a verified image from donors: negotiate (sans-IO session over multicast), then
transfer from the ACKed donor, verifying every chunk.

The loop over offers is the protocol's; this module only reacts to its events:

* ``DonorAcked`` → fetch the manifest by digest, verify it (every trust step), fetch
  the missing chunks into staging, verify the whole image, RELEASE, done;
* the manifest the offer names fails verification (bad signature, other board,
  rollback) → DECLINE: that digest is never accepted again in this session, from anyone;
* the donor's *bytes* fail (a manifest that does not hash to the offered digest, a chunk
  that does not match a genuine manifest) → the donor is a bad carrier, not the image:
  ``reject_carrier`` DECLINEs and drops that donor only, so honest donors of the same digest
  still heal
  (the transcript still records it as ``declined``, with ``blame = "donor"``);
* a transfer failure (donor died, stalled, refused) → ``donor_failed``: the next
  offer is accepted and the transfer resumes from the verified chunks on disk;
* ``GaveUp`` → :class:`~fwrescue.errors.RecoveryFailed`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import aiohttp

from fwrescue.config import NetworkSettings, TimerSettings
from fwrescue.donor import codec_for
from fwrescue.errors import FwRescueError, RecoveryFailed, TransferError, TrustError
from fwrescue.protocol.events import DonorAcked, Event, GaveUp
from fwrescue.protocol.policy import Policy
from fwrescue.protocol.recipient import RecipientIdentity, RecipientSession, RecipientTimers
from fwrescue.recovery.ports import FetchRequest, Located, TranscriptLog
from fwrescue.transfer.client import FetchStats, ImageFetcher, TransferLimits
from fwrescue.transfer.staging import StagingArea
from fwrescue.transport.link import Link, open_link
from fwrescue.transport.udp import SessionDriver
from fwrescue.trust.verifier import Verifier

__all__ = ["NetworkRecovery"]

log = logging.getLogger(__name__)


def _describe(event: Event) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if is_dataclass(event):
        for key, value in asdict(event).items():
            if isinstance(value, dict):  # an embedded Offer: keep what a reader needs
                value = {k: value.get(k) for k in ("donor_id", "donor_kind", "version",
                                                   "security_version", "load", "manifest_digest")
                         if k in value}
            elif isinstance(value, tuple | list) and value and isinstance(value[0], dict):
                value = [v.get("donor_id") for v in value]
            fields[key] = value
    fields.pop("token", None)  # a credential: never in a transcript
    return fields


class NetworkRecovery:
    """Implements :class:`~fwrescue.recovery.ports.NetworkFetcher` for one target."""

    def __init__(self, *, node_id: str, topology: str | None, network: NetworkSettings,
                 timers: TimerSettings, policy: Policy, verifier: Verifier,
                 staging_dir: Path, pinned_version: str | None = None,
                 limits: TransferLimits | None = None,
                 rng: random.Random | None = None, deadline_s: float = 900.0) -> None:
        self._node_id = node_id
        self._topology = topology or None
        self._network = network
        self._timers = RecipientTimers(
            startup_jitter=timers.startup_jitter, offer_window=timers.offer_window,
            backoff_initial=timers.backoff_initial, backoff_max=timers.backoff_max,
            max_solicits=timers.max_solicits, accept_timeout=timers.accept_timeout,
            enough_offers=timers.enough_offers)
        self._policy = policy
        self._verifier = verifier
        self._staging = StagingArea(staging_dir)
        self._pinned = pinned_version
        self._limits = limits or TransferLimits()
        self._rng = rng or random.Random()
        # A backstop: the session ends by itself (max_solicits) and transfers by their stall
        # timeouts; this bounds the whole fetch even if a part misbehaves.
        self._deadline_s = deadline_s

    async def fetch(self, request: FetchRequest, log_event: TranscriptLog,
                    progress: Callable[[int, int], None]) -> Located:
        session = RecipientSession(
            identity=RecipientIdentity(
                node_id=self._node_id, target=request.target, machine_name=request.machine_name,
                installed_version=request.installed_version,
                security_version=request.security_version,
                min_security_version=request.min_security_version, topology=self._topology),
            timers=self._timers, policy=self._policy, codec=codec_for(self._network),
            rng=self._rng, pinned_version=self._pinned)
        link = open_link(self._network)
        try:
            async with asyncio.timeout(self._deadline_s):
                return await self._negotiate(session, link, request, log_event, progress)
        except TimeoutError as e:
            raise RecoveryFailed("no verified image within the fetch deadline",
                                 deadline_s=self._deadline_s) from e

    async def _negotiate(self, session: RecipientSession, link: Link,
                         request: FetchRequest, log_event: TranscriptLog,
                         progress: Callable[[int, int], None]) -> Located:
        async with aiohttp.ClientSession() as http, SessionDriver(session, link) as driver:
            fetcher = ImageFetcher(http, limits=self._limits)
            driver.act(session.start)
            while True:
                event = await driver.events.get()
                log_event(type(event).__name__, **_describe(event))
                if isinstance(event, GaveUp):
                    raise RecoveryFailed("no donor delivered a verified image",
                                         reason=event.reason)
                if not isinstance(event, DonorAcked):
                    continue
                located = await self._transfer(event, request, fetcher, driver, session,
                                               log_event, progress)
                if located is not None:
                    return located

    async def _transfer(self, ack: DonorAcked, request: FetchRequest, fetcher: ImageFetcher,
                        driver: SessionDriver, session: RecipientSession,
                        log_event: TranscriptLog,
                        progress: Callable[[int, int], None]) -> Located | None:
        offer = ack.offer
        url, digest = offer.transfer_url, offer.manifest_digest
        manifest_at_fault = False
        try:
            raw = await fetcher.fetch_manifest(url, digest, ack.token)
            # Whatever fails from here to "manifest verified" is the fault of the signed
            # manifest itself only when the donor sent the bytes the offer named.
            manifest_at_fault = hashlib.sha256(raw).hexdigest() == digest
            verified = self._verifier.verify_manifest(
                raw, target=request.target, machine_name=request.machine_name,
                expected_digest=digest)
            manifest_at_fault = False
            log_event("manifest verified", donor=offer.donor_id,
                      version=verified.manifest.version,
                      security_version=verified.manifest.security_version)
            # opening re-checks chunks kept from an earlier attempt: hashing, off the loop
            staged = await asyncio.to_thread(self._staging.open, verified)
            try:
                stats = await fetcher.fetch_image(url, ack.token, verified, staged, progress)
                # Every chunk matched the signed list; a whole-image mismatch now means the
                # signed manifest contradicts itself: the digest is at fault, not the carrier.
                manifest_at_fault = True
                image = await asyncio.to_thread(staged.finalize, self._verifier, verified)
                manifest_at_fault = False
            finally:
                staged.close()
        except TrustError as e:
            log.warning("%s: declining %s's image: %s", self._node_id, offer.donor_id, e)
            blame = "manifest" if manifest_at_fault else "donor"
            log_event("declined", donor=offer.donor_id, reason=str(e), blame=blame,
                      **_moved(e))
            why = _reason(e)
            if manifest_at_fault:
                driver.act(lambda now: session.decline(why, now))
            else:
                driver.act(lambda now: session.reject_carrier(why, now))
            return None
        except TransferError as e:
            log.warning("%s: transfer from %s failed: %s", self._node_id, offer.donor_id, e)
            log_event("donor failed", donor=offer.donor_id, reason=str(e), **_moved(e))
            why = _reason(e)
            driver.act(lambda now: session.donor_failed(why, now))
            return None
        log_event("transferred", donor=offer.donor_id, bytes=stats.bytes_received,
                  refetched_chunks=stats.chunks_refetched, seconds=round(stats.seconds, 3))
        driver.act(lambda now: session.release("success", stats.bytes_received, now))
        return Located(verified=verified, image=image,
                       origin=f"{offer.donor_kind}:{offer.donor_id}", donor_id=offer.donor_id,
                       donor_kind=str(offer.donor_kind))


def _moved(error: FwRescueError) -> dict[str, int]:
    """What a failed image fetch had moved (bytes and refetched chunks), for the transcript."""
    stats = error.fields.get("stats")
    if not isinstance(stats, FetchStats):
        return {}
    return {"bytes": stats.bytes_received, "refetched_chunks": stats.chunks_refetched}


def _reason(error: Exception) -> str:
    """A printable reason that fits a datagram (the protocol caps it at 200 ASCII chars)."""
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in str(error))
    return text[:200] or type(error).__name__
