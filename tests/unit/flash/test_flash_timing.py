from __future__ import annotations

import random
from pathlib import Path

import pytest

from fwrescue.errors import ConfigError, FlashError
from fwrescue.flash import (
    CHIP_TIMINGS,
    W25Q_JV,
    ChipTiming,
    EraseAwareFlash,
    FlashGeometry,
    MemoryChip,
    TimedChip,
    timing_for,
)

#: 512 KiB with W25Q-like erase sizes: 8 windows of 64 KiB, fast enough for sweeps.
SMALL = FlashGeometry(size=512 * 1024)


def rand_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_datasheet_typicals_match_the_reference_table() -> None:
    assert W25Q_JV.erase_time(4096) == pytest.approx(0.064)
    assert W25Q_JV.erase_time(65536) == pytest.approx(0.160)
    mx = CHIP_TIMINGS["MX25U25635F"]
    assert (mx.erase_time(4096), mx.erase_time(65536)) == pytest.approx((0.025, 0.224))
    assert CHIP_TIMINGS["GD25LB256E"].page_program_seconds == pytest.approx(0.00032)


def test_unlisted_erase_size_is_interpolated_between_neighbours() -> None:
    t32 = W25Q_JV.erase_time(32768)
    assert W25Q_JV.erase_time(4096) < t32 < W25Q_JV.erase_time(65536)
    assert t32 == pytest.approx(0.064 + 0.096 * (32768 - 4096) / (65536 - 4096))


def test_program_time_counts_every_page_touched() -> None:
    assert W25Q_JV.program_time(0, 256) == pytest.approx(0.0007)
    assert W25Q_JV.program_time(255, 2) == pytest.approx(0.0014)  # straddles two pages
    assert W25Q_JV.program_time(0, 0) == 0.0


def test_bad_timing_tables_are_refused() -> None:
    with pytest.raises(ValueError):
        ChipTiming("x", ((65536, 0.1), (4096, 0.01)), 0.001)
    with pytest.raises(ValueError):
        ChipTiming("x", ((4096, 0.01),), 0.0)


def test_timed_chip_accounts_and_sleeps_scaled_time() -> None:
    slept: list[float] = []
    chip = TimedChip(MemoryChip(SMALL), W25Q_JV, scale=0.001, sleep=slept.append)
    chip.erase(0, 65536)
    chip.program(0, b"\x00" * 512)
    assert chip.erase_seconds == pytest.approx(0.160)
    assert chip.program_seconds == pytest.approx(0.0014)
    assert slept == pytest.approx([0.000160, 0.0000014])
    chip.read(0, 25_000)
    assert chip.read_seconds == pytest.approx(0.001)
    assert chip.modelled_seconds == pytest.approx(0.160 + 0.0014 + 0.001)


def test_failed_operation_is_not_charged() -> None:
    chip = TimedChip(MemoryChip(SMALL))
    with pytest.raises(FlashError):
        chip.erase(1, 4096)
    assert chip.modelled_seconds == 0.0


def _full_rewrite_seconds(tmp_path: Path, erase_sizes: tuple[int, ...]) -> float:
    geo = FlashGeometry(size=SMALL.size, erase_sizes=erase_sizes)
    chip = TimedChip(MemoryChip(geo, fill=rand_bytes(geo.size, 1)))
    img = tmp_path / f"img{len(erase_sizes)}.bin"
    img.write_bytes(rand_bytes(geo.size, 2))
    EraseAwareFlash(chip).write(0, img)
    return chip.modelled_seconds


def test_largest_aligned_erase_beats_sector_only_erase_by_a_wide_margin(tmp_path: Path) -> None:
    small_only = _full_rewrite_seconds(tmp_path, (4096,))
    largest = _full_rewrite_seconds(tmp_path, (4096, 32768, 65536))
    assert small_only / largest > 2.5


def test_identical_rewrite_costs_under_five_percent_of_a_full_write(tmp_path: Path) -> None:
    old, new = rand_bytes(SMALL.size, 3), rand_bytes(SMALL.size, 4)
    img = tmp_path / "new.bin"
    img.write_bytes(new)
    chip = TimedChip(MemoryChip(SMALL, fill=old))
    flash = EraseAwareFlash(chip)
    flash.write(0, img)
    full = chip.modelled_seconds
    chip.reset()
    flash.write(0, img)
    assert chip.modelled_seconds / full <= 0.05


def test_part_names_map_to_timing_tables() -> None:
    assert timing_for("W25Q256JV") is W25Q_JV
    assert timing_for("mx25u25635f") is CHIP_TIMINGS["MX25U25635F"]
    with pytest.raises(ConfigError):
        timing_for("AT25SF128A")
