from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from fwrescue.errors import ConfigError, FlashError, FlashPowerLoss, FlashVerifyError
from fwrescue.flash import (
    BankedFlash,
    BankState,
    FaultPlan,
    FaultyChip,
    FlashAddressError,
    FlashGeometry,
    FlashLayout,
    FlashRegion,
    MemoryChip,
)
from fwrescue.flash.layout import MARKER_RECORD_SIZE, decode_marker, encode_marker

#: 512 KiB with W25Q-like erase sizes: 8 windows of 64 KiB, fast enough for sweeps.
SMALL = FlashGeometry(size=512 * 1024)


def rand_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


K = 1024
BANK = 192 * K
LAYOUT = FlashLayout(
    bank_a=FlashRegion("bios_a", 0, BANK),
    bank_b=FlashRegion("bios_b", BANK, BANK),
    marker=FlashRegion("marker", 2 * BANK, 8 * K),
    golden=FlashRegion("golden", 448 * K, 64 * K),
)


def _img(tmp_path: Path, data: bytes, name: str) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_marker_round_trips_and_a_torn_or_blank_slot_decodes_to_none() -> None:
    st = BankState(active=1, seq=7, image_length=123, image_sha256=hashlib.sha256(b"x").digest())
    raw = encode_marker(st)
    assert len(raw) == MARKER_RECORD_SIZE and decode_marker(raw) == st
    torn = bytearray(raw)
    torn[20] ^= 0x01
    assert decode_marker(bytes(torn)) is None
    assert decode_marker(b"\xff" * MARKER_RECORD_SIZE) is None
    assert decode_marker(raw[:10]) is None


@pytest.mark.parametrize(
    "layout",
    [
        FlashLayout(
            FlashRegion("a", 0, 64 * K),
            FlashRegion("b", 32 * K, 64 * K),
            FlashRegion("m", 256 * K, 8 * K),
        ),
        FlashLayout(FlashRegion("a", 100, 64 * K)),
        FlashLayout(
            FlashRegion("a", 0, 64 * K),
            FlashRegion("b", 64 * K, 32 * K),
            FlashRegion("m", 256 * K, 8 * K),
        ),
        FlashLayout(FlashRegion("a", 0, 64 * K), FlashRegion("b", 64 * K, 64 * K)),
        FlashLayout(FlashRegion("a", 0, 1024 * K)),
    ],
    ids=["overlap", "misaligned", "bank-size", "no-marker", "beyond-chip"],
)
def test_bad_layouts_are_config_errors(layout: FlashLayout) -> None:
    with pytest.raises(ConfigError):
        layout.check(SMALL.size, SMALL.min_erase)


def test_banked_flash_needs_a_second_bank() -> None:
    with pytest.raises(ConfigError):
        BankedFlash(MemoryChip(SMALL), FlashLayout(FlashRegion("a", 0, 64 * K)))


def test_fresh_chip_runs_bank_a_and_first_write_switches_to_bank_b(tmp_path: Path) -> None:
    old_a = rand_bytes(BANK, 1)
    chip = MemoryChip(SMALL, fill=old_a + b"\xff" * (SMALL.size - BANK))
    banked = BankedFlash(chip, LAYOUT)
    assert banked.active_bank == 0 and banked.state.seq == 0
    img = rand_bytes(BANK - 5000, 2)  # shorter than a bank: padded with 0xFF
    banked.write(0, _img(tmp_path, img, "i.bin"))
    assert banked.active_bank == 1 and banked.state.image_length == len(img)
    snap = chip.snapshot()
    assert snap[BANK : 2 * BANK] == img + b"\xff" * 5000
    assert snap[:BANK] == old_a
    banked.check_active()
    out = tmp_path / "out.bin"
    banked.read_to(0, len(img), out)
    assert out.read_bytes() == img


