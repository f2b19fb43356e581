"""The recovery engine of one firmware target: detect, locate, stage, flash, verify, boot.

Safety contract (NIST SP 800-193's "verify before code runs"):

* Nothing reaches flash before :class:`~fwrescue.trust.verifier.Verifier` has
  verified the manifest (signature, board, rollback floor) and every byte of the
  staged image.
* The staged image is in the store and the journal says ``STAGED`` before the
  first erase; an agent restarted in ``STAGED``/``FLASHING``/``BOOTING`` re-verifies
  the stored image (manifest and floor, then every byte) and writes it again. One
  interrupted before ``STAGED`` wrote nothing: it is closed and the flash decides.
* The host is held (powered off, or in reset in DC-on mode) before the first
  erase and released only after an independent read-back of the flash matched
  the signed digest. A failed operation leaves the host held.
* The anti-rollback floor is raised only after the host booted the new image.

Operations on one target are serialized by a lock, power-on and power-off requests
included (:meth:`RecoveryEngine.guarded_power_on`, :meth:`RecoveryEngine.guarded_power_off`).

Cancellation (:meth:`RecoveryEngine.cancel`) takes effect at a safe point only: while
locating or transferring (nothing written), before the host is held, or — on a
:class:`~fwrescue.flash.device.StoppableFlash` — between two erase-block windows of the
flash write, never inside an erase; the journal then records the offset reached and the
host stays held on the incomplete flash (the next power-on recovers it). Once the
read-back verified, the operation runs to its end.

Dual bank (:class:`~fwrescue.flash.device.TwoBankFlash`): a new bank that fails the boot
watchdog is abandoned for the previous bank — when that bank still holds a verified
image of the store — before anything is asked of the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fwrescue.errors import (
    CompatibilityError,
    FlashCancelled,
    FlashError,
    FlashPowerLoss,
    FwRescueError,
    JournalError,
    OperationCancelled,
    RecoveryFailed,
    TrustError,
)
from fwrescue.flash.device import Flash, StoppableFlash
from fwrescue.host.base import BootResult, FlashMode, Host
from fwrescue.recovery.journal import Journal, JournalRecord, Phase
from fwrescue.recovery.ports import (
    EventSink,
    FetchRequest,
    ImageStore,
    Located,
    Locator,
    NetworkFetcher,
    OperationEvent,
    OperationState,
)
from fwrescue.recovery.power import PowerGuard
from fwrescue.trust.manifest import SignedManifest
from fwrescue.trust.verifier import VerifiedManifest, Verifier, sha256_file

__all__ = ["EngineSettings", "Integrity", "OperationResult", "RecoveryEngine"]

T = TypeVar("T")

#: what each phase tells an operator, in plain text (MessageIds and percentages are the
#: Redfish side's: fwrescue.agent_progress maps these events)
_PHASE_TEXT: dict[Phase, str] = {
    Phase.DETECTED: "",
    Phase.LOCATING: "searching the predetermined image locations",
    Phase.SOLICITING: "soliciting donors and transferring a verified image",
    Phase.STAGED: "image verified and staged",
    Phase.FLASHING: "host held; writing and reading back the flash",
    Phase.BOOTING: "flash verified; booting the host",
    Phase.RECOVERED: "firmware installed and the host booted",
    Phase.FAILED: "the operation failed",
}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    target: str
    machine_name: str
    node_id: str
    flash_mode: FlashMode = FlashMode.DC_OFF
    boot_timeout: float = 30.0
    flash_retries: int = 2  # extra attempts after a failed write or read-back
    boot_attempts: int = 2  # boot watchdog: failed boots on verified flash before recovering


@dataclass(frozen=True)
class Integrity:
    ok: bool
    reason: str
    installed: VerifiedManifest | None = None


@dataclass(frozen=True)
class OperationResult:
    op_id: str
    ok: bool
    reason: str
    origin: str | None = None
    donor_id: str | None = None
    donor_kind: str | None = None
    version_before: str | None = None
    version_after: str | None = None
    booted: bool | None = None
    seconds: float = 0.0


class RecoveryEngine(PowerGuard):
    """Recovers and updates one target. Constructed by the agent; all parts injected."""

    def __init__(
        self,
        settings: EngineSettings,
        *,
        flash: Flash,
        host: Host | None,
        verifier: Verifier,
        store: ImageStore,
        journal: Journal,
        workdir: Path,
        locator: Locator | None = None,
        network: NetworkFetcher | None = None,
        events: EventSink | None = None,
        clock: Callable[[], float] = time.time,
        on_boot_checked: Callable[[VerifiedManifest, bool], None] | None = None,
    ) -> None:
        self.settings = settings
        # Told after every boot check of a freshly written image (the agent sends REPORT).
        self._on_boot_checked = on_boot_checked
        self._flash = flash
        self._host = host
        self._verifier = verifier
        self._store = store
        self._journal = journal
        self._workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._locator = locator
        self._network = network
        self._events = events
        self._clock = clock
        self._lock = asyncio.Lock()
        self._transcript: list[dict[str, Any]] = []
        self.current: JournalRecord | None = None
        self.last_result: OperationResult | None = None
        self.last_boot: BootResult | None = None
        self._bytes: tuple[int, int] | None = None  # the current phase's byte progress
        self._cancel = threading.Event()  # read by the flash thread between windows
        self._cancel_async = asyncio.Event()
        self._cancellable = False

    # --- what is installed ---------------------------------------------------------------

    def installed(self) -> VerifiedManifest | None:
        """The verified manifest of the image recorded as installed, if it still verifies."""
        try:
            raw = self._journal.installed_manifest()
            if raw is None:
                return None
            signed = SignedManifest.parse(raw)
            # The floor may have risen past an old record: trust the signature and board only.
            return self._verifier.verify_signed_ignoring_floor(
                signed, target=self.settings.target, machine_name=self.settings.machine_name)
        except (TrustError, JournalError) as e:
            log.warning("%s: installed-image record unusable: %s", self.settings.target, e)
            return None

    @property
    def installed_version(self) -> str | None:
        installed = self.installed()
        return installed.manifest.version if installed else None

    async def check_integrity(self) -> Integrity:
        """Hash the flash region against the signed digest of the installed image (in a
        worker thread: hashing a flash region must not stall the event loop)."""
        return await asyncio.to_thread(self.integrity_now)

    def integrity_now(self) -> Integrity:
        """Blocking integrity check. With no installed record (a new agent), adopt a stored
        image for this board whose digest matches the flash; otherwise report the flash as
        unverified."""
        installed = self.installed()
        candidates = [installed] if installed else self._stored_candidates()
        for verified in candidates:
            size = verified.manifest.size
            if size != self._flash.size:  # an image must cover the whole region (see _fits)
                continue
            if Verifier.image_matches(verified, self._flash_digest(size)):
                if installed is None:
                    self._journal.set_installed(verified.signed.raw)
                return Integrity(True, "flash matches the signed image", verified)
        if installed is not None:
            return Integrity(False, "flash does not match the installed image's signed digest")
        return Integrity(False, "no verified image matches the flash contents")

    def _stored_candidates(self) -> list[VerifiedManifest]:
        """Stored images for this target and board that pass every manifest check (floor
        included), newest security version first."""
        found = []
        for stored in self._store.list():
            manifest = stored.signed.manifest
            if manifest.fits(self.settings.target, self.settings.machine_name):
                try:
                    found.append(self._verifier.verify_signed(
                        stored.signed, target=self.settings.target,
                        machine_name=self.settings.machine_name))
                except TrustError:
                    continue
        found.sort(key=lambda v: v.manifest.security_version, reverse=True)
        return found

    def _fits(self, verified: VerifiedManifest) -> None:
        """An image must fill the flash region exactly: then the integrity check covers every
        byte the host executes (a short image would leave the region's tail — on x86 the
        reset vector — unchecked and unwritten)."""
        if verified.manifest.size != self._flash.size:
            raise CompatibilityError("image size differs from the flash region",
                                     size=verified.manifest.size, region=self._flash.size)

    def _flash_digest(self, size: int) -> str:
        tmp = self._workdir / f"readback-{secrets.token_hex(4)}.bin"
        try:
            self._flash.read_to(0, size, tmp)
            return sha256_file(tmp)
        finally:
            tmp.unlink(missing_ok=True)

    # --- entry points ------------------------------------------------------------------

    async def startup(self) -> OperationResult | None:
        """At agent start: finish an interrupted operation, else check integrity and recover
        when the flash does not verify. Returns the operation run, if any."""
        record = self._journal.load()
        if record is not None and record.phase.past_staging and record.manifest_digest:
            log.info("%s: resuming %s interrupted in %s", self.settings.target, record.op_id,
                     record.phase.value)
            return await self._run(record.kind, record.reason, resume=record)
        if record is not None:
            # Nothing was written before STAGED: close the record (an operator update must be
            # resubmitted) and let the integrity check decide whether a recovery is needed.
            self._journal.finish(record.advance(
                Phase.FAILED, error="interrupted before its image was staged; flash untouched"),
                [])
        return await self.recover_if_needed("integrity check at start")

    async def recover(self, reason: str, *, op_id: str | None = None) -> OperationResult:
        """Find a verified image for this board (own store, sources, then donors), install it."""
        return await self._run("recovery", reason, op_id=op_id)

    async def recover_if_needed(self, why: str) -> OperationResult | None:
        """Check integrity and recover only if the flash does not verify, both under the
        operation lock — so a check racing an update never queues a recovery that would
        undo it. Returns the recovery run, or None when the flash verified."""
        async with self._lock:
            integrity = await self.check_integrity()
            if integrity.ok:
                return None
            return await self._run_locked("recovery", f"{why}: {integrity.reason}")

    async def verify_package(self, package: Path, *, stage: Callable[..., Any],
                             origin: str = "operator") -> Located:
        """Verify and stage an operator-supplied package (every trust step; TrustError if it
        is bad). ``stage(verifier, path, target=…, machine_name=…, staging_dir=…)`` is
        :func:`fwrescue.image.package.stage_package`."""
        verified, image = await asyncio.to_thread(
            stage, self._verifier, package, target=self.settings.target,
            machine_name=self.settings.machine_name, staging_dir=self._workdir)
        return Located(verified=verified, image=image, origin=origin)

    async def apply(self, located: Located, *, reason: str = "operator update",
                    op_id: str | None = None) -> OperationResult:
        """Install an already verified and staged image (from :meth:`verify_package`)."""
        return await self._run("update", reason, located=located, op_id=op_id)

    async def install_package(self, package: Path, *, stage: Callable[..., Any],
                              reason: str = "operator update") -> OperationResult:
        """:meth:`verify_package` then :meth:`apply`."""
        return await self.apply(await self.verify_package(package, stage=stage), reason=reason)

    @staticmethod
    def new_op_id(kind: str) -> str:
        return f"{kind[:3]}-{secrets.token_hex(4)}"

    @property
    def busy(self) -> bool:
        """True while an operation or a guarded power request holds the operation lock."""
        return self._lock.locked()

    def cancel(self, op_id: str) -> bool:
        """Ask the running operation ``op_id`` to stop at its next safe point (module doc).

        True when accepted (the operation then ends ``Cancelled``); False when ``op_id`` is
        not running here or is past its last safe point (the flash already verified)."""
        if self.current is None or self.current.op_id != op_id or not self._cancellable:
            return False
        self._cancel.set()
        self._cancel_async.set()
        return True

    def _check_cancel(self, where: str) -> None:
        if self._cancel.is_set():
            raise OperationCancelled(f"cancelled by an operator {where}; the flash was not "
                                     "written")

    async def _until_cancelled(self, work: Awaitable[T], where: str) -> T:
        """Await ``work`` unless the operation is cancelled first (then stop it and raise)."""
        job = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._cancel_async.wait())
        try:
            await asyncio.wait({job, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job
            self._check_cancel(where)
        return job.result()

    # --- the pipeline ------------------------------------------------------------------

    async def _run(self, kind: str, reason: str, *, resume: JournalRecord | None = None,
                   located: Located | None = None, op_id: str | None = None) -> OperationResult:
        async with self._lock:
            return await self._run_locked(kind, reason, resume=resume, located=located,
                                          op_id=op_id)

    async def _run_locked(self, kind: str, reason: str, *, resume: JournalRecord | None = None,
                          located: Located | None = None,
                          op_id: str | None = None) -> OperationResult:
        """The operation itself; the caller holds ``self._lock``."""
        started = self._clock()
        if resume is not None:
            record = resume.advance(resume.phase, restarts=resume.restarts + 1)
        else:
            record = JournalRecord(
                op_id=op_id or self.new_op_id(kind), kind=kind, phase=Phase.DETECTED,
                reason=reason, started_at=started, version_before=self.installed_version)
        self._transcript = []
        self._cancel.clear()
        self._cancel_async.clear()
        self._cancellable = True
        self._record(record)
        self._note("start", kind=kind, reason=reason, resumed=resume is not None)
        try:
            result = await self._pipeline(record, located, started)
        except FlashPowerLoss:
            raise  # the BMC lost power: nothing more runs; the journal resumes it
        except OperationCancelled as e:
            result = self._fail(self.current or record, e, started, cancelled=True)
        except FwRescueError as e:
            result = self._fail(self.current or record, e, started)
        except OSError as e:  # BMC storage or device I/O failing: fail closed, host held
            error = JournalError("I/O failed during the operation", detail=str(e))
            result = self._fail(self.current or record, error, started)
        self.last_result = result
        return result

    async def _pipeline(self, record: JournalRecord, located: Located | None,
                        started: float) -> OperationResult:
        if record.phase.past_staging and record.manifest_digest:
            verified, image = self._restage(record.manifest_digest)
        else:
            located = located or await self._locate(record)
            self._check_cancel("before the image was staged")
            # Re-verified now, under the lock: the floor may have risen since this image was
            # verified (an update queued behind another operation, or deferred to a reset).
            verified = self._verifier.verify_signed(
                located.verified.signed, target=self.settings.target,
                machine_name=self.settings.machine_name)
            self._fits(verified)
            self._note("staged", origin=located.origin, version=verified.manifest.version,
                       digest=verified.digest)
            stored = self._store.get(verified.digest)
            if stored is None or Path(stored.image_path) != located.image:
                stored = await asyncio.to_thread(self._store.put, verified, located.image)
            image = Path(stored.image_path)
            record = self._record(record.advance(
                Phase.STAGED, manifest_digest=verified.digest, origin=located.origin,
                donor_id=located.donor_id, donor_kind=located.donor_kind))
        self._check_cancel("before the host was held")
        await self._hold_host()
        record = self._record(record.advance(Phase.FLASHING))
        try:
            await self._write_verified(verified, image)
        except FlashCancelled as e:
            # where the write stopped, in the journal before the record is closed
            self.current = record = record.advance(record.phase, detail={
                **record.detail, "cancelled_at_offset": str(e.fields.get("offset")),
                "cancelled_after_bytes": str(e.fields.get("written"))})
            self._journal.write(record)
            raise OperationCancelled(
                "cancelled by an operator during the flash write; stopped between erase "
                f"blocks at offset {e.fields.get('offset')}, the flash is incomplete and the "
                "host stays held", **e.fields) from e
        self._cancellable = False  # the flash verified: from here the operation completes
        record = self._record(record.advance(Phase.BOOTING))
        self._journal.set_installed(verified.signed.raw)
        booted = await self._release_and_boot()
        if booted is not None and self._on_boot_checked is not None:
            try:
                self._on_boot_checked(verified, booted)
            except Exception:  # a report is advice to the fleet; it never fails a recovery
                log.exception("%s: boot report failed", self.settings.target)
        if booted is False and await self._boot_previous_bank(
                "the new image did not boot within the watchdog time"):
            raise RecoveryFailed("the new image did not boot; the host runs the previous "
                                 "bank's image again")
        if booted is False:
            raise RecoveryFailed("the verified image did not boot within the watchdog time")
        self._verifier.commit_flashed(verified)
        record = record.advance(Phase.RECOVERED)
        result = OperationResult(
            op_id=record.op_id, ok=True, reason=record.reason, origin=record.origin,
            donor_id=record.donor_id, donor_kind=record.donor_kind,
            version_before=record.version_before, version_after=verified.manifest.version,
            booted=booted, seconds=self._clock() - started)
        self._note("done", version=verified.manifest.version, booted=booted)
        self._record(record, state=OperationState.COMPLETED)
        self._journal.finish(record, self._transcript)
        return result

    async def _locate(self, record: JournalRecord) -> Located:
        s = self.settings
        self._record(record.advance(Phase.LOCATING))
        own = await asyncio.to_thread(self._own_copy)
        if own is not None:
            return own
        if self._locator is not None:
            found = await self._until_cancelled(self._locator.locate(
                s.target, s.machine_name, self._workdir, self._note), "while locating")
            if found is not None:
                return found
        if self._network is None:
            raise RecoveryFailed("no predetermined location holds a verified image and the "
                                 "network is disabled for this target")
        self._record(record.advance(Phase.SOLICITING))
        installed = self.installed()
        floor = self._verifier.floor(s.target)
        request = FetchRequest(
            target=s.target, machine_name=s.machine_name,
            installed_version=installed.manifest.version if installed else None,
            security_version=installed.manifest.security_version if installed else floor,
            min_security_version=floor)

        def progress(done: int, total: int) -> None:
            self._emit(OperationState.RUNNING, "transferring", f"{done}/{total} bytes",
                       done_bytes=(done, total))

        return await self._until_cancelled(self._network.fetch(request, self._note, progress),
                                           "during the transfer")

    def _own_copy(self) -> Located | None:
        """The newest verified image for this board already in the agent's own store (a
        staged image kept from an earlier failed attempt, or the agent's donation copy)."""
        for verified in self._stored_candidates():
            stored = self._store.get(verified.digest)
            if stored is None or verified.manifest.size != self._flash.size:
                continue
            try:
                Verifier.verify_image_file(verified, Path(stored.image_path))
            except (TrustError, OSError) as e:
                self._note("own copy refused", digest=verified.digest, reason=str(e))
                continue
            return Located(verified=verified, image=Path(stored.image_path), origin="bmc-store")
        return None

    def _restage(self, digest: str) -> tuple[VerifiedManifest, Path]:
        """After a restart: the stored image must verify again before it is written."""
        stored = self._store.get(digest)
        if stored is None:
            raise RecoveryFailed("staged image missing from the store after restart",
                                 digest=digest)
        # The floor is raised only after this image booted, so it still passes; the image
        # bytes are re-hashed by _write_verified just before the first erase.
        verified = self._verifier.verify_signed(
            stored.signed, target=self.settings.target, machine_name=self.settings.machine_name)
        self._note("restaged", digest=digest)
        return verified, Path(stored.image_path)

    async def _write_verified(self, verified: VerifiedManifest, image: Path) -> None:
        """Write with retries; every attempt ends in an independent read-back check."""
        # the bytes about to be written (hashing off the event loop)
        await asyncio.to_thread(Verifier.verify_image_file, verified, image)
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:  # called on the flash thread
            loop.call_soon_threadsafe(self._flash_progress, done, total)

        attempts = 1 + self.settings.flash_retries
        for attempt in range(1, attempts + 1):
            try:
                if isinstance(self._flash, StoppableFlash):
                    report = await asyncio.to_thread(
                        self._flash.write_until, 0, image, progress, self._cancel.is_set)
                else:  # one external process (flashrom): cancellable only before it starts
                    self._check_cancel("before the flash write")
                    report = await asyncio.to_thread(self._flash.write, 0, image, progress)
                self._note("flashed", attempt=attempt, erased=report.erase_count,
                           programmed=report.bytes_programmed, skipped=report.skipped_bytes)
                digest = await asyncio.to_thread(self._flash_digest, verified.manifest.size)
                if not Verifier.image_matches(verified, digest):
                    raise FlashError("read-back does not match the signed digest")
                self._note("read-back verified", sha256=digest)
                return
            except FlashPowerLoss:
                raise
            except FlashError as e:
                self._note("flash attempt failed", attempt=attempt, error=str(e))
                if attempt == attempts:
                    raise

    def _flash_progress(self, done: int, total: int) -> None:
        self._emit(OperationState.RUNNING, "flashing", f"{done}/{total} bytes",
                   done_bytes=(done, total))

    async def _hold_host(self) -> None:
        if self._host is None:
            return
        if self.settings.flash_mode is FlashMode.DC_ON:
            await self._host.hold_reset()
        else:
            await self._host.power_off()
        self._note("host held", mode=self.settings.flash_mode.value)

    async def _release_and_boot(self) -> bool | None:
        if self._host is None:
            return None
        if self.settings.flash_mode is FlashMode.DC_ON:
            await self._host.release_reset()
        else:
            await self._host.power_on()
        boot = self.last_boot = await self._host.wait_boot(self.settings.boot_timeout)
        self._note("boot check", booted=boot.booted, seconds=round(boot.seconds, 2),
                   detail=boot.detail, log=str(boot.log_path) if boot.log_path else None)
        if not boot.booted:
            await self._host.power_off()  # do not leave a failing host cycling
        return boot.booted

    def _fail(self, record: JournalRecord, error: FwRescueError,
              started: float, *, cancelled: bool = False) -> OperationResult:
        self._cancellable = False
        self._note("cancelled" if cancelled else "failed", error=str(error),
                   kind=type(error).__name__)
        log.error("%s: %s %s %s: %s", self.settings.target, record.kind, record.op_id,
                  "cancelled" if cancelled else "failed", error)
        final = record.advance(Phase.FAILED, error=str(error))
        self._record(final, state=OperationState.CANCELLED if cancelled
                     else OperationState.EXCEPTION, error=error)
        try:
            self._journal.finish(final, self._transcript)
        except OSError as e:  # storage failing too: the journal stays; a restart retries
            log.error("%s: cannot close the journal of %s: %s", self.settings.target,
                      record.op_id, e)
        # Staged images in the store are kept (never lost); the host stays held.
        return OperationResult(op_id=record.op_id, ok=False, reason=str(error),
                               origin=record.origin, donor_id=record.donor_id,
                               donor_kind=record.donor_kind,
                               version_before=record.version_before,
                               seconds=self._clock() - started)

    # --- bookkeeping ---------------------------------------------------------------------

    def _record(self, record: JournalRecord, *, state: OperationState = OperationState.RUNNING,
                error: FwRescueError | None = None) -> JournalRecord:
        """Journal ``record`` (while running) and emit the event entering its phase."""
        if state is OperationState.RUNNING:
            self._journal.write(record)
        self.current = record if state is OperationState.RUNNING else None
        self._bytes = None
        text = _PHASE_TEXT[record.phase]
        if record.phase is Phase.DETECTED:
            text = record.reason
        elif record.phase is Phase.STAGED:
            text = f"{text} from {record.origin}"
        elif record.phase is Phase.FAILED:
            text = record.error or text
        self._emit(state, record.phase.value, text, entered=True, error=error, op=record)
        return record

    def _emit(self, state: OperationState, phase: str, message: str, *,
              entered: bool = False, done_bytes: tuple[int, int] | None = None,
              error: FwRescueError | None = None, op: JournalRecord | None = None,
              entry: dict[str, Any] | None = None) -> None:
        """Emit one fact; ``done_bytes`` (done, total) becomes the phase's latest progress."""
        op = op or self.current
        if done_bytes is not None:
            self._bytes = done_bytes
        if self._events is None or op is None:
            return
        done, total = self._bytes if self._bytes is not None else (None, None)
        self._events(OperationEvent(
            op_id=op.op_id, kind=op.kind, target=self.settings.target, state=state,
            phase=phase, message=message, entered=entered, done_bytes=done, total_bytes=total,
            error=error, fields={"origin": op.origin, "donor_id": op.donor_id},
            transcript_entry=entry))

    def _note(self, event: str, **fields: Any) -> None:
        entry = {"t": round(self._clock(), 3), "event": event, **fields}
        self._transcript.append(entry)
        log.debug("%s %s: %s %s", self.settings.node_id, self.settings.target, event, fields)
        if self.current is not None:
            self._emit(OperationState.RUNNING, self.current.phase.value, event, entry=entry)

    def transcript(self) -> list[dict[str, Any]]:
        return list(self._transcript)
