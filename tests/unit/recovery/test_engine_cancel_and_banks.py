"""Cancellation at safe points, power-off serialized with operations, and the dual-bank
fallback before the network — on the real erase-aware writer and bank layout over an
in-memory NOR chip."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from fwrescue.errors import FlashVerifyError
from fwrescue.flash.device import FlashChip, FlashGeometry
from fwrescue.flash.filechip import MemoryChip
from fwrescue.flash.layout import BankedFlash, FlashLayout, FlashRegion
from fwrescue.flash.writer import EraseAwareFlash
from fwrescue.host.base import FlashMode, PowerState
from fwrescue.image.store import PackageStore
from fwrescue.recovery.engine import EngineSettings, RecoveryEngine
from fwrescue.recovery.journal import Journal
from fwrescue.recovery.ports import FetchRequest, Located, OperationEvent, TranscriptLog
from fwrescue.trust.manifest import SignedManifest
from tests.fakes.firmware import Firmware, Signer
from tests.fakes.hardware import RecordingHost

REGION = 512 * 1024
WINDOW = 64 * 1024


class CallbackChip:
    """A chip that calls ``on_erase(offset)`` before each erase (from the flash thread)."""

    def __init__(self, chip: FlashChip) -> None:
        self._chip = chip
        self.on_erase: Any = None
        self.erases: list[int] = []

    @property
    def geometry(self) -> FlashGeometry:
        return self._chip.geometry

    def read(self, offset: int, length: int) -> bytes:
        return self._chip.read(offset, length)

    def erase(self, offset: int, length: int) -> None:
        if self.on_erase is not None:
            self.on_erase(offset)
        self.erases.append(offset)
        self._chip.erase(offset, length)

    def program(self, offset: int, data: bytes) -> None:
        self._chip.program(offset, data)


class ForbiddenNetwork:
    """Fails the test if the engine asks the network."""

    def __init__(self) -> None:
        self.calls = 0

    async def fetch(self, request: FetchRequest, log: TranscriptLog, progress: Any) -> Located:
        self.calls += 1
        raise AssertionError("the network was asked")


class HangingNetwork:
    """A donor search that never ends (until cancelled)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def fetch(self, request: FetchRequest, log: TranscriptLog, progress: Any) -> Located:
        self.started.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


class CallLog(RecordingHost):
    """RecordingHost that also records the order of power calls."""

    def __init__(self, firmware_ok: object) -> None:
        super().__init__(firmware_ok)
        self.state = PowerState.OFF
        self.calls: list[str] = []

    async def power_on(self) -> None:
        self.calls.append("power_on")
        await super().power_on()

    async def power_off(self) -> None:
        self.calls.append("power_off")
        await super().power_off()

    async def hold_reset(self) -> None:
        self.calls.append("hold_reset")
        await super().hold_reset()

    async def release_reset(self) -> None:
        self.calls.append("release_reset")
        await super().release_reset()


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer(tmp_path / "keys")


def engine_for(tmp_path: Path, signer: Signer, flash: Any, host: Any, *, network: Any = None,
               mode: FlashMode = FlashMode.DC_OFF,
               events: list[OperationEvent] | None = None) -> RecoveryEngine:
    return RecoveryEngine(
        EngineSettings(target="bios", machine_name="board-a", node_id="n1", flash_mode=mode,
                       boot_timeout=1.0, boot_attempts=1),
        flash=flash, host=host, verifier=signer.verifier(tmp_path), store=PackageStore(
            tmp_path / "store"), journal=Journal(tmp_path / "journal"),
        workdir=tmp_path / "work", network=network,
        events=events.append if events is not None else None)


def located(tmp_path: Path, signer: Signer, fw: Firmware) -> Located:
    verified = signer.verifier(tmp_path).verify_signed(fw.signed, target="bios",
                                                        machine_name="board-a")
    return Located(verified=verified, image=fw.write_image(tmp_path / f"{fw.manifest.version}"
                                                             ".bin"), origin="operator")


def windows_state(data: bytes, old: bytes, new: bytes) -> list[str]:
    """Per 64 KiB window: "new", "old" or "torn" (anything else)."""
    out = []
    for w in range(0, REGION, WINDOW):
        piece = data[w:w + WINDOW]
        out.append("new" if piece == new[w:w + WINDOW] else
                   "old" if piece == old[w:w + WINDOW] else "torn")
    return out


