"""A model host: it boots only if its flash held a genuine image when it started.

Power-on (from OFF) and release from reset "run the firmware": the host calls
``firmware_ok()`` — the agent passes a check that the flash holds a genuine
image for this board — and appends the answer to :attr:`VirtualHost.runs`. A
run on good firmware reports boot success ``boot_seconds`` later; a run on bad
firmware never does. The recovery engine guarantees the host never runs on
unverified flash; ``runs`` is the record that lets tests prove it.

Time is the event loop's clock (``loop.time()`` and ``asyncio.sleep``), so the
model runs unchanged under a virtual-time loop in the fleet simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from fwrescue.errors import HostError
from fwrescue.host.base import BootResult, PowerState

__all__ = ["VirtualHost"]


class VirtualHost:
    """In-memory host backend implementing :class:`fwrescue.host.base.Host`.

    Transitions (all idempotent, none raise):

    * ``power_on``: OFF → ON (runs firmware); RESET_HELD → ON (same as release); ON: no-op.
    * ``power_off``: any → OFF.
    * ``hold_reset``: OFF or ON → RESET_HELD (the CPU stops); RESET_HELD: no-op.
    * ``release_reset``: RESET_HELD → ON (runs firmware); ON or OFF: no-op.

    An exception from ``firmware_ok`` propagates and leaves the power state
    unchanged; ``on_run`` is called after the run started (its exception
    propagates, the run stands). Raises :class:`HostError` for a negative or NaN
    ``boot_seconds``.
    """

    def __init__(
        self,
        *,
        firmware_ok: Callable[[], bool],
        boot_seconds: float = 0.05,
        on_run: Callable[[], None] | None = None,
    ) -> None:
        if not boot_seconds >= 0:
            raise HostError("boot_seconds must be >= 0", boot_seconds=boot_seconds)
        self._firmware_ok = firmware_ok
        self._on_run = on_run
        self.boot_seconds = boot_seconds
        #: One entry per firmware run: True if the flash was genuine when it started.
        self.runs: list[bool] = []
        self._state = PowerState.OFF
        self._run_good = False
        self._run_started = 0.0
        # Bumped by every power transition, so a wait notices the run it watched ended.
        self._generation = 0
        self._transitions = asyncio.Event()
        self.closed = False

    @property
    def state(self) -> PowerState:
        """The current power state (synchronous view, for tests and the simulator)."""
        return self._state

    async def power_state(self) -> PowerState:
        return self._state

    async def power_on(self) -> None:
        """Power on and run the firmware; from RESET_HELD this is a release; ON: no-op."""
        if self._state is not PowerState.ON:
            await self._run()

    async def power_off(self) -> None:
        """Force power off; idempotent."""
        if self._state is not PowerState.OFF:
            self._set(PowerState.OFF)

    async def hold_reset(self) -> None:
        """Hold in reset (powering on held from OFF); idempotent."""
        if self._state is not PowerState.RESET_HELD:
            self._set(PowerState.RESET_HELD)

    async def release_reset(self) -> None:
        """Leave reset and run the firmware; no-op when ON or OFF."""
        if self._state is PowerState.RESET_HELD:
            await self._run()

    async def wait_boot(self, timeout: float) -> BootResult:
        """Wait up to ``timeout`` s for boot success of the current run; never raises.

        ``booted=True`` only if the run started on good firmware and ``boot_seconds``
        elapsed before the timeout; ``seconds`` counts from the start of the run.
        A power transition during the wait ends it with ``booted=False``.
        """
        loop = asyncio.get_running_loop()
        if self._state is not PowerState.ON:
            detail = "host is off" if self._state is PowerState.OFF else "host is held in reset"
            return BootResult(False, 0.0, detail)
        generation = self._generation
        start_wait = loop.time()
        boot_at = self._run_started + self.boot_seconds if self._run_good else float("inf")
        give_up_at = start_wait + max(0.0, timeout)
        # Bounded: ends at boot_at, give_up_at, or on the next power transition.
        while True:
            if generation != self._generation:
                return BootResult(
                    False, loop.time() - self._run_started, "power changed during boot"
                )
            now = loop.time()
            if now >= boot_at:
                return BootResult(True, now - self._run_started, "firmware booted")
            if now >= give_up_at:
                detail = "no boot success within the timeout"
                if not self._run_good:
                    detail = "firmware did not start (flash not genuine at power-on)"
                return BootResult(False, now - self._run_started, detail)
            self._transitions.clear()
            wake = min(boot_at, give_up_at) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._transitions.wait(), wake)

    async def close(self) -> None:
        """Power off and mark closed; idempotent."""
        await self.power_off()
        self.closed = True

    # --- internals -----------------------------------------------------------------

    async def _run(self) -> None:
        # The check reads and hashes the flash: a worker thread keeps the event loop free.
        good = bool(await asyncio.to_thread(self._firmware_ok))
        self.runs.append(good)
        self._run_good = good
        self._run_started = asyncio.get_running_loop().time()
        self._set(PowerState.ON)
        if self._on_run is not None:
            self._on_run()

    def _set(self, state: PowerState) -> None:
        self._state = state
        self._generation += 1
        self._transitions.set()