def test_second_write_goes_back_to_bank_a(tmp_path: Path) -> None:
    banked = BankedFlash(MemoryChip(SMALL), LAYOUT)
    one, two = rand_bytes(BANK, 3), rand_bytes(BANK, 4)
    banked.write(0, _img(tmp_path, one, "1.bin"))
    banked.write(0, _img(tmp_path, two, "2.bin"))
    assert banked.active_bank == 0 and banked.state.seq == 2
    assert banked.bank(1).sha256() == hashlib.sha256(one).digest()  # previous image kept
    banked.check_active()


def test_corrupted_active_bank_fails_its_check(tmp_path: Path) -> None:
    chip = MemoryChip(SMALL)
    banked = BankedFlash(chip, LAYOUT)
    banked.write(0, _img(tmp_path, rand_bytes(BANK, 5), "i.bin"))
    chip.program(BANK + 10, b"\x00")
    with pytest.raises(FlashVerifyError):
        banked.check_active()


def test_fresh_active_bank_has_no_recorded_image() -> None:
    with pytest.raises(FlashVerifyError):
        BankedFlash(MemoryChip(SMALL), LAYOUT).check_active()


def test_image_larger_than_a_bank_or_nonzero_offset_changes_nothing(tmp_path: Path) -> None:
    chip = MemoryChip(SMALL)
    banked = BankedFlash(chip, LAYOUT)
    with pytest.raises(FlashAddressError):
        banked.write(0, _img(tmp_path, rand_bytes(BANK + 1, 6), "big.bin"))
    with pytest.raises(FlashAddressError):
        banked.write(4096, _img(tmp_path, b"x", "small.bin"))
    with pytest.raises(FlashError):
        banked.write(0, tmp_path / "missing.bin")
    assert chip.snapshot() == b"\xff" * SMALL.size and banked.state.seq == 0


def test_golden_region_is_readable_and_hashable(tmp_path: Path) -> None:
    gold = rand_bytes(64 * K, 7)
    fill = bytearray(b"\xff" * SMALL.size)
    fill[448 * K : 512 * K] = gold
    banked = BankedFlash(MemoryChip(SMALL, fill=bytes(fill)), LAYOUT)
    golden = banked.golden
    assert golden is not None and golden.size == 64 * K
    assert golden.sha256() == hashlib.sha256(gold).digest()
    out = tmp_path / "g.bin"
    golden.read_to(100, 1000, out)
    assert out.read_bytes() == gold[100:1100]
    with pytest.raises(FlashAddressError):
        golden.read_to(64 * K - 1, 2, out)


def _cut_points() -> list[int]:
    # every sector boundary of bank A (the inactive bank of the second write) and
    # of marker slot 0 (where seq 2 goes), plus a cut in the middle of the record
    bank_a = list(range(0, BANK, 4 * K))
    slot0 = LAYOUT.marker.offset if LAYOUT.marker else 0
    return [*bank_a, slot0, slot0 + MARKER_RECORD_SIZE // 2]


@pytest.mark.parametrize("cut", _cut_points())
def test_power_cut_anywhere_in_a_bank_update_keeps_the_old_bank_running(
    tmp_path: Path, cut: int
) -> None:
    inner = MemoryChip(SMALL)
    first, second = rand_bytes(BANK, 10), rand_bytes(BANK, 11)
    BankedFlash(inner, LAYOUT).write(0, _img(tmp_path, first, "1.bin"))
    chip = FaultyChip(inner, FaultPlan(power_loss_at_offset=cut, seed=cut))
    with pytest.raises(FlashPowerLoss):
        BankedFlash(chip, LAYOUT).write(0, _img(tmp_path, second, "2.bin"))
    chip.power_restore()
    after = BankedFlash(chip, LAYOUT)  # the BMC rebooted: read the marker afresh
    assert after.active_bank == 1
    assert inner.snapshot()[BANK : 2 * BANK] == first
    after.check_active()
    after.write(0, _img(tmp_path, second, "2.bin"))  # the retry completes the switch
    assert after.active_bank == 0 and inner.snapshot()[:BANK] == second
