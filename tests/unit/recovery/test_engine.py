"""The recovery engine: verify before write, hold the host, resume after power loss."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from fwrescue.errors import FlashPowerLoss, TrustError
from fwrescue.host.base import FlashMode, PowerState
from fwrescue.image.store import PackageStore
from fwrescue.recovery.engine import EngineSettings, RecoveryEngine
from fwrescue.recovery.journal import Journal, Phase
from fwrescue.recovery.ports import Located, OperationEvent, TranscriptLog
from fwrescue.trust.verifier import Verifier
from tests.fakes.firmware import Firmware, Signer
from tests.fakes.hardware import MemoryFlash, RecordingHost

REGION = 512 * 1024


class ListLocator:
    """A predetermined source that hands out staged copies of given firmware."""

    def __init__(self, verifier: Verifier, firmware: list[Firmware]) -> None:
        self.verifier = verifier
        self.firmware = firmware
        self.calls = 0

    async def locate(self, target: str, machine_name: str, workdir: Path,
                     log: TranscriptLog) -> Located | None:
        self.calls += 1
        for fw in self.firmware:
            try:
                verified = self.verifier.verify_signed(fw.signed, target=target,
                                                       machine_name=machine_name)
            except TrustError as e:
                log("candidate refused", reason=str(e))
                continue
            path = workdir / f"{fw.manifest.sha256}.bin"
            path.write_bytes(fw.image)
            Verifier.verify_image_file(verified, path)
            return Located(verified=verified, image=path, origin="usb:/test")
        return None


class Node:
    """One target's parts, rebuilt from the same state folder to model an agent restart."""

    def __init__(self, tmp: Path, signer: Signer, *, mode: FlashMode = FlashMode.DC_OFF) -> None:
        self.tmp, self.signer, self.mode = tmp, signer, mode
        self.flash = MemoryFlash(REGION)
        self.genuine: list[Firmware] = []  # what the model host's firmware runs from
        self.host = RecordingHost(self.flash_is_genuine)
        self.events: list[OperationEvent] = []
        self.firmware: list[Firmware] = []

    def flash_is_genuine(self) -> bool:
        return any(hashlib.sha256(bytes(self.flash.data[:n])).hexdigest() == d
                   for d, n in self.genuine_sizes)

    @property
    def genuine_sizes(self) -> list[tuple[str, int]]:
        return [(fw.manifest.sha256, fw.manifest.size) for fw in self.genuine + self.firmware]

    def engine(self) -> RecoveryEngine:
        verifier = self.signer.verifier(self.tmp)
        return RecoveryEngine(
            EngineSettings(target="bios", machine_name="board-a", node_id="n1",
                           flash_mode=self.mode, boot_timeout=1.0),
            flash=self.flash, host=self.host, verifier=verifier,
            store=PackageStore(self.tmp / "store"), journal=Journal(self.tmp / "journal"),
            workdir=self.tmp / "work", locator=ListLocator(verifier, self.firmware),
            events=self.events.append)


def store_copy(tmp_path: Path, signer: Signer, fw: Firmware) -> None:
    """Put a verified copy of ``fw`` into the node's package store (BMC storage)."""
    PackageStore(tmp_path / "store").put(
        signer.verifier(tmp_path).verify_signed(fw.signed, target="bios",
                                                machine_name="board-a"),
        fw.write_image(tmp_path / "fw.bin"), move=False)


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer(tmp_path / "keys")


async def test_corrupt_flash_at_start_is_recovered_and_the_host_boots(
        tmp_path: Path, signer: Signer) -> None:
    node = Node(tmp_path, signer)
    node.firmware.append(signer.firmware(size=REGION, version="1.1.0", security_version=2))
    result = await node.engine().startup()
    assert result is not None and result.ok and result.booted
    assert result.version_after == "1.1.0" and result.origin == "usb:/test"
    assert bytes(node.flash.data[:REGION]) == node.firmware[0].image
    assert node.host.runs == [True]
    assert signer.verifier(tmp_path).floor("bios") == 2
    assert Journal(tmp_path / "journal").load() is None
    assert node.events[-1].state.value == "Completed"


async def test_healthy_flash_at_start_runs_nothing(tmp_path: Path, signer: Signer) -> None:
    node = Node(tmp_path, signer)
    fw = signer.firmware(size=REGION)
    node.firmware.append(fw)
    node.flash.data[:REGION] = fw.image
    store_copy(tmp_path, signer, fw)
    engine = node.engine()
    assert await engine.startup() is None
    assert node.flash.writes == 0
    assert (await engine.check_integrity()).ok


