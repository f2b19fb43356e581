"""Power requests of one target, serialized with its operations (a mixin of
:class:`~fwrescue.recovery.engine.RecoveryEngine`).

* :meth:`PowerGuard.guarded_power_on` powers the host only onto verified flash, recovering
  first when it does not verify; its boot watchdog powers a host that never reports boot
  success off and — on a two-bank flash whose previous bank still holds a verified image
  of the store — falls back to that bank before anything is asked of the network;
* :meth:`PowerGuard.guarded_power_off` waits for a running operation instead of cutting
  into it (between its hold and its boot check).

Both hold the engine's operation lock for their whole duration.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from fwrescue.errors import FlashError
from fwrescue.flash.device import Flash, TwoBankFlash
from fwrescue.host.base import BootResult, Host
from fwrescue.recovery.journal import Journal, JournalRecord, Phase
from fwrescue.recovery.ports import EventSink, Located, OperationEvent, OperationState
from fwrescue.trust.verifier import VerifiedManifest, Verifier

if TYPE_CHECKING:
    from fwrescue.recovery.engine import EngineSettings, Integrity, OperationResult

__all__ = ["PowerGuard"]

log = logging.getLogger("fwrescue.recovery.engine")


class PowerGuard:
    """Power-on/off requests and the boot watchdog; the engine provides the state below."""

    settings: EngineSettings
    last_boot: BootResult | None
    _lock: asyncio.Lock
    _host: Host | None
    _flash: Flash
    _journal: Journal
    _events: EventSink | None

    async def check_integrity(self) -> Integrity:
        raise NotImplementedError

    def _stored_candidates(self) -> list[VerifiedManifest]:
        raise NotImplementedError

    async def _run_locked(self, kind: str, reason: str, *, resume: JournalRecord | None = None,
                          located: Located | None = None,
                          op_id: str | None = None) -> OperationResult:
        raise NotImplementedError

    def _note(self, event: str, **fields: Any) -> None:
        raise NotImplementedError

    async def guarded_power_on(self, *, op_id: str | None = None) -> bool:
        """Power the host on only onto verified flash; recover first when it does not verify.

        Boot watchdog: a host that does not report boot success within ``boot_timeout``
        on verified flash ``boot_attempts`` times in a row is powered off; a dual-bank flash
        then falls back to its previous bank (if that still verifies) and boots it; failing
        that, the target is recovered. ``op_id`` names the recovery this may run (a Redfish
        Task promised to the caller); when none is needed, that operation is reported
        completed at once."""
        if self._host is None:
            return False
        # Under the operation lock: no update or recovery may write the flash between the
        # integrity check and the power-on (a Redfish Reset racing an update, say), nor
        # between a failed check and the recovery it calls for.
        async with self._lock:
            integrity = await self.check_integrity()
            if integrity.ok:
                if await self._boot_with_watchdog():
                    self._report_without_operation(op_id, "flash verified; the host booted")
                    return True
                reason = (f"boot watchdog: no boot success within "
                          f"{self.settings.boot_timeout:g} s, {self.settings.boot_attempts} times")
                if await self._boot_previous_bank(reason):
                    self._report_without_operation(op_id, "fell back to the previous bank; "
                                                   "the host booted")
                    return True
            else:
                reason = f"integrity check before power-on: {integrity.reason}"
            result = await self._run_locked("recovery", reason, op_id=op_id)
        return bool(result.booted)

    async def guarded_power_off(self) -> None:
        """Power the host off, serialized with operations like :meth:`guarded_power_on`: a
        power-off never lands between an operation's hold and its boot check."""
        if self._host is None:
            return
        async with self._lock:
            await self._host.power_off()

    async def _boot_with_watchdog(self) -> bool:
        assert self._host is not None
        for _ in range(self.settings.boot_attempts):
            await self._host.power_on()
            self.last_boot = await self._host.wait_boot(self.settings.boot_timeout)
            if self.last_boot.booted:
                return True
            await self._host.power_off()
        return False

    def _previous_bank_image(self) -> VerifiedManifest | None:
        """The verified manifest of the image in the previous bank of a two-bank flash, if
        that bank still matches its record and the store holds a manifest for it that
        passes every check (floor included)."""
        if not isinstance(self._flash, TwoBankFlash):
            return None
        try:
            digest = self._flash.previous_image_sha256()
        except FlashError as e:
            log.warning("%s: previous bank unreadable: %s", self.settings.target, e)
            return None
        if digest is None:
            return None
        for verified in self._stored_candidates():
            if (verified.manifest.size == self._flash.size
                    and Verifier.image_matches(verified, digest)):
                return verified
        return None

    async def _boot_previous_bank(self, why: str) -> bool:
        """Fall back to the previous bank and boot it (host off on entry; left off if that
        fails too). True when the host booted."""
        previous = await asyncio.to_thread(self._previous_bank_image)
        if previous is None or not isinstance(self._flash, TwoBankFlash):
            return False
        assert self._host is not None
        await self._host.power_off()
        await asyncio.to_thread(self._flash.fall_back)
        self._journal.set_installed(previous.signed.raw)
        log.warning("%s: %s; fell back to the previous bank (%s)", self.settings.target, why,
                    previous.manifest.version)
        self._note("fell back to the previous bank", why=why, version=previous.manifest.version,
                   sha256=previous.manifest.sha256)
        return await self._boot_with_watchdog()

    def _report_without_operation(self, op_id: str | None, message: str) -> None:
        """A caller was promised operation ``op_id`` but none was needed: report it done."""
        if op_id is None or self._events is None:
            return
        self._events(OperationEvent(
            op_id=op_id, kind="recovery", target=self.settings.target,
            state=OperationState.COMPLETED, phase=Phase.RECOVERED.value, message=message))