async def test_cancel_mid_flash_stops_at_the_next_block_boundary_and_the_journal_says_where(
        tmp_path: Path, signer: Signer) -> None:
    old, new = signer.firmware(size=REGION), signer.firmware(size=REGION, version="1.1.0")
    chip = CallbackChip(MemoryChip(FlashGeometry(REGION), fill=old.image))
    host = CallLog(lambda: False)
    events: list[OperationEvent] = []
    engine = engine_for(tmp_path, signer, EraseAwareFlash(chip), host, events=events)
    Journal(tmp_path / "journal").set_installed(old.signed.raw)
    loop = asyncio.get_running_loop()
    cancel_at = 3 * WINDOW

    def cancel_during_window(offset: int) -> None:  # on the flash thread, inside window 3
        if offset == cancel_at and engine.current is not None:
            op = engine.current.op_id
            accepted = asyncio.run_coroutine_threadsafe(_call(engine.cancel, op), loop).result(5)
            assert accepted

    chip.on_erase = cancel_during_window
    result = await engine.apply(located(tmp_path, signer, new))
    assert not result.ok and "cancelled" in result.reason
    data = chip.read(0, REGION)
    # window 3 (where the cancel arrived) completed; nothing after it was touched
    assert windows_state(data, old.image, new.image) == ["new"] * 4 + ["old"] * 4
    assert max(chip.erases) < 4 * WINDOW
    transcript = json.loads(next((tmp_path / "journal" / "transcripts").glob("*.json"))
                            .read_text())
    assert transcript["record"]["detail"]["cancelled_at_offset"] == str(4 * WINDOW)
    assert transcript["record"]["detail"]["cancelled_after_bytes"] == str(4 * WINDOW)
    assert not (tmp_path / "journal" / "journal.json").exists()
    assert events[-1].state.value == "Cancelled"
    # the host stayed held on the incomplete flash, and the flash does not verify
    assert host.state is PowerState.OFF and host.runs == []
    assert not engine.integrity_now().ok
    assert not engine.cancel(result.op_id)  # finished: nothing left to cancel


async def _call(fn: Any, *args: Any) -> Any:
    return fn(*args)


async def test_cancel_during_the_donor_search_ends_the_operation_with_flash_untouched(
        tmp_path: Path, signer: Signer) -> None:
    old = signer.firmware(size=REGION)
    chip = CallbackChip(MemoryChip(FlashGeometry(REGION), fill=b"\0" * REGION))
    network = HangingNetwork()
    events: list[OperationEvent] = []
    engine = engine_for(tmp_path, signer, EraseAwareFlash(chip), CallLog(lambda: False),
                        network=network, events=events)
    Journal(tmp_path / "journal").set_installed(old.signed.raw)
    run = asyncio.create_task(engine.recover("test"))
    await asyncio.wait_for(network.started.wait(), 5)
    assert engine.current is not None and engine.cancel(engine.current.op_id)
    result = await asyncio.wait_for(run, 5)
    assert not result.ok and "during the transfer" in result.reason
    assert chip.erases == [] and chip.read(0, REGION) == b"\0" * REGION
    assert events[-1].state.value == "Cancelled"


async def test_cancel_after_the_flash_verified_is_refused(tmp_path: Path,
                                                          signer: Signer) -> None:
    old, new = signer.firmware(size=REGION), signer.firmware(size=REGION, version="1.1.0")
    chip = MemoryChip(FlashGeometry(REGION), fill=old.image)
    verdicts: list[bool] = []

    class CancelOnBoot(CallLog):
        async def power_on(self) -> None:
            assert engine.current is not None
            verdicts.append(engine.cancel(engine.current.op_id))
            await super().power_on()

    def genuine() -> bool:
        return hashlib.sha256(chip.read(0, REGION)).hexdigest() == new.manifest.sha256

    engine = engine_for(tmp_path, signer, EraseAwareFlash(chip), CancelOnBoot(genuine))
    result = await engine.apply(located(tmp_path, signer, new))
    assert verdicts == [False] and result.ok and result.booted


