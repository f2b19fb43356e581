"""A discrete-event loop in virtual time: a heap of timers, no asyncio, no clock.

``call_at(t, fn)`` schedules ``fn()`` at virtual time ``t``; the returned :class:`Timer`
can be cancelled (lazily: it stays in the heap and is skipped). Timers at the same time
run in the order they were scheduled, so a seeded run is reproducible.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

__all__ = ["EventLoop", "Timer"]


class Timer:
    """A scheduled callback; ``cancel()`` makes the loop skip it."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """Runs callbacks in virtual-time order. ``now`` only moves forward."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.events_run = 0
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Schedule ``callback`` at ``when`` (a time in the past runs at ``now``)."""
        timer = Timer(max(when, self.now), callback)
        self._seq += 1
        heapq.heappush(self._heap, (timer.when, self._seq, timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self.now + delay, callback)

    def run(self, *, until: float, stop: Callable[[], bool] | None = None,
            max_events: int = 200_000_000) -> None:
        """Run timers up to virtual time ``until``, or until ``stop()`` is true (checked
        after each callback), or ``max_events`` callbacks (a bound on a runaway model)."""
        heap = self._heap
        while heap and self.events_run < max_events:
            when, _, timer = heap[0]
            if when > until:
                break
            heapq.heappop(heap)
            if timer.cancelled:
                continue
            self.now = when
            self.events_run += 1
            timer.callback()
            if stop is not None and stop():
                return
        self.now = max(self.now, min(until, heap[0][0] if heap else until))