async def test_power_loss_mid_flash_resumes_from_the_stored_image_after_restart(
        tmp_path: Path, signer: Signer) -> None:
    node = Node(tmp_path, signer)
    fw = signer.firmware(size=REGION)
    node.firmware.append(fw)
    node.genuine.append(fw)
    node.flash.power_cut_after = 123_456
    with pytest.raises(FlashPowerLoss):
        await node.engine().startup()
    record = Journal(tmp_path / "journal").load()
    assert record is not None and record.phase is Phase.FLASHING
    assert node.host.runs == []  # never released onto the torn flash
    node.firmware.clear()  # the source is gone: the resume must use the stored copy
    result = await node.engine().startup()
    assert result is not None and result.ok and result.booted
    assert bytes(node.flash.data[:REGION]) == fw.image
    assert node.host.runs == [True]


async def test_no_usable_source_reports_why_and_touches_neither_flash_nor_host(tmp_path: Path,
                                                              signer: Signer) -> None:
    node = Node(tmp_path, signer)
    other_board = signer.firmware(machines=("board-b",))
    node.firmware.append(other_board)
    result = await node.engine().startup()
    assert not result or not result.ok
    assert result is not None and "network is disabled" in result.reason
    assert node.host.state is PowerState.ON  # never touched: nothing was written
    assert node.host.runs == [] and node.flash.writes == 0


async def test_failed_write_is_retried_then_verified(tmp_path: Path, signer: Signer) -> None:
    node = Node(tmp_path, signer)
    node.firmware.append(signer.firmware(size=REGION))
    node.flash.fail_writes = 1
    result = await node.engine().recover("operator request")
    assert result.ok and node.flash.writes == 2


async def test_persistent_write_failure_keeps_the_host_held_and_the_stored_image(
        tmp_path: Path, signer: Signer) -> None:
    node = Node(tmp_path, signer)
    fw = signer.firmware(size=REGION)
    node.firmware.append(fw)
    node.flash.fail_writes = 10
    result = await node.engine().recover("operator request")
    assert not result.ok
    assert node.host.state is PowerState.OFF and node.host.runs == []
    assert PackageStore(tmp_path / "store").image_path(fw.manifest.sha256) is not None


async def test_dc_on_mode_holds_the_host_in_reset_while_flashing(tmp_path: Path,
                                                                 signer: Signer) -> None:
    node = Node(tmp_path, signer, mode=FlashMode.DC_ON)
    node.firmware.append(signer.firmware(size=REGION))
    states: list[PowerState] = []
    original = node.flash.write

    def spy(*args: Any, **kwargs: Any) -> Any:
        states.append(node.host.state)
        return original(*args, **kwargs)

    node.flash.write = spy  # type: ignore[method-assign]
    result = await node.engine().recover("operator request")
    assert result.ok and states == [PowerState.RESET_HELD]
    assert node.host.state is PowerState.ON


async def test_rolled_back_package_is_never_flashed(tmp_path: Path, signer: Signer) -> None:
    node = Node(tmp_path, signer)
    verifier = signer.verifier(tmp_path)
    newer = signer.firmware(security_version=5)
    verifier.commit_flashed(verifier.verify_signed(newer.signed, target="bios",
                                                   machine_name="board-a"))
    node.firmware.append(signer.firmware(size=REGION, security_version=3))
    result = await node.engine().recover("operator request")
    assert not result.ok and node.flash.writes == 0


class StubbornHost(RecordingHost):
    """Powers on but never reports boot success for its first ``failures`` boots."""

    def __init__(self, firmware_ok: object, failures: int) -> None:
        super().__init__(firmware_ok)
        self.failures = failures
        self.state = PowerState.OFF

    async def wait_boot(self, timeout: float) -> Any:
        if self.failures > 0:
            self.failures -= 1
            from fwrescue.host.base import BootResult

            return BootResult(booted=False, seconds=timeout)
        return await super().wait_boot(timeout)


async def test_boot_watchdog_recovers_a_host_that_never_boots_on_verified_flash(
        tmp_path: Path, signer: Signer) -> None:
    node = Node(tmp_path, signer)
    fw = signer.firmware(size=REGION)
    node.firmware.append(fw)
    node.flash.data[:REGION] = fw.image
    store_copy(tmp_path, signer, fw)
    node.host = StubbornHost(node.flash_is_genuine, failures=2)
    engine = node.engine()
    assert await engine.guarded_power_on()
    assert engine.last_result is not None and "boot watchdog" in engine.last_result.reason
    assert node.flash.writes == 1 and node.host.runs[-1] is True


