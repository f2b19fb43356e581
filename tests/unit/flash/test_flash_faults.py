from __future__ import annotations

import random
from pathlib import Path

import pytest

from fwrescue.errors import FlashError, FlashPowerLoss
from fwrescue.flash import EraseAwareFlash, FaultPlan, FaultyChip, FlashGeometry, MemoryChip

#: 512 KiB with W25Q-like erase sizes: 8 windows of 64 KiB, fast enough for sweeps.
SMALL = FlashGeometry(size=512 * 1024)


def rand_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


S4K, S64K = 4096, 65536


def test_power_cut_at_an_offset_tears_the_erase_block_there() -> None:
    old = bytes(SMALL.size)
    inner = MemoryChip(SMALL, fill=old)
    chip = FaultyChip(inner, FaultPlan(power_loss_at_offset=S64K + 1000, seed=7))
    chip.erase(0, S64K)  # does not touch the cut offset
    with pytest.raises(FlashPowerLoss):
        chip.erase(S64K, S64K)
    block = inner.snapshot()[S64K : 2 * S64K]
    assert block[:1000] == b"\xff" * 1000  # erased before the cut
    assert block[1000:] != b"\xff" * (S64K - 1000)  # torn after it
    assert chip.torn == (S64K, S64K) and chip.power_losses == 1


def test_power_cut_during_program_leaves_a_partly_programmed_range() -> None:
    inner = MemoryChip(SMALL)
    chip = FaultyChip(inner, FaultPlan(power_loss_at_offset=100, seed=1))
    data = bytes(256)
    with pytest.raises(FlashPowerLoss):
        chip.program(0, data)
    got = inner.read(0, 256)
    assert got[:100] == bytes(100)
    assert got[100:] != bytes(156)


def test_chip_stays_dead_until_power_is_restored() -> None:
    chip = FaultyChip(MemoryChip(SMALL), FaultPlan(power_loss_at_op=2))
    chip.erase(0, S4K)
    with pytest.raises(FlashPowerLoss):
        chip.erase(S4K, S4K)
    assert chip.dead
    for call in (lambda: chip.read(0, 1), lambda: chip.program(0, b"\x00")):
        with pytest.raises(FlashPowerLoss):
            call()
    chip.power_restore()
    chip.erase(S4K, S4K)  # the cut fires only once
    assert chip.read(S4K, 4) == b"\xff" * 4


def test_same_seed_tears_the_same_way() -> None:
    def torn(seed: int) -> bytes:
        inner = MemoryChip(SMALL, fill=bytes(SMALL.size))
        chip = FaultyChip(inner, FaultPlan(power_loss_at_op=1, seed=seed))
        with pytest.raises(FlashPowerLoss):
            chip.erase(0, S64K)
        return inner.read(0, S64K)

    assert torn(5) == torn(5)
    assert torn(5) != torn(6)


def test_failed_write_raises_and_changes_nothing() -> None:
    inner = MemoryChip(SMALL)
    chip = FaultyChip(inner, FaultPlan(fail_ops=frozenset({1})))
    with pytest.raises(FlashError, match="injected"):
        chip.program(0, b"\x00" * 16)
    assert inner.read(0, 16) == b"\xff" * 16 and chip.failed == 1


def test_dropped_write_reports_success_but_changes_nothing() -> None:
    inner = MemoryChip(SMALL)
    chip = FaultyChip(inner, FaultPlan(drop_ops=frozenset({1})))
    chip.program(0, b"\x00" * 16)
    assert inner.read(0, 16) == b"\xff" * 16 and chip.dropped == 1


def test_read_flips_change_the_returned_bytes_not_the_cells() -> None:
    inner = MemoryChip(SMALL)
    chip = FaultyChip(inner, FaultPlan(read_flip_probability=1.0, seed=3))
    got = chip.read(0, 64)
    assert got != b"\xff" * 64
    assert sum(bin(b ^ 0xFF).count("1") for b in got) == 1
    assert inner.read(0, 64) == b"\xff" * 64


@pytest.mark.parametrize(
    "kwargs",
    [
        {"power_loss_at_op": 0},
        {"fail_ops": frozenset({0})},
        {"read_flip_probability": 2.0},
        {"power_loss_at_offset": -1},
    ],
)
def test_nonsense_fault_plans_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FaultPlan(**kwargs)  # type: ignore[arg-type]


def test_writer_surfaces_power_loss_and_a_retry_after_restore_succeeds(tmp_path: Path) -> None:
    old, new = rand_bytes(SMALL.size, 1), rand_bytes(SMALL.size, 2)
    img = tmp_path / "img.bin"
    img.write_bytes(new)
    inner = MemoryChip(SMALL, fill=old)
    chip = FaultyChip(inner, FaultPlan(power_loss_at_offset=3 * S64K))
    flash = EraseAwareFlash(chip)
    with pytest.raises(FlashPowerLoss):
        flash.write(0, img)
    assert inner.snapshot()[: 3 * S64K] == new[: 3 * S64K]  # progress before the cut
    chip.power_restore()
    flash.write(0, img)
    assert inner.snapshot() == new