async def test_power_off_waits_for_the_operation_instead_of_cutting_into_it(
        tmp_path: Path, signer: Signer) -> None:
    old, new = signer.firmware(size=REGION), signer.firmware(size=REGION, version="1.1.0")
    chip = CallbackChip(MemoryChip(FlashGeometry(REGION), fill=old.image))
    host = CallLog(lambda: hashlib.sha256(chip.read(0, REGION)).hexdigest()
                   == new.manifest.sha256)
    engine = engine_for(tmp_path, signer, EraseAwareFlash(chip), host, mode=FlashMode.DC_ON)
    Journal(tmp_path / "journal").set_installed(old.signed.raw)
    writing = asyncio.Event()
    loop = asyncio.get_running_loop()
    chip.on_erase = lambda _offset: loop.call_soon_threadsafe(writing.set)
    update = asyncio.create_task(engine.apply(located(tmp_path, signer, new)))
    await asyncio.wait_for(writing.wait(), 5)
    assert engine.busy
    await engine.guarded_power_off()  # a Redfish ForceOff arriving mid-write
    assert (await update).ok
    # the power-off ran after the operation's boot, never between hold and release
    assert host.calls == ["hold_reset", "release_reset", "power_off"]
    assert host.runs == [True] and host.state is PowerState.OFF


def two_banks(signer: Signer, tmp_path: Path) -> tuple[BankedFlash, Firmware, Firmware]:
    """A dual-bank chip whose active bank holds ``new``, the previous bank ``old``."""
    marker = 2 * REGION
    chip = MemoryChip(FlashGeometry(marker + 64 * 1024))
    banks = BankedFlash(chip, FlashLayout(
        bank_a=FlashRegion("bank-a", 0, REGION), bank_b=FlashRegion("bank-b", REGION, REGION),
        marker=FlashRegion("marker", marker, 8192)))
    old = signer.firmware(size=REGION, security_version=1)
    new = signer.firmware(size=REGION, version="2.0.0", security_version=2)
    banks.write(0, old.write_image(tmp_path / "old.bin"))
    banks.write(0, new.write_image(tmp_path / "new.bin"))
    return banks, old, new


async def test_a_new_bank_failing_the_watchdog_falls_back_to_the_previous_bank_not_the_network(
        tmp_path: Path, signer: Signer) -> None:
    banks, old, new = two_banks(signer, tmp_path)
    active_before = banks.active_bank
    verifier = signer.verifier(tmp_path)
    store = PackageStore(tmp_path / "store")
    for fw in (old, new):
        store.put(verifier.verify_signed(fw.signed, target="bios", machine_name="board-a"),
                  fw.write_image(tmp_path / "copy.bin"), move=False)
    verifier.commit_flashed(verifier.verify_signed(old.signed, target="bios",
                                                   machine_name="board-a"))
    journal = Journal(tmp_path / "journal")
    journal.set_installed(new.signed.raw)  # the new bank was written and verified …

    def runs_old_image() -> bool:  # … but only the old image boots on this host
        active = banks.bank(banks.active_bank).sha256().hex()
        return active == old.manifest.sha256

    network = ForbiddenNetwork()
    engine = engine_for(tmp_path, signer, banks, CallLog(runs_old_image), network=network)
    assert engine.integrity_now().ok
    assert await engine.guarded_power_on()
    assert network.calls == 0
    assert banks.active_bank == 1 - active_before
    installed = journal.installed_manifest()
    assert installed is not None
    assert SignedManifest.parse(installed).manifest.version == "1.0.0"
    assert engine.integrity_now().ok
    assert signer.verifier(tmp_path).floor("bios") == 1  # never lowered, never raised


async def test_no_fallback_when_the_previous_bank_no_longer_holds_its_image(
        tmp_path: Path, signer: Signer) -> None:
    banks, _old, _new = two_banks(signer, tmp_path)
    previous = 1 - banks.active_bank
    raw_chip = banks._chip  # damage one sector of the previous bank
    raw_chip.erase(previous * REGION, 4096)
    assert banks.previous_image_sha256() is None
    with pytest.raises(FlashVerifyError, match="previous bank"):
        banks.fall_back()
    assert banks.active_bank == 1 - previous