async def test_power_on_request_during_an_update_waits_until_the_flash_verified(
        tmp_path: Path, signer: Signer) -> None:
    import time as _time

    node = Node(tmp_path, signer)
    old, new = signer.firmware(size=REGION), signer.firmware(size=REGION, version="1.1.0")
    node.genuine.append(old)
    node.flash.data[:REGION] = old.image  # a verified image the host could run right now
    Journal(tmp_path / "journal").set_installed(old.signed.raw)
    node.firmware.append(new)
    original = node.flash.write
    host_states_while_writing: list[PowerState] = []

    def slow_write(*args: Any, **kwargs: Any) -> Any:
        _time.sleep(0.2)  # the flash thread is busy; the event loop is free to race
        host_states_while_writing.append(node.host.state)
        return original(*args, **kwargs)

    node.flash.write = slow_write  # type: ignore[method-assign]
    engine = node.engine()
    update = asyncio.create_task(engine.recover("operator request"))
    await asyncio.sleep(0.05)  # the update holds the host and is writing
    assert await engine.guarded_power_on()
    assert (await update).ok
    assert host_states_while_writing == [PowerState.OFF]
    assert node.host.runs and all(node.host.runs)
    assert bytes(node.flash.data[:REGION]) == new.image


async def test_a_check_racing_an_update_never_queues_a_recovery_that_undoes_it(
        tmp_path: Path, signer: Signer) -> None:
    import time as _time

    node = Node(tmp_path, signer)
    old, new = signer.firmware(size=REGION), signer.firmware(size=REGION, version="2.0.0",
                                                             security_version=2)
    node.genuine += [old, new]
    node.flash.data[:REGION] = old.image
    Journal(tmp_path / "journal").set_installed(old.signed.raw)
    node.firmware.append(old)  # what a recovery would find: the OLD image
    original = node.flash.write

    def slow_torn_write(offset: int, image: Path, progress: Any = None) -> Any:
        node.flash.data[:1000] = b"\0" * 1000  # half written while the check looks
        _time.sleep(0.2)
        return original(offset, image, progress)

    node.flash.write = slow_torn_write  # type: ignore[method-assign]
    engine = node.engine()
    located = Located(verified=signer.verifier(tmp_path).verify_signed(
        new.signed, target="bios", machine_name="board-a"),
        image=new.write_image(tmp_path / "new.bin"), origin="operator")
    update = asyncio.create_task(engine.apply(located))
    await asyncio.sleep(0.05)
    assert await engine.recover_if_needed("periodic integrity check") is None
    assert (await update).ok
    assert bytes(node.flash.data[:REGION]) == new.image


async def test_an_update_deferred_past_a_floor_rise_is_refused_at_apply(
        tmp_path: Path, signer: Signer) -> None:
    node = Node(tmp_path, signer)
    verifier = signer.verifier(tmp_path)
    old = signer.firmware(size=REGION, security_version=1)
    located = Located(verified=verifier.verify_signed(old.signed, target="bios",
                                                      machine_name="board-a"),
                      image=old.write_image(tmp_path / "old.bin"), origin="operator")
    newer = signer.firmware(size=REGION, security_version=5)
    verifier.commit_flashed(verifier.verify_signed(newer.signed, target="bios",
                                                   machine_name="board-a"))
    result = await node.engine().apply(located)
    assert not result.ok and "anti-rollback" in result.reason
    assert node.flash.writes == 0


async def test_an_update_interrupted_before_staging_is_closed_not_replayed(
        tmp_path: Path, signer: Signer) -> None:
    from fwrescue.recovery.journal import JournalRecord

    node = Node(tmp_path, signer)
    fw = signer.firmware(size=REGION)
    node.genuine.append(fw)
    node.flash.data[:REGION] = fw.image
    journal = Journal(tmp_path / "journal")
    journal.set_installed(fw.signed.raw)
    journal.write(JournalRecord(op_id="upd-0badc0de", kind="update", phase=Phase.DETECTED,
                                reason="operator update", started_at=0.0))
    node.firmware.append(signer.firmware(size=REGION, version="9.0.0"))
    assert await node.engine().startup() is None  # healthy flash: nothing to do
    assert node.flash.writes == 0 and journal.load() is None


async def test_a_verified_copy_in_the_agents_own_store_is_used_first(
        tmp_path: Path, signer: Signer) -> None:
    node = Node(tmp_path, signer)
    fw = signer.firmware(size=REGION)
    node.genuine.append(fw)
    store_copy(tmp_path, signer, fw)
    engine = node.engine()
    result = await engine.recover("operator request")
    assert result.ok and result.origin == "bmc-store"
    assert bytes(node.flash.data[:REGION]) == fw.image
    assert PackageStore(tmp_path / "store").image_path(fw.manifest.sha256) is not None


async def test_a_malformed_journal_is_moved_aside_and_the_flash_decides(
        tmp_path: Path, signer: Signer) -> None:
    node = Node(tmp_path, signer)
    fw = signer.firmware(size=REGION)
    node.genuine.append(fw)
    node.firmware.append(fw)
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    (journal_dir / "journal.json").write_text('{"op_id": "../../x", "restarts": "9"}')
    result = await node.engine().startup()  # erased flash: a recovery, not a crash
    assert result is not None and result.ok
    assert (journal_dir / "journal.json.bad").exists()
