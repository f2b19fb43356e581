"""Fetch a verified image from donors: negotiate (sans-IO sessions over the agent's
group link), then swarm the chunks from several donors at once, verifying every chunk.

:class:`NetworkRecovery` is the configuration and the seams (link, staging, the partial
images this node serves onward); one :class:`~fwrescue.recovery.swarm_run.SwarmRun`
does each fetch (see its module docstring for the flow). The trust rules are unchanged:

* the manifest the first ACKed donor names is fetched by digest and verified (every
  trust step); one that fails verification → DECLINE: that digest is never accepted
  again in this fetch, from anyone;
* a donor whose *bytes* fail (a manifest that does not hash to the offered digest, a
  chunk that does not match the genuine manifest, a range it was not asked for) is a bad
  carrier, not the image: it is DECLINEd and dropped, and honest donors of the same
  digest still heal;
* a transfer failure (donor died, stalled, refused, 416 on a range it claimed) →
  ``donor_failed``: the others carry on and the slot negotiates another donor;
* ``GaveUp`` before any manifest verified → :class:`~fwrescue.errors.RecoveryFailed`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from fwrescue.config import NetworkSettings, TimerSettings
from fwrescue.donor.service import codec_for
from fwrescue.errors import ConfigError, RecoveryFailed
from fwrescue.protocol.policy import Policy
from fwrescue.protocol.recipient import RecipientIdentity, RecipientSession, RecipientTimers
from fwrescue.recovery.ports import FetchRequest, Located, TranscriptLog
from fwrescue.recovery.swarm_run import SwarmRun, SwarmStats
from fwrescue.transfer.client import ImageFetcher, TransferLimits
from fwrescue.transfer.pacing import Pacer
from fwrescue.transfer.partial import PartialImages
from fwrescue.transfer.staging import StagedImage, StagingArea
from fwrescue.transfer.swarm import SwarmLimits
from fwrescue.transport.link import Link, open_link
from fwrescue.trust.transfer_tls import client_context
from fwrescue.trust.verifier import Verifier

__all__ = ["NetworkRecovery", "SwarmSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SwarmSettings:
    """How a recipient swarms. Seconds and counts; raises ConfigError."""

    limits: SwarmLimits = field(default_factory=SwarmLimits)
    max_sessions: int = 12  # negotiation sessions per fetch (bounds re-solicits)
    max_negotiating: int = 2  # sessions looking for a donor at once
    have_refresh_s: float = 0.5  # re-read an idle partial donor's have-map this often
    idle_release_s: float = 1.5  # release a partial donor idle (useless) this long
    give_up_cooldown_s: float = 2.0  # after an extra session gave up, wait this long
    secondary_jitter_s: float = 0.2  # start-up jitter of the extra sessions
    # With no donor left, give up after this many sessions in a row found none.
    max_fruitless: int = 2

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_fruitless", "max_negotiating"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 256:
                raise ConfigError("swarm count must be an integer in [1, 256]", setting=name)
        for name in ("have_refresh_s", "idle_release_s", "give_up_cooldown_s",
                     "secondary_jitter_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value <= 3600:
                raise ConfigError("swarm setting must be seconds in [0, 3600]", setting=name)
        if self.have_refresh_s <= 0:
            raise ConfigError("have_refresh_s must be positive")


class NetworkRecovery:
    """Implements :class:`~fwrescue.recovery.ports.NetworkFetcher` for one target.

    ``link_factory`` gives each negotiation session its link (the agent passes views of
    its one shared group link); ``partial`` is where fetches register the images they
    are receiving, so the node's donor serves their verified chunks; ``ingress_bps``
    shapes this node's downloads, all donors together, like a BMC's link.
    """

    def __init__(self, *, node_id: str, topology: str | None, network: NetworkSettings,
                 timers: TimerSettings, policy: Policy, verifier: Verifier,
                 staging_dir: Path, pinned_version: str | None = None,
                 limits: TransferLimits | None = None,
                 rng: random.Random | None = None, deadline_s: float = 900.0,
                 swarm: SwarmSettings | None = None,
                 link_factory: Callable[[], Link] | None = None,
                 partial: PartialImages | None = None,
                 ingress_bps: int | None = None) -> None:
        self.node_id = node_id
        self._topology = topology or None
        self._network = network
        self._timers = RecipientTimers(
            startup_jitter=timers.startup_jitter, offer_window=timers.offer_window,
            backoff_initial=timers.backoff_initial, backoff_max=timers.backoff_max,
            max_solicits=timers.max_solicits, accept_timeout=timers.accept_timeout,
            enough_offers=timers.enough_offers)
        self._secondary_timers = dataclasses.replace(
            self._timers, startup_jitter=min(self._timers.startup_jitter,
                                             (swarm or SwarmSettings()).secondary_jitter_s))
        self._policy = policy
        self.verifier = verifier
        self.staging = StagingArea(staging_dir)
        self._pinned = pinned_version
        self._limits = limits or TransferLimits()
        self.rng = rng or random.Random()
        self.swarm_settings = swarm or SwarmSettings()
        self._link_factory = link_factory or (lambda: open_link(network))
        self._partial = partial
        self._ingress = Pacer(ingress_bps) if ingress_bps else None
        self.ingress_bps = ingress_bps
        # A backstop: sessions end by themselves (max_solicits) and transfers by their stall
        # timeouts; this bounds the whole fetch even if a part misbehaves.
        self._deadline_s = deadline_s
        self.last_stats: SwarmStats | None = None

    # --- seams for SwarmRun -------------------------------------------------------------

    def new_session(self, request: FetchRequest, *, secondary: bool) -> RecipientSession:
        return RecipientSession(
            identity=RecipientIdentity(
                node_id=self.node_id, target=request.target, machine_name=request.machine_name,
                installed_version=request.installed_version,
                security_version=request.security_version,
                min_security_version=request.min_security_version, topology=self._topology),
            timers=self._secondary_timers if secondary else self._timers,
            policy=self._policy, codec=codec_for(self._network), rng=self.rng,
            pinned_version=self._pinned)

    def open_link(self) -> Link:
        return self._link_factory()

    def share_partial(self, staged: StagedImage, manifest_raw: bytes, digest: str) -> None:
        if self._partial is not None:
            self._partial.add(staged, manifest_raw, digest)

    def finalizing_partial(self, sha256: str) -> None:
        if self._partial is not None:
            self._partial.finalizing(sha256)

    def finish_partial(self, sha256: str, path: Path) -> None:
        if self._partial is not None:
            self._partial.finished(sha256, path)

    def forget_partial(self, sha256: str) -> None:
        if self._partial is not None:
            self._partial.remove(sha256)

    # --- NetworkFetcher ---------------------------------------------------------------

    async def fetch(self, request: FetchRequest, log_event: TranscriptLog,
                    progress: Callable[[int, int], None]) -> Located:
        tls = self._network.tls
        connector = aiohttp.TCPConnector(
            ssl=client_context(tls.ca, tls.cert, tls.key) if tls is not None else True)
        async with aiohttp.ClientSession(connector=connector) as http:
            fetcher = ImageFetcher(http, limits=self._limits, ingress=self._ingress,
                                   require_tls=tls is not None)
            run = SwarmRun(self, request, fetcher, log_event, progress)
            try:
                async with asyncio.timeout(self._deadline_s):
                    return await run.run()
            except TimeoutError as e:
                raise RecoveryFailed("no verified image within the fetch deadline",
                                     deadline_s=self._deadline_s) from e
            finally:
                self.last_stats = run.stats
                await run.close()
