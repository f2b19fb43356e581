"""A link shaped like a BMC's: one byte budget shared by every transfer on that link.

:class:`Pacer` is a virtual-clock shaper (a token bucket of depth ``burst``): each caller
reserves its bytes on the link's timeline and sleeps until they would have left. A
donor's uploads share its egress pacer, so four uploads at 100 Mb/s get 25 Mb/s each;
a recipient's downloads from several donors share its ingress pacer. O(1) per call,
no task of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from fwrescue.errors import ConfigError

__all__ = ["Pacer"]


class Pacer:
    """Shapes a byte stream to ``rate_bps`` bytes per second, ``burst`` bytes of slack."""

    def __init__(self, rate_bps: int, *, burst: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``burst`` defaults to 20 ms of the link (at most 64 KiB)."""
        if not isinstance(rate_bps, int) or rate_bps < 1024:
            raise ConfigError("pacing rate must be at least 1024 bytes/s", rate=rate_bps)
        if burst is None:
            burst = min(64 * 1024, rate_bps // 50) if isinstance(rate_bps, int) else 0
        if not 0 <= burst <= 64 * 1024 * 1024:
            raise ConfigError("pacing burst must be in [0, 64 MiB]", burst=burst)
        self.rate_bps = rate_bps
        self._slack = burst / rate_bps
        self._clock = clock
        self._free_at = 0.0  # when the link has sent everything reserved so far
        self.bytes = 0

    def reserve(self, n: int) -> float:
        """Book ``n`` bytes on the link; return how long the caller must wait (seconds)."""
        now = self._clock()
        start = max(self._free_at, now - self._slack)
        self._free_at = start + n / self.rate_bps
        self.bytes += n
        return max(0.0, self._free_at - now)

    async def pace(self, n: int) -> None:
        """Reserve ``n`` bytes and sleep until they would have left the link."""
        wait = self.reserve(n)
        if wait > 0:
            await asyncio.sleep(wait)
