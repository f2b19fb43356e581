"""The flashrom backend against the real flashrom binary and its dummy programmer
emulating a 16 MiB Winbond W25Q128FV (the image file is the chip)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from fwrescue.errors import FlashromError
from fwrescue.flash import FlashromFlash

pytestmark = pytest.mark.slow

CHIP = 16 * 1024 * 1024
S4K = 4096


def _flashrom() -> str:
    path = shutil.which("flashrom") or "/usr/sbin/flashrom"
    if not Path(path).exists():
        pytest.fail("flashrom is not installed (Debian package flashrom)")
    return path


def _flash(chip_file: Path, workdir: Path, **kw: object) -> FlashromFlash:
    return FlashromFlash(
        f"dummy:emulate=W25Q128FV,image={chip_file}",
        flashrom=_flashrom(),
        chip="W25Q128.V",
        chip_size=CHIP,
        workdir=workdir,
        timeout=60,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    """A chip holding a corrupted image, and the good image to write (random bytes)."""
    d = tmp_path_factory.mktemp("flashrom")
    rng = random.Random(1)
    corrupted = rng.randbytes(CHIP)
    good = rng.randbytes(CHIP)
    (d / "chip.bin").write_bytes(corrupted)
    (d / "good.bin").write_bytes(good)
    return d / "chip.bin", d / "good.bin", good


def test_corrupted_chip_is_rewritten_with_the_image_and_verified(
    images: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    chip_file, good_file, good = images
    seen: list[int] = []
    report = _flash(chip_file, tmp_path).write(0, good_file, lambda d, t: seen.append(d))
    assert chip_file.read_bytes() == good
    assert seen == sorted(seen) and seen[0] == 0 and seen[-1] == CHIP and len(seen) > 10
    assert report.erased_blocks == {S4K: CHIP // S4K}  # random over random: every sector
    assert report.bytes_total == CHIP and report.skipped_bytes == 0


def test_rewriting_an_identical_image_performs_zero_erases(
    images: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    chip_file, good_file, good = images
    chip_file.write_bytes(good)
    report = _flash(chip_file, tmp_path).write(0, good_file)
    assert report.erase_count == 0 and report.bytes_programmed == 0
    assert report.skipped_bytes == CHIP


def test_one_block_change_erases_exactly_one_block(
    images: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    chip_file, _, good = images
    chip_file.write_bytes(good)
    changed = bytearray(good)
    changed[0x123456 : 0x123456 + 3] = bytes(~b & 0xFF for b in good[0x123456 : 0x123456 + 3])
    img = tmp_path / "changed.bin"
    img.write_bytes(changed)
    report = _flash(chip_file, tmp_path).write(0, img)
    assert report.erased_blocks == {S4K: 1}
    assert chip_file.read_bytes() == changed


def test_region_write_and_read_touch_only_the_region(
    images: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    chip_file, _, good = images
    chip_file.write_bytes(good)
    region = (0x100000, 0x100000)
    bios = random.Random(2).randbytes(region[1])
    img = tmp_path / "bios.bin"
    img.write_bytes(bios)
    flash = _flash(chip_file, tmp_path, region=region)
    report = flash.write(0, img)
    after = chip_file.read_bytes()
    assert after[0x100000:0x200000] == bios
    assert after[:0x100000] == good[:0x100000] and after[0x200000:] == good[0x200000:]
    assert report.erased_blocks == {S4K: 256}
    out = tmp_path / "readback.bin"
    flash.read_to(0x800, 0x1000, out)
    assert out.read_bytes() == bios[0x800:0x1800]


def test_diff_accounting_agrees_with_the_parsed_log(
    images: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    chip_file, _, good = images
    chip_file.write_bytes(good)
    changed = bytearray(good)
    changed[0x200000:0x200010] = bytes(16)  # 1 -> 0 only: written, no erase
    changed[0x300000] = (~good[0x300000]) & 0xFF  # needs an erase
    img = tmp_path / "changed.bin"
    img.write_bytes(changed)
    report = _flash(chip_file, tmp_path, erase_accounting="diff").write(0, img)
    assert report.erased_blocks == {S4K: 1}
    assert report.bytes_programmed == 2 * S4K
    assert chip_file.read_bytes() == changed


def test_bad_programmer_string_gives_flashrom_error_with_the_reason(
    images: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    chip_file, good_file, _ = images
    flash = FlashromFlash(
        f"dummy:emulate=NOSUCHCHIP,image={chip_file}",
        flashrom=_flashrom(),
        chip_size=CHIP,
        workdir=tmp_path,
        timeout=60,
    )
    before = chip_file.stat().st_mtime_ns
    with pytest.raises(FlashromError) as err:
        flash.write(0, good_file)
    assert err.value.fields["exit_code"] == 1
    assert "NOSUCHCHIP" in str(err.value.fields["stderr"])
    assert chip_file.stat().st_mtime_ns == before
    with pytest.raises(FlashromError, match="failed"):
        _ = FlashromFlash("nosuchprogrammer", flashrom=_flashrom(), workdir=tmp_path).size


def test_whole_chip_read_replaces_an_existing_file(
    images: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    chip_file, _, good = images
    chip_file.write_bytes(good)
    dest = tmp_path / "whole.bin"
    dest.write_bytes(b"stale")
    _flash(chip_file, tmp_path).read_to(0, CHIP, dest)
    assert dest.read_bytes() == good
