"""The donor service: answers SOLICITs from the package store and serves the transfers.

It joins the sans-IO :class:`~fwrescue.protocol.donor.DonorResponder` (on its own
multicast link) with the content-addressed transfer server: an ACK's one-time token
is granted to the server when the reservation is made and revoked when it ends
(RELEASE, DECLINE, lease expiry). A peer agent and the management console run the
same service; only ``kind`` and the store differ.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from fwrescue.config import DonorSettings, NetworkSettings, read_fleet_key
from fwrescue.image.store import PackageStore
from fwrescue.protocol.codec import Codec
from fwrescue.protocol.donor import DonorIdentity, DonorLimits, DonorResponder, OfferableImage
from fwrescue.protocol.events import Event, OfferSent, ReservationEnded, ReservationGranted
from fwrescue.protocol.messages import DonorKind
from fwrescue.transfer.server import TransferServer, TransferServerSettings
from fwrescue.transfer.tokens import TokenRegistry
from fwrescue.transport.link import open_link
from fwrescue.transport.udp import SessionDriver

__all__ = ["DonorService", "DonorStats", "codec_for"]

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


class DonorService:
    """Donates every image in ``store``; start() opens the link and the transfer server."""

    def __init__(self, *, donor_id: str, kind: DonorKind, store: PackageStore,
                 network: NetworkSettings, settings: DonorSettings, topology: str | None = None,
                 rng: random.Random | None = None) -> None:
        self._donor_id = donor_id
        self._kind = kind
        self._store = store
        self._network = network
        self._settings = settings
        self._topology = topology or None
        # ACK tokens are credentials: they come from the OS's CSPRNG unless a test seeds one.
        self._rng = rng or random.SystemRandom()
        self.tokens = TokenRegistry(clock=time.time)
        self.server = TransferServer(store, self.tokens, TransferServerSettings(
            max_uploads=settings.max_uploads,
            rate_limit_bps=settings.rate_limit_bps or None))
        self.stats = DonorStats()
        self.transfer_url: str | None = None
        self._driver: SessionDriver | None = None
        self.responder: DonorResponder | None = None

    def catalog(self) -> list[OfferableImage]:
        return [OfferableImage(manifest_digest=s.digest, image_sha256=s.manifest.sha256,
                               target=s.manifest.target, machine_names=s.manifest.machine_names,
                               version=s.manifest.version,
                               security_version=s.manifest.security_version,
                               size=s.manifest.size)
                for s in self._store.list()]

    async def start(self) -> None:
        self.transfer_url = await self.server.start(self._network.transfer_host,
                                                    self._network.transfer_port)
        self.responder = DonorResponder(
            identity=DonorIdentity(donor_id=self._donor_id, kind=self._kind,
                                   transfer_url=self.transfer_url, topology=self._topology),
            catalog=self.catalog,
            limits=DonorLimits(capacity=self._settings.max_uploads,
                               lease_s=self._settings.lease_s,
                               console_extra_delay=self._settings.console_offer_delay_s,
                               suppress_after=self._settings.suppress_after),
            codec=codec_for(self._network), rng=self._rng)
        self._driver = SessionDriver(self.responder, open_link(self._network),
                                     on_event=self._on_event)
        await self._driver.start()

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
                              expires_at=event.expires_at)
            log.info("%s: reserved a transfer of %s for %s", self._donor_id,
                     event.image_sha256[:12], event.recipient_id)
        elif isinstance(event, ReservationEnded):
            self.stats.ended += 1
            self.tokens.revoke(event.token)
        else:
            if isinstance(event, OfferSent):
                self.stats.offers += 1
            log.debug("%s: %s", self._donor_id, event)
