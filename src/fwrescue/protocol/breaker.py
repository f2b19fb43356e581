"""The fleet circuit breaker, sans-IO: stop handing out an image its recipients cannot boot.

Every recipient sends a REPORT to the group after its boot check. Each donor (peer or
console) feeds the REPORTs it hears to a :class:`CircuitBreaker`, which counts the
**distinct recipients** that reported ``boot_failed`` for each manifest digest. When a
digest reaches ``threshold`` failures it is *withheld*: the donor offers it no more and
NAKs ACCEPTs for it. A repeated REPORT from the same recipient never counts twice, so one
looping node cannot trip the breaker alone; a later ``booted`` report does not reset
it (a breaker that closes itself on one success would hand a bad image to the rest).

Memory is bounded: at most ``max_digests`` digests are tracked (the oldest untripped one
is forgotten first) and at most ``threshold`` recipient ids per digest.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from fwrescue.errors import ConfigError

from .messages import Report, ReportOutcome

__all__ = ["BreakerTrip", "CircuitBreaker"]


@dataclass(frozen=True, kw_only=True)
class BreakerTrip:
    """A digest was withheld at ``at`` after ``failures`` distinct recipients failed to boot it."""

    manifest_digest: str
    target: str
    failures: int
    recipients: tuple[str, ...]
    at: float


class CircuitBreaker:
    """Counts boot failures per digest; see the module docstring. Raises ConfigError."""

    def __init__(self, *, threshold: int = 3, max_digests: int = 1024) -> None:
        bad = not isinstance(threshold, int) or isinstance(threshold, bool)
        if bad or not 1 <= threshold <= 10_000:
            raise ConfigError("breaker threshold must be an integer in [1, 10000]",
                              threshold=threshold)
        if not 1 <= max_digests <= 1_000_000:
            raise ConfigError("max_digests must be in [1, 1000000]")
        self.threshold = threshold
        self._max_digests = max_digests
        self._failures: OrderedDict[str, dict[str, None]] = OrderedDict()
        self._withheld: dict[str, BreakerTrip] = {}
        self.booted: dict[str, int] = {}

    def record(self, report: Report, now: float) -> BreakerTrip | None:
        """Count ``report``; return the trip if this report withheld its digest."""
        digest = report.manifest_digest
        if report.outcome is ReportOutcome.BOOTED:
            if len(self.booted) < self._max_digests or digest in self.booted:
                self.booted[digest] = self.booted.get(digest, 0) + 1
            return None
        if digest in self._withheld:
            return None
        seen = self._failures.get(digest)
        if seen is None:
            while len(self._failures) >= self._max_digests:
                self._failures.popitem(last=False)
            seen = self._failures[digest] = {}
        seen[report.recipient_id] = None
        if len(seen) < self.threshold:
            return None
        del self._failures[digest]
        trip = BreakerTrip(manifest_digest=digest, target=report.target,
                           failures=len(seen), recipients=tuple(seen), at=now)
        self._withheld[digest] = trip
        return trip

    def failures(self, digest: str) -> int:
        """Distinct recipients that reported ``boot_failed`` for ``digest`` so far."""
        trip = self._withheld.get(digest)
        return trip.failures if trip is not None else len(self._failures.get(digest, ()))

    def is_withheld(self, digest: str) -> bool:
        return digest in self._withheld

    @property
    def withheld(self) -> dict[str, BreakerTrip]:
        """Withheld digests and why, in the order they tripped."""
        return dict(self._withheld)
