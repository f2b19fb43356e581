"""The donor service: answers SOLICITs from the package store and serves the transfers.

It joins the sans-IO :class:`~fwrescue.donor.responder.DonorResponder` (on its own
multicast link) with the content-addressed transfer server: an ACK's one-time token
is granted to the server when the reservation is made and revoked when it ends
(RELEASE, DECLINE, lease expiry). A peer agent and the management console run the
same service; only ``kind`` and the store differ.

With ``partial`` (a :class:`~fwrescue.transfer.partial.PartialImages` the agent's
recoveries fill) the service is also a *partial donor*: it offers an image it is still
receiving once it holds a verified chunk (OFFER ``held``) and serves only verified
chunks of it. It feeds the REPORTs it overhears to the responder's circuit breaker and
keeps the images it withheld in :attr:`DonorService.withheld`; ``on_withheld``
callbacks hear of each as it happens. :meth:`DonorService.send_report` sends this
node's own REPORT through the same link.

With ``network.tls`` the transfer server speaks mutual TLS with this node's fleet-CA
certificate (checked to name ``donor_id`` at construction) and each token is bound to
the recipient its ACK went to (docs/transfer.md, "Transfer security").
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fwrescue.config import DonorSettings, NetworkSettings, read_fleet_key
from fwrescue.donor.responder import DonorIdentity, DonorLimits, DonorResponder, OfferableImage
from fwrescue.image.store import PackageStore
from fwrescue.protocol.codec import Codec
from fwrescue.protocol.events import (
    Event,
    ImageWithheld,
    OfferSent,
    ReservationEnded,
    ReservationGranted,
)
from fwrescue.protocol.messages import DonorKind, Report
from fwrescue.protocol.session import GROUP
from fwrescue.transfer.partial import DonorCatalog, PartialImages
from fwrescue.transfer.server import TransferServer, TransferServerSettings
from fwrescue.transfer.tokens import TokenRegistry
from fwrescue.transport.link import Link, open_link
from fwrescue.transport.udp import SessionDriver
from fwrescue.trust.transfer_tls import check_identity, server_context

__all__ = ["PEER_SEEN_S", "DonorService", "DonorStats", "codec_for"]

# A complete peer's offer overheard this recently means peers can serve that image.
PEER_SEEN_S = 30.0

log = logging.getLogger(__name__)


def codec_for(network: NetworkSettings) -> Codec:
    """The datagram codec; HMAC-authenticated when a fleet key file is configured."""
    key = read_fleet_key(network.fleet_key_file) if network.fleet_key_file else None
    return Codec(fleet_key=key, replay_window_s=network.replay_window_s)


@dataclass
class DonorStats:
    offers: int = 0
    reservations: int = 0
    ended: int = 0
    reports_sent: int = 0
    withheld: list[str] = field(default_factory=list)


class DonorService:
    """Donates every image in ``store``; start() opens the link and the transfer server."""

    def __init__(self, *, donor_id: str, kind: DonorKind, store: PackageStore,
                 network: NetworkSettings, settings: DonorSettings, topology: str | None = None,
                 rng: random.Random | None = None, partial: PartialImages | None = None,
                 link_factory: Callable[[], Link] | None = None) -> None:
        self._donor_id = donor_id
        self._kind = kind
        self._store = store
        self._network = network
        self._settings = settings
        self._topology = topology or None
        # ACK tokens are credentials: they come from the OS's CSPRNG unless a test seeds one.
        self._rng = rng or random.SystemRandom()
        self.partial = partial
        self._link_factory = link_factory or (lambda: open_link(network))
        self.tokens = TokenRegistry(clock=time.time)
        self.served = DonorCatalog(store, partial)
        # Token holders admitted: each waits its turn for one of max_uploads body slots.
        self._holders = max(settings.max_holders, settings.max_uploads)
        tls = network.tls
        if tls is not None:
            check_identity(tls.ca, tls.cert, tls.key, donor_id)
        ssl_context = server_context(tls.ca, tls.cert, tls.key) if tls is not None else None
        self.server = TransferServer(self.served, self.tokens, TransferServerSettings(
            max_uploads=settings.max_uploads, queue_wait_s=settings.upload_queue_s,
            max_queued=self._holders if settings.upload_queue_s > 0 else 0,
            rate_limit_bps=settings.rate_limit_bps or None), servables=self.served,
            admit_image=self._admits, ssl_context=ssl_context)
        self.withheld: dict[str, ImageWithheld] = {}
        self.on_withheld: list[Callable[[ImageWithheld], None]] = []
        self._report_codec = codec_for(network)
        self.capped_images: set[str] = set()
        self._booked: dict[str, int] = {}  # image bytes committed to send, by sha256
        self.stats = DonorStats()
        self.transfer_url: str | None = None
        self._driver: SessionDriver | None = None
        self.responder: DonorResponder | None = None

    def capped(self, sha256: str, size: int, digest: str, more: int = 0) -> bool:
        """Seed of last resort: a complete peer offered this image within the last
        :data:`PEER_SEEN_S` seconds, and serving ``more`` bytes would take what this
        donor committed to send of it past ``egress_cap_images`` images."""
        cap = self._settings.egress_cap_images
        if cap <= 0 or self.responder is None:
            return False
        seen = self.responder.peer_offers.get(digest)
        if seen is None or time.time() - seen >= PEER_SEEN_S:
            return False
        return self._booked.get(sha256, 0) + more > cap * size

    def _admits(self, sha256: str, length: int) -> bool:
        """Asked by the transfer server before each image body of ``length`` bytes."""
        for stored in self._store.list():
            m = stored.manifest
            if m.sha256 != sha256:
                continue
            if self.capped(sha256, m.size, stored.digest, more=length):
                if sha256 not in self.capped_images:
                    self.capped_images.add(sha256)
                    log.info("%s: capped %s after %d bytes: peers serve it", self._donor_id,
                             sha256[:12], self._booked.get(sha256, 0))
                return False
            if self._settings.egress_cap_images > 0 and (
                    sha256 in self._booked or len(self._booked) < 4096):
                self._booked[sha256] = self._booked.get(sha256, 0) + length
            return True
        return True

    def catalog(self) -> list[OfferableImage]:
        partial = self.partial.offerable() if self.partial is not None else []
        return partial + [OfferableImage(manifest_digest=s.digest, image_sha256=s.manifest.sha256,
                               target=s.manifest.target, machine_names=s.manifest.machine_names,
                               version=s.manifest.version,
                               security_version=s.manifest.security_version,
                               size=s.manifest.size)
                for s in self._store.list()
                if not self.capped(s.manifest.sha256, s.manifest.size, s.digest, more=1)]

    async def start(self) -> None:
        self.transfer_url = await self.server.start(self._network.transfer_host,
                                                    self._network.transfer_port)
        self.responder = DonorResponder(
            identity=DonorIdentity(donor_id=self._donor_id, kind=self._kind,
                                   transfer_url=self.transfer_url, topology=self._topology),
            catalog=self.catalog,
            limits=DonorLimits(capacity=self._holders,
                               lease_s=self._settings.lease_s,
                               console_extra_delay=self._settings.console_offer_delay_s,
                               suppress_after=self._settings.suppress_after,
                               breaker_threshold=self._settings.breaker_failures,
                               defer_s=self._settings.defer_offers_s),
            codec=codec_for(self._network), rng=self._rng)
        self._driver = SessionDriver(self.responder, self._link_factory(),
                                     on_event=self._on_event)
        await self._driver.start()

    def send_report(self, report: Report) -> bool:
        """Send this node's REPORT to the group; False when the service is not running."""
        driver = self._driver
        if driver is None:
            return False
        driver.link.send(self._report_codec.encode(report, time.time()), GROUP)
        # Our own datagram loops back to our responder too: our vote counts like any other.
        self.stats.reports_sent += 1
        return True

    async def stop(self) -> None:
        if self._driver is not None:
            await self._driver.close()
            self._driver = None
        await self.server.stop()

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, ReservationGranted):
            self.stats.reservations += 1
            self.tokens.grant(event.token, image_sha256=event.image_sha256,
                              manifest_digest=event.manifest_digest,
                              expires_at=event.expires_at, recipient_id=event.recipient_id)
            log.info("%s: reserved a transfer of %s for %s", self._donor_id,
                     event.image_sha256[:12], event.recipient_id)
        elif isinstance(event, ReservationEnded):
            self.stats.ended += 1
            self.tokens.revoke(event.token)
        elif isinstance(event, ImageWithheld):
            self.withheld[event.manifest_digest] = event
            self.stats.withheld.append(event.manifest_digest)
            log.warning("%s: image %s withheld by the fleet circuit breaker (%d recipients "
                        "failed to boot it)", self._donor_id, event.manifest_digest[:12],
                        event.failures)
            for callback in list(self.on_withheld):
                try:
                    callback(event)
                except Exception:  # a listener's bug must not stop the donor
                    log.exception("withheld-image listener failed")
        else:
            if isinstance(event, OfferSent):
                self.stats.offers += 1
            log.debug("%s: %s", self._donor_id, event)
