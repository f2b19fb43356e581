"""What one simulated run models: fleet size, image, links, faults, timers. Validated."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fwrescue.donor.responder import DonorLimits
from fwrescue.errors import ConfigError
from fwrescue.flash.timing import W25Q_JV, ChipTiming
from fwrescue.protocol.recipient import RecipientTimers
from fwrescue.transfer.swarm import MAX_CHUNK_COUNT, SwarmLimits

__all__ = ["MAX_NODES", "SimParams"]

# Bounds the model's memory and run time; 100k nodes would take an hour on one core.
MAX_NODES = 100_000


@dataclass(frozen=True, kw_only=True)
class SimParams:
    """One run. Rates in bits per second on the command line, bytes per second here."""

    nodes: int
    boards: int = 1
    image_bytes: int = 16 << 20
    chunk_bytes: int = 256 << 10
    link_bps: float = 100e6 / 8  # a BMC's NC-SI link, each way
    console_bps: float = 1e9 / 8  # the console's link, each way
    latency_s: float = 0.0005  # one way, datagrams and HTTP alike
    loss: float = 0.0  # per datagram
    donor_death_rate: float = 0.0  # fraction of nodes whose BMC dies once mid-transfer
    power_loss_rate: float = 0.0  # chance that a flash attempt loses power mid-way
    bmc_boot_s: float = 10.0  # a dead BMC is back (and resumes) after this long
    host_boot_s: float = 20.0  # flash written → host booted
    segment_size: int = 32  # nodes per L2 segment (a rack)
    broker_fanout: int = 4  # donors elsewhere on the board one SOLICIT reaches
    swarm: bool = True  # False: console-only (no peer donates)
    console_capacity: int = 4  # the console's admission limit (DonorLimits.capacity)
    console_below_peers: int = 2  # use the console only while fewer peers serve a node
    have_poll_s: float = 0.2  # a partial donor's have-map is fetched again after this
    idle_release_s: float = 1.0  # a donor with nothing to give for this long is released
    seed: int = 1
    limits: SwarmLimits = field(default_factory=SwarmLimits)
    timers: RecipientTimers = field(default_factory=RecipientTimers)
    # state_ttl: forget a solicit 2 s after its last message (default 60 s; an offer
    # window plus an accept timeout is 1.5 s): the same decisions, far smaller tables for
    # DonorResponder to scan on every datagram (its purge is O(tracked solicits)).
    donor_limits: DonorLimits = field(default_factory=lambda: DonorLimits(state_ttl=2.0))
    flash: ChipTiming = W25Q_JV
    until_s: float = 3600.0  # give up on the run at this virtual time

    def __post_init__(self) -> None:
        def count(name: str, lo: int, hi: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"sim {name} must be an integer in {lo}..{hi}", value=value)

        def positive(name: str, *, zero: bool = False) -> None:
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or (
                    value < 0 or (value == 0 and not zero)):
                kind = "non-negative" if zero else "positive"
                raise ConfigError(f"sim {name} must be a finite {kind} number", value=value)

        count("nodes", 1, MAX_NODES)
        count("boards", 1, 64)
        count("image_bytes", 1, 1 << 30)
        count("chunk_bytes", 4096, 16 << 20)
        count("segment_size", 1, 4096)
        count("broker_fanout", 0, 64)
        count("console_capacity", 1, 65_535)
        count("console_below_peers", 1, 64)
        for name in ("link_bps", "console_bps", "have_poll_s", "idle_release_s", "until_s"):
            positive(name)
        for name in ("latency_s", "bmc_boot_s", "host_boot_s"):
            positive(name, zero=True)
        for name in ("loss", "donor_death_rate", "power_loss_rate"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value < 1:
                raise ConfigError(f"sim {name} must be in [0, 1)", value=value)
        if self.chunk_count > MAX_CHUNK_COUNT:
            raise ConfigError("image has too many chunks for the scheduler",
                              chunks=self.chunk_count, limit=MAX_CHUNK_COUNT)

    @property
    def chunk_count(self) -> int:
        return -(-self.image_bytes // self.chunk_bytes)

    def chunk_size(self, index: int) -> int:
        last = self.image_bytes - (self.chunk_count - 1) * self.chunk_bytes
        return last if index == self.chunk_count - 1 else self.chunk_bytes

    def flash_seconds(self) -> float:
        """Erase in 64 KiB blocks, program every page, read back once (the timing model)."""
        t = self.flash
        blocks = -(-self.image_bytes // 65536)
        return (blocks * t.erase_time(65536) + t.program_time(0, self.image_bytes)
                + t.read_time(self.image_bytes))
