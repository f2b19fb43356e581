"""NOR flash chips backed by memory or by a raw image file.

Both implement :class:`fwrescue.flash.device.FlashChip` with NOR semantics:

* ``erase`` sets one aligned block (a size from ``geometry.erase_sizes``) to ``0xFF``;
* ``program`` ANDs the data into the cells (bits only go 1 → 0), like a real part:
  programming over unerased data does not raise, it yields ``old & new``;
* ``read`` returns exactly the bytes asked for.

:class:`FileChip` maps the file with ``mmap`` so a 16 MiB write/verify cycle is a
few memory copies, and the file is the persistent chip (the same file flashrom's
dummy programmer or QEMU's pflash can use). :class:`ChipCounters` records erases
per size and bytes programmed for tests and benchmarks.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from fwrescue.atomicfile import atomic_replace
from fwrescue.errors import FlashError
from fwrescue.flash._bounds import check_erase, check_span
from fwrescue.flash.device import FlashGeometry

__all__ = ["ChipCounters", "FileChip", "MemoryChip", "nor_program"]

_FF = 0xFF


@dataclass
class ChipCounters:
    """Operation counters of one chip (mutable; reset with :meth:`reset`)."""

    erases: dict[int, int] = field(default_factory=dict)
    bytes_programmed: int = 0
    program_ops: int = 0
    bytes_read: int = 0

    @property
    def erase_count(self) -> int:
        return sum(self.erases.values())

    def reset(self) -> None:
        self.erases.clear()
        self.bytes_programmed = 0
        self.program_ops = 0
        self.bytes_read = 0


def nor_program(old: bytes | bytearray | memoryview, new: bytes | bytearray | memoryview) -> bytes:
    """The cell contents after programming ``new`` over ``old``: ``old & new`` bytewise."""
    if len(old) != len(new):
        raise ValueError("nor_program needs equal lengths")
    if old == b"\xff" * len(old):  # the common case: programming an erased area
        return bytes(new)
    n = len(old)
    return (int.from_bytes(old, "big") & int.from_bytes(new, "big")).to_bytes(n, "big")


class _NorArray:
    """NOR semantics over a mutable byte buffer (bytearray or mmap)."""

    def __init__(self, buf: bytearray | mmap.mmap, geometry: FlashGeometry) -> None:
        if len(buf) != geometry.size:
            raise FlashError("chip buffer does not match geometry", size=len(buf))
        self._buf = buf
        self._geometry = geometry
        self.counters = ChipCounters()

    @property
    def geometry(self) -> FlashGeometry:
        return self._geometry

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset``; FlashAddressError if out of range."""
        self._check_open()
        check_span(offset, length, self._geometry.size, "read")
        self.counters.bytes_read += length
        return bytes(self._buf[offset : offset + length])

    def erase(self, offset: int, length: int) -> None:
        """Set one aligned block of a supported erase size to 0xFF."""
        self._check_open()
        check_erase(offset, length, self._geometry.size, self._geometry.erase_sizes)
        self._buf[offset : offset + length] = b"\xff" * length
        self.counters.erases[length] = self.counters.erases.get(length, 0) + 1

    def program(self, offset: int, data: bytes) -> None:
        """AND ``data`` into the cells at ``offset`` (bits only go 1 -> 0)."""
        self._check_open()
        check_span(offset, len(data), self._geometry.size, "program")
        end = offset + len(data)
        self._buf[offset:end] = nor_program(self._buf[offset:end], data)
        self.counters.bytes_programmed += len(data)
        self.counters.program_ops += 1

    def _check_open(self) -> None:
        pass


class MemoryChip(_NorArray):
    """An in-memory NOR chip for unit tests; starts erased (all 0xFF) unless ``fill`` is given."""

    def __init__(self, geometry: FlashGeometry, fill: bytes | None = None) -> None:
        if fill is not None and len(fill) != geometry.size:
            raise FlashError("fill does not match chip size", size=len(fill))
        buf = bytearray(fill) if fill is not None else bytearray(b"\xff" * geometry.size)
        super().__init__(buf, geometry)

    def snapshot(self) -> bytes:
        """The whole chip contents (test helper)."""
        return bytes(self._buf)


class FileChip(_NorArray):
    """A NOR chip whose cells are the bytes of a raw image file (memory-mapped).

    ``FileChip(path, geometry)`` opens an existing file whose size must equal
    ``geometry.size`` (else FlashError). ``create=True`` first creates a missing
    file filled with 0xFF (an erased chip). Close it (or use ``with``) to unmap.
    """

    def __init__(self, path: Path, geometry: FlashGeometry, *, create: bool = False) -> None:
        self.path = Path(path)
        if create and not self.path.exists():
            _create_erased(self.path, geometry.size)
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError as e:
            raise FlashError("cannot open chip image", path=str(self.path)) from e
        try:
            actual = os.fstat(fd).st_size
            if actual != geometry.size:
                raise FlashError(
                    "chip image size does not match geometry",
                    path=str(self.path),
                    size=actual,
                    expected=geometry.size,
                )
            mm = mmap.mmap(fd, geometry.size)
        finally:
            os.close(fd)
        self._mm: mmap.mmap | None = mm
        super().__init__(mm, geometry)

    def flush(self) -> None:
        """Write dirty pages to the file (msync). Changes are visible to other readers of
        the file (QEMU, flashrom) at once; flushing only matters for an OS crash."""
        if self._mm is None:
            raise FlashError("chip image is closed", path=str(self.path))
        self._mm.flush()

    def close(self) -> None:
        """Flush and unmap; further calls raise FlashError. Idempotent."""
        if self._mm is not None:
            self._mm.flush()
            self._mm.close()
            self._mm = None

    def __enter__(self) -> FileChip:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._mm is None:
            raise FlashError("chip image is closed", path=str(self.path))


def _create_erased(path: Path, size: int) -> None:
    block = b"\xff" * min(size, 1 << 20)
    with atomic_replace(path) as f:
        left = size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
