"""The flash seams: a raw NOR chip, and the region-level flash the recovery engine uses.

Two levels, because real backends sit at different depths:

* :class:`FlashChip` — erase / program / read on a NOR part (file-backed chip,
  fault-injecting wrappers, the timing model). NOR semantics: erase sets a whole
  erase block to ``0xFF``; program can only clear bits.
* :class:`Flash` — what the engine sees: read a region into a file, write a
  staged, verified image file into a region (erase-aware), report what was done.
  :class:`fwrescue.flash.writer.EraseAwareFlash` implements it over a FlashChip;
  :class:`fwrescue.flash.flashrom.FlashromFlash` implements it with the flashrom tool.

All calls are blocking; async callers run them with ``asyncio.to_thread``.
Every failure raises :class:`fwrescue.errors.FlashError` (or a subclass); no call
returns short data or swallows an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["Flash", "FlashChip", "FlashGeometry", "Progress", "StopCheck", "StoppableFlash",
           "TwoBankFlash", "WriteReport"]

#: progress(done_bytes, total_bytes)
Progress = Callable[[int, int], None]
#: stop() -> True when a write must stop at the next erase-block boundary
StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class FlashGeometry:
    """Size and erase granularity of a chip; ``erase_sizes`` ascending (4 K, 32 K, 64 K)."""

    size: int
    erase_sizes: tuple[int, ...] = (4096, 32768, 65536)
    page_size: int = 256

    def __post_init__(self) -> None:
        if self.size <= 0 or not self.erase_sizes:
            raise ValueError("flash geometry needs a size and at least one erase size")
        if list(self.erase_sizes) != sorted(self.erase_sizes):
            raise ValueError("erase_sizes must be ascending")
        if any(self.size % e for e in self.erase_sizes):
            raise ValueError("chip size must be a multiple of every erase size")

    @property
    def min_erase(self) -> int:
        return self.erase_sizes[0]


@dataclass(frozen=True)
class WriteReport:
    """What a write did. ``erased_blocks`` maps erase size -> count of blocks erased."""

    bytes_total: int
    bytes_programmed: int
    erased_blocks: dict[int, int]
    skipped_bytes: int

    @property
    def erase_count(self) -> int:
        return sum(self.erased_blocks.values())


@runtime_checkable
class FlashChip(Protocol):
    """A NOR flash part. Offsets/lengths of erase must align to one erase size."""

    @property
    def geometry(self) -> FlashGeometry: ...

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes, or raise FlashError."""
        ...

    def erase(self, offset: int, length: int) -> None:
        """Erase one aligned block of ``length`` (an entry of erase_sizes) to 0xFF."""
        ...

    def program(self, offset: int, data: bytes) -> None:
        """Program bytes (NOR: bits only go 1 -> 0). Raise FlashError on failure."""
        ...


@runtime_checkable
class Flash(Protocol):
    """Region-level flash access for the recovery engine."""

    @property
    def size(self) -> int: ...

    def read_to(self, offset: int, length: int, dest: Path) -> None:
        """Copy ``length`` bytes at ``offset`` into the file ``dest`` (created/truncated)."""
        ...

    def write(self, offset: int, image: Path, progress: Progress | None = None) -> WriteReport:
        """Write the file ``image`` at ``offset``, erasing/programming only what differs,
        then read back and compare. Raise FlashVerifyError on mismatch, FlashError otherwise."""
        ...


@runtime_checkable
class StoppableFlash(Flash, Protocol):
    """A :class:`Flash` whose write can stop between erase blocks (never inside one)."""

    def write_until(self, offset: int, image: Path, progress: Progress | None,
                    stop: StopCheck) -> WriteReport:
        """Like :meth:`Flash.write`; before each erase-block window asks ``stop()`` and, if
        it answers True, raises :class:`fwrescue.errors.FlashCancelled` (with the bytes
        written and the offset reached) — the region is then incomplete."""
        ...


@runtime_checkable
class TwoBankFlash(Flash, Protocol):
    """A :class:`Flash` that keeps the previously active image and can switch back to it
    (:class:`fwrescue.flash.layout.BankedFlash`)."""

    def previous_image_sha256(self) -> str | None:
        """Hex digest of the previous bank's image if that bank still holds it, else None."""
        ...

    def fall_back(self) -> None:
        """Make the previous bank active; FlashVerifyError (nothing changed) if it cannot."""
        ...
