"""The golden (backup) region of the host flash as a predetermined location.

The region holds a raw image; its signed manifest envelope is kept on BMC storage
at ``manifest_path`` (flash has no room for it, and a manifest is what makes the
bytes checkable). The source reads ``manifest.size`` bytes of the region into the
work directory and packs manifest + image into a temporary ``.fwpkg`` — the
candidate — so the golden copy passes exactly the checks any other package does.
The manifest is read here only to learn how many bytes to read; trust is decided
by the Verifier when the ladder stages the candidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from fwrescue.errors import ConfigError, FlashError, FwRescueError, SourceError
from fwrescue.flash.device import Flash
from fwrescue.image.package import write_package
from fwrescue.sources.base import Candidate
from fwrescue.trust.manifest import MAX_MANIFEST_BYTES, SignedManifest

__all__ = ["GoldenRegionSource"]


class GoldenRegionSource:
    """A raw image in ``[offset, offset + size)`` of ``flash`` plus its stored manifest."""

    def __init__(self, flash: Flash, offset: int, size: int, manifest_path: Path, *,
                 max_manifest_bytes: int = MAX_MANIFEST_BYTES) -> None:
        """Raise ConfigError when the region is empty, negative or beyond the flash."""
        if offset < 0 or size <= 0 or offset + size > flash.size:
            raise ConfigError("golden region outside the flash", offset=offset, size=size,
                              flash_size=flash.size)
        self._flash = flash
        self.offset = offset
        self.size = size
        self.manifest_path = manifest_path
        self._max_manifest_bytes = max_manifest_bytes

    @property
    def name(self) -> str:
        return "golden"

    def _read_manifest(self) -> bytes:
        try:
            with open(self.manifest_path, "rb") as f:
                raw = f.read(self._max_manifest_bytes + 1)
        except OSError as e:
            raise SourceError("golden manifest unreadable", path=str(self.manifest_path),
                              detail=str(e)) from e
        if len(raw) > self._max_manifest_bytes:
            raise SourceError("golden manifest larger than the limit",
                              limit=self._max_manifest_bytes)
        return raw

    def _build(self, workdir: Path) -> Path:
        raw = self._read_manifest()
        try:
            length = SignedManifest.parse(raw, max_bytes=self._max_manifest_bytes).manifest.size
        except FwRescueError as e:
            raise SourceError("golden manifest malformed", detail=str(e)) from e
        if length > self.size:
            raise SourceError("golden manifest describes more than the region holds",
                              image_size=length, region_size=self.size)
        fd, image_name = tempfile.mkstemp(dir=workdir, prefix=".golden-", suffix=".bin")
        os.close(fd)
        image = Path(image_name)
        fd, package_name = tempfile.mkstemp(dir=workdir, prefix=".golden-", suffix=".fwpkg")
        os.close(fd)
        package = Path(package_name)
        try:
            self._flash.read_to(self.offset, length, image)
            write_package(package, raw, image)
        except FlashError as e:
            package.unlink(missing_ok=True)
            raise SourceError("golden region unreadable", detail=str(e)) from e
        except BaseException:
            package.unlink(missing_ok=True)
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                image.unlink()
        return package

    async def candidates(self, target: str, machine_name: str,
                         workdir: Path) -> AsyncIterator[Candidate]:
        """Yield one temporary package built from the region. SourceError on failure."""
        package = await asyncio.to_thread(self._build, workdir)
        yield Candidate(path=package, origin=f"golden:flash@{self.offset:#x}", cleanup=True)
