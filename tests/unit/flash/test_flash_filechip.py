from __future__ import annotations

from pathlib import Path

import pytest

from fwrescue.errors import FlashError
from fwrescue.flash import FileChip, FlashAddressError, FlashGeometry, MemoryChip
from fwrescue.flash.filechip import nor_program

GEO = FlashGeometry(size=128 * 1024)


def test_erase_sets_one_aligned_block_to_ff_and_counts_it() -> None:
    chip = MemoryChip(GEO, fill=bytes(GEO.size))
    chip.erase(32768, 32768)
    snap = chip.snapshot()
    assert snap[32768:65536] == b"\xff" * 32768
    assert snap[:32768] == bytes(32768) and snap[65536:] == bytes(GEO.size - 65536)
    assert chip.counters.erases == {32768: 1}


def test_program_can_only_clear_bits_like_nor() -> None:
    chip = MemoryChip(GEO)
    chip.program(10, b"\x0f\xf0")
    chip.program(10, b"\xf3\x3f")  # no erase in between: cells become old & new
    assert chip.read(10, 2) == b"\x03\x30"
    assert chip.counters.bytes_programmed == 4 and chip.counters.program_ops == 2


def test_nor_program_is_bytewise_and() -> None:
    assert nor_program(b"\xaa\xff", b"\x0f\x00") == b"\x0a\x00"
    with pytest.raises(ValueError):
        nor_program(b"\x00", b"")


@pytest.mark.parametrize(
    ("offset", "length"), [(4096 + 1, 4096), (0, 8192), (GEO.size, 4096), (-4096, 4096)]
)
def test_misaligned_or_odd_erase_is_refused_and_changes_nothing(offset: int, length: int) -> None:
    chip = MemoryChip(GEO, fill=bytes(GEO.size))
    with pytest.raises(FlashAddressError):
        chip.erase(offset, length)
    assert chip.snapshot() == bytes(GEO.size)
    assert chip.counters.erase_count == 0


def test_reads_and_programs_past_the_end_are_refused() -> None:
    chip = MemoryChip(GEO)
    with pytest.raises(FlashAddressError):
        chip.read(GEO.size - 1, 2)
    with pytest.raises(FlashAddressError):
        chip.program(GEO.size - 1, b"\x00\x00")
    assert chip.snapshot() == b"\xff" * GEO.size


def test_memory_chip_rejects_fill_of_wrong_size() -> None:
    with pytest.raises(FlashError):
        MemoryChip(GEO, fill=b"\x00")


def test_file_chip_create_makes_an_erased_chip_that_persists(tmp_path: Path) -> None:
    path = tmp_path / "chip.bin"
    with FileChip(path, GEO, create=True) as chip:
        assert chip.read(0, 16) == b"\xff" * 16
        chip.program(100, b"hello")
    assert path.read_bytes()[100:105] == b"hello"
    with FileChip(path, GEO) as again:
        assert again.read(100, 5) == b"hello"


def test_file_chip_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "chip.bin"
    path.write_bytes(b"\xff" * 1000)
    with pytest.raises(FlashError, match="size"):
        FileChip(path, GEO)
    assert path.stat().st_size == 1000


def test_missing_file_without_create_is_a_flash_error(tmp_path: Path) -> None:
    with pytest.raises(FlashError):
        FileChip(tmp_path / "nope.bin", GEO)


def test_closed_file_chip_refuses_every_operation(tmp_path: Path) -> None:
    chip = FileChip(tmp_path / "c.bin", GEO, create=True)
    chip.close()
    chip.close()  # idempotent
    for call in (lambda: chip.read(0, 1), lambda: chip.erase(0, 4096), lambda: chip.flush()):
        with pytest.raises(FlashError, match="closed"):
            call()
