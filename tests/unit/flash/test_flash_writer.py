from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwrescue.errors import ConfigError, FlashError, FlashVerifyError
from fwrescue.flash import (
    EraseAwareFlash,
    FaultPlan,
    FaultyChip,
    FlashAddressError,
    FlashGeometry,
    MemoryChip,
)

#: 512 KiB with W25Q-like erase sizes: 8 windows of 64 KiB, fast enough for sweeps.
SMALL = FlashGeometry(size=512 * 1024)


def rand_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


S4K, S32K, S64K = 4096, 32768, 65536


def _image(tmp_path: Path, data: bytes, name: str = "image.bin") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _chip_with(data: bytes) -> MemoryChip:
    return MemoryChip(SMALL, fill=data)


class RecordingChip(MemoryChip):
    """A MemoryChip that remembers the largest single read (memory bound check)."""

    max_read = 0

    def read(self, offset: int, length: int) -> bytes:
        self.max_read = max(self.max_read, length)
        return super().read(offset, length)


def test_blank_chip_is_programmed_without_a_single_erase(tmp_path: Path) -> None:
    img = rand_bytes(SMALL.size, 1)
    chip = MemoryChip(SMALL)
    report = EraseAwareFlash(chip).write(0, _image(tmp_path, img))
    assert chip.snapshot() == img
    assert report.erase_count == 0
    assert report.bytes_programmed == SMALL.size and report.skipped_bytes == 0


