"""The golden flash region as a source, with a file-backed Flash stand-in."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fwrescue.errors import ConfigError, FlashError
from fwrescue.flash.device import Flash, Progress, WriteReport
from fwrescue.image.package import open_package
from fwrescue.sources import GoldenRegionSource, locate
from fwrescue.trust.verifier import Verifier

FLASH_SIZE = 512 * 1024
GOLDEN_OFFSET = 256 * 1024


class FileFlash:
    """The Flash protocol over a plain file; ``fail_reads`` injects a read failure."""

    def __init__(self, path: Path, size: int = FLASH_SIZE) -> None:
        self.path = path
        self.fail_reads = False
        if not path.exists():
            path.write_bytes(b"\xff" * size)

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def read_to(self, offset: int, length: int, dest: Path) -> None:
        if self.fail_reads:
            raise FlashError("injected read failure", offset=offset)
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise FlashError("short read")
        dest.write_bytes(data)

    def write(self, offset: int, image: Path, progress: Progress | None = None) -> WriteReport:
        data = image.read_bytes()
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(data)
        return WriteReport(len(data), len(data), {}, 0)


@pytest.fixture
def golden(tmp_path: Path, make_package: Callable[..., Path],
           image_bytes: bytes) -> tuple[FileFlash, Path]:
    """A flash whose golden region holds the image, and the manifest on BMC storage."""
    flash = FileFlash(tmp_path / "flash.bin")
    assert isinstance(flash, Flash)
    image = tmp_path / "golden.img"
    image.write_bytes(image_bytes)
    flash.write(GOLDEN_OFFSET, image)
    manifest = tmp_path / "bmc" / "golden-manifest.json"
    manifest.parent.mkdir()
    manifest.write_bytes(open_package(make_package(tmp_path / "g.fwpkg")).manifest_raw)
    return flash, manifest


async def test_golden_region_round_trip_stages_the_backup_image(
        golden: tuple[FileFlash, Path], verifier: Verifier, dirs: tuple[Path, Path],
        events: Any, image_bytes: bytes) -> None:
    flash, manifest = golden
    source = GoldenRegionSource(flash, GOLDEN_OFFSET, FLASH_SIZE - GOLDEN_OFFSET, manifest)
    found = await locate([source], verifier, "bios", "board-a", dirs[0], dirs[1], events)
    assert found is not None
    _, staged, origin = found
    assert staged.read_bytes() == image_bytes
    assert origin == f"golden:flash@{GOLDEN_OFFSET:#x}"
    assert os.listdir(dirs[0]) == []  # the temporary package was cleaned up


async def test_corrupt_golden_region_is_refused_and_cleaned_up(
        golden: tuple[FileFlash, Path], verifier: Verifier, dirs: tuple[Path, Path],
        events: Any) -> None:
    flash, manifest = golden
    with open(flash.path, "r+b") as f:
        f.seek(GOLDEN_OFFSET + 70_000)
        f.write(b"\x00\x00")
    source = GoldenRegionSource(flash, GOLDEN_OFFSET, FLASH_SIZE - GOLDEN_OFFSET, manifest)
    assert await locate([source], verifier, "bios", "board-a", dirs[0], dirs[1], events) \
        is None
    assert [f["error"] for f in events.named("candidate_rejected")] == ["ChunkMismatch"]
    assert os.listdir(dirs[0]) == [] and os.listdir(dirs[1]) == []


@pytest.mark.parametrize(("damage", "reason"), [
    ("missing-manifest", "golden manifest unreadable"),
    ("garbage-manifest", "golden manifest malformed"),
    ("flash-read-fails", "golden region unreadable"),
    ("region-too-small", "more than the region holds"),
])
async def test_unusable_golden_source_fails_with_a_reason(
        golden: tuple[FileFlash, Path], verifier: Verifier, dirs: tuple[Path, Path],
        events: Any, damage: str, reason: str) -> None:
    flash, manifest = golden
    size = FLASH_SIZE - GOLDEN_OFFSET
    if damage == "missing-manifest":
        manifest.unlink()
    elif damage == "garbage-manifest":
        manifest.write_bytes(b"{not json")
    elif damage == "flash-read-fails":
        flash.fail_reads = True
    else:
        size = 4096
    source = GoldenRegionSource(flash, GOLDEN_OFFSET, size, manifest)
    assert await locate([source], verifier, "bios", "board-a", dirs[0], dirs[1], events) \
        is None
    failed = events.named("source_failed")
    assert len(failed) == 1 and reason in str(failed[0]["reason"])
    assert os.listdir(dirs[0]) == []


def test_golden_region_outside_the_flash_is_a_config_error(
        golden: tuple[FileFlash, Path]) -> None:
    flash, manifest = golden
    with pytest.raises(ConfigError):
        GoldenRegionSource(flash, GOLDEN_OFFSET, FLASH_SIZE, manifest)
    with pytest.raises(ConfigError):
        GoldenRegionSource(flash, -1, 10, manifest)