def test_full_rewrite_uses_only_the_largest_erase_blocks(tmp_path: Path) -> None:
    chip = _chip_with(rand_bytes(SMALL.size, 1))
    img = rand_bytes(SMALL.size, 2)
    report = EraseAwareFlash(chip).write(0, _image(tmp_path, img))
    assert chip.snapshot() == img
    assert report.erased_blocks == {S64K: SMALL.size // S64K}


def test_identical_image_performs_zero_erases_and_zero_programs(tmp_path: Path) -> None:
    img = rand_bytes(SMALL.size, 3)
    chip = _chip_with(img)
    report = EraseAwareFlash(chip).write(0, _image(tmp_path, img))
    assert report.erase_count == 0 and report.bytes_programmed == 0
    assert report.skipped_bytes == SMALL.size
    assert chip.counters.erase_count == 0 and chip.counters.program_ops == 0


def test_one_block_change_erases_one_block(tmp_path: Path) -> None:
    old = rand_bytes(SMALL.size, 4)
    new = bytearray(old)
    new[5 * S4K : 6 * S4K] = rand_bytes(S4K, 5)
    chip = _chip_with(old)
    report = EraseAwareFlash(chip).write(0, _image(tmp_path, bytes(new)))
    assert chip.snapshot() == new
    assert report.erased_blocks == {S4K: 1}
    assert chip.counters.erases == {S4K: 1}
    assert report.skipped_bytes == SMALL.size - S4K


def test_clearing_bits_programs_only_the_changed_page_without_erase(tmp_path: Path) -> None:
    old = rand_bytes(SMALL.size, 6)
    new = bytearray(old)
    new[70000] &= 0x00  # 1 -> 0 only: NOR can do this in place
    chip = _chip_with(old)
    report = EraseAwareFlash(chip).write(0, _image(tmp_path, bytes(new)))
    assert chip.snapshot() == new
    assert report.erase_count == 0
    assert report.bytes_programmed == SMALL.page_size


def test_many_changed_sectors_in_one_block_erase_the_whole_block_once(tmp_path: Path) -> None:
    old = rand_bytes(SMALL.size, 7)
    new = bytearray(old)
    for k in range(8):  # eight of sixteen sectors of the second 64 KiB block
        s = S64K + 2 * k * S4K
        new[s : s + 16] = rand_bytes(16, 100 + k)
    chip = _chip_with(old)
    report = EraseAwareFlash(chip).write(0, _image(tmp_path, bytes(new)))
    assert chip.snapshot() == new
    assert report.erased_blocks == {S64K: 1}


def test_two_changed_sectors_stay_two_small_erases(tmp_path: Path) -> None:
    old = rand_bytes(SMALL.size, 8)
    new = bytearray(old)
    new[0:10] = rand_bytes(10, 9)
    new[S4K * 9 : S4K * 9 + 10] = rand_bytes(10, 10)
    chip = _chip_with(old)
    report = EraseAwareFlash(chip).write(0, _image(tmp_path, bytes(new)))
    assert chip.snapshot() == new
    assert report.erased_blocks == {S4K: 2}


def test_blank_pages_are_not_programmed_after_an_erase(tmp_path: Path) -> None:
    old = bytes(SMALL.size)  # all zero: every sector needs an erase
    new = bytearray(b"\xff" * SMALL.size)
    new[0:100] = rand_bytes(100, 11)
    chip = _chip_with(old)
    report = EraseAwareFlash(chip).write(0, _image(tmp_path, bytes(new)))
    assert chip.snapshot() == new
    assert report.bytes_programmed == SMALL.page_size
    assert chip.counters.program_ops == 1


def test_unaligned_partial_write_keeps_the_neighbouring_bytes(tmp_path: Path) -> None:
    old = rand_bytes(SMALL.size, 12)
    patch = rand_bytes(10000, 13)
    chip = _chip_with(old)
    EraseAwareFlash(chip).write(12345, _image(tmp_path, patch))
    want = bytearray(old)
    want[12345 : 12345 + len(patch)] = patch
    assert chip.snapshot() == want


def test_region_write_never_touches_bytes_outside_the_region(tmp_path: Path) -> None:
    old = rand_bytes(SMALL.size, 14)
    chip = _chip_with(old)
    flash = EraseAwareFlash(chip, region_offset=S64K, region_size=2 * S64K)
    img = rand_bytes(2 * S64K, 15)
    flash.write(0, _image(tmp_path, img))
    snap = chip.snapshot()
    assert snap[S64K : 3 * S64K] == img
    assert snap[:S64K] == old[:S64K] and snap[3 * S64K :] == old[3 * S64K :]
    assert flash.size == 2 * S64K


def test_image_larger_than_region_is_refused_before_anything_changes(tmp_path: Path) -> None:
    old = rand_bytes(SMALL.size, 16)
    chip = _chip_with(old)
    flash = EraseAwareFlash(chip, region_offset=0, region_size=S64K)
    with pytest.raises(FlashAddressError):
        flash.write(0, _image(tmp_path, rand_bytes(S64K + 1, 17)))
    assert chip.snapshot() == old and chip.counters.erase_count == 0


def test_missing_image_file_is_a_flash_error(tmp_path: Path) -> None:
    with pytest.raises(FlashError, match="cannot open"):
        EraseAwareFlash(MemoryChip(SMALL)).write(0, tmp_path / "missing.bin")


@pytest.mark.parametrize(
    ("offset", "size"), [(100, None), (0, 5000), (SMALL.size, S4K), (0, SMALL.size + S4K)]
)
def test_misaligned_or_outside_regions_are_config_errors(offset: int, size: int | None) -> None:
    with pytest.raises(ConfigError):
        EraseAwareFlash(MemoryChip(SMALL), region_offset=offset, region_size=size)


def test_write_reads_the_chip_one_window_at_a_time(tmp_path: Path) -> None:
    chip = RecordingChip(SMALL, fill=rand_bytes(SMALL.size, 18))
    EraseAwareFlash(chip).write(0, _image(tmp_path, rand_bytes(SMALL.size, 19)))
    assert chip.max_read <= S64K


def test_silently_dropped_program_is_caught_by_read_back(tmp_path: Path) -> None:
    chip = FaultyChip(MemoryChip(SMALL), FaultPlan(drop_ops=frozenset({3})))
    with pytest.raises(FlashVerifyError):
        EraseAwareFlash(chip).write(0, _image(tmp_path, rand_bytes(SMALL.size, 20)))
    assert chip.dropped == 1


def test_bit_flip_on_read_back_fails_verification(tmp_path: Path) -> None:
    img = rand_bytes(SMALL.size, 21)
    # reads 1..8 are the planning windows; the flip hits the first verify read
    chip = FaultyChip(MemoryChip(SMALL, fill=img), FaultPlan(flip_reads=frozenset({9})))
    with pytest.raises(FlashVerifyError) as err:
        EraseAwareFlash(chip).write(0, _image(tmp_path, img))
    offset = err.value.fields["offset"]
    assert isinstance(offset, int) and offset < S64K


def test_progress_is_monotonic_and_ends_at_the_total(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    flash = EraseAwareFlash(MemoryChip(SMALL), progress_step=S64K)
    flash.write(0, _image(tmp_path, rand_bytes(SMALL.size, 22)), lambda d, t: seen.append((d, t)))
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[0] == 0 and seen[-1] == (SMALL.size, SMALL.size)
    assert len(seen) == 1 + SMALL.size // S64K


def test_read_to_copies_exactly_the_requested_span(tmp_path: Path) -> None:
    data = rand_bytes(SMALL.size, 23)
    flash = EraseAwareFlash(MemoryChip(SMALL, fill=data), region_offset=S64K)
    dest = tmp_path / "out.bin"
    flash.read_to(1000, 200000, dest)
    assert dest.read_bytes() == data[S64K + 1000 : S64K + 201000]


def test_failed_read_leaves_no_partial_file(tmp_path: Path) -> None:
    dead = FaultyChip(MemoryChip(SMALL), FaultPlan(power_loss_at_offset=0))
    with pytest.raises(FlashError):
        dead.erase(0, S4K)  # power is cut here; the chip stays dead
    dest = tmp_path / "out.bin"
    with pytest.raises(FlashError):
        EraseAwareFlash(dead).read_to(0, SMALL.size, dest)
    assert not dest.exists()


def test_read_outside_the_region_is_refused(tmp_path: Path) -> None:
    flash = EraseAwareFlash(MemoryChip(SMALL), region_size=S64K)
    with pytest.raises(FlashAddressError):
        flash.read_to(S64K - 10, 20, tmp_path / "x")


def test_geometry_with_single_erase_size_still_works(tmp_path: Path) -> None:
    geo = FlashGeometry(size=64 * 1024, erase_sizes=(4096,))
    chip = MemoryChip(geo, fill=rand_bytes(geo.size, 24))
    img = rand_bytes(geo.size, 25)
    report = EraseAwareFlash(chip).write(0, _image(tmp_path, img))
    assert chip.snapshot() == img and report.erased_blocks == {4096: 16}


_TINY = FlashGeometry(size=64 * 1024, erase_sizes=(4096, 16384, 65536), page_size=256)


@settings(max_examples=40, deadline=None)
@given(
    old_seed=st.integers(0, 2**16),
    edits=st.lists(
        st.tuples(st.integers(0, _TINY.size - 1), st.binary(min_size=1, max_size=600)),
        max_size=6,
    ),
    offset=st.integers(0, 2000),
)
def test_any_write_leaves_exactly_the_image_and_reports_consistently(
    tmp_path_factory: pytest.TempPathFactory,
    old_seed: int,
    edits: list[tuple[int, bytes]],
    offset: int,
) -> None:
    old = rand_bytes(_TINY.size, old_seed)
    new = bytearray(old)
    for pos, data in edits:
        chunk = data[: _TINY.size - pos]
        new[pos : pos + len(chunk)] = chunk
    img = bytes(new[offset:])
    chip = MemoryChip(_TINY, fill=old)
    path = tmp_path_factory.mktemp("img") / "i.bin"
    path.write_bytes(img)
    report = EraseAwareFlash(chip).write(offset, path)
    assert chip.snapshot() == old[:offset] + img
    assert report.bytes_total == len(img)
    assert 0 <= report.skipped_bytes <= len(img)
    assert report.erased_blocks == chip.counters.erases
    if img == old[offset:]:
        assert report.erase_count == 0 and report.bytes_programmed == 0
