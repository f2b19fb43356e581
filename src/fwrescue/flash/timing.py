"""A flash timing model: datasheet typicals per chip, and a chip wrapper that accounts time.

Erase and program dominate a real recovery (docs/flash.md, REFERENCES.md): a
16 MiB W25Q erase+program takes minutes, while flashrom's dummy programmer and a
file-backed chip finish instantly. :class:`TimedChip` charges every operation its
typical duration so the simulator and the benchmarks see realistic ratios.

* erase: the typical time for that block size; sizes missing from a table are
  interpolated linearly between the neighbouring known sizes (W25Q's 32 KiB
  block, for instance);
* program: the page-program time for every page the write touches;
* read: bytes / ``read_bytes_per_second`` (default 25 MB/s: quad I/O at the
  50 MHz an ASPEED BMC SPI controller runs).

``modelled_seconds`` is the unscaled datasheet time. With an injected ``sleep``
(``time.sleep`` in the demo) the wrapper also sleeps ``modelled × scale``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from fwrescue.errors import ConfigError
from fwrescue.flash.device import FlashChip, FlashGeometry

__all__ = ["CHIP_TIMINGS", "W25Q_JV", "ChipTiming", "TimedChip", "timing_for"]


@dataclass(frozen=True)
class ChipTiming:
    """Typical operation times of one part. ``erase_seconds`` is ((size, seconds), ...)."""

    name: str
    erase_seconds: tuple[tuple[int, float], ...]
    page_program_seconds: float
    page_size: int = 256
    read_bytes_per_second: float = 25e6

    def __post_init__(self) -> None:
        sizes = [s for s, _ in self.erase_seconds]
        if not sizes or sizes != sorted(set(sizes)):
            raise ValueError("erase_seconds needs ascending, distinct sizes")
        if any(s <= 0 or t <= 0 for s, t in self.erase_seconds):
            raise ValueError("erase sizes and times must be positive")
        if self.page_program_seconds <= 0 or self.page_size <= 0:
            raise ValueError("page program time and page size must be positive")
        if self.read_bytes_per_second <= 0:
            raise ValueError("read rate must be positive")

    def erase_time(self, size: int) -> float:
        """Typical seconds to erase one block of ``size`` bytes (interpolated if not listed)."""
        table = self.erase_seconds
        for s, t in table:
            if s == size:
                return t
        if size < table[0][0]:
            return table[0][1] * size / table[0][0]
        for (s0, t0), (s1, t1) in itertools.pairwise(table):
            if s0 < size < s1:
                return t0 + (t1 - t0) * (size - s0) / (s1 - s0)
        s_last, t_last = table[-1]
        return t_last * size / s_last  # beyond the table: scale the largest block

    def program_time(self, offset: int, length: int) -> float:
        """Seconds to program ``length`` bytes at ``offset``: one page time per page touched."""
        if length <= 0:
            return 0.0
        first = offset // self.page_size
        last = (offset + length - 1) // self.page_size
        return (last - first + 1) * self.page_program_seconds

    def read_time(self, length: int) -> float:
        return length / self.read_bytes_per_second


#: Winbond W25Q…JV (JESD216 SFDP typicals, REFERENCES.md).
W25Q_JV = ChipTiming("W25Q_JV", ((4096, 0.064), (65536, 0.160)), 0.00070)

#: Datasheet typicals by part name (REFERENCES.md). Read-only.
CHIP_TIMINGS: Mapping[str, ChipTiming] = MappingProxyType(
    {
        "W25Q_JV": W25Q_JV,
        "MX25U25635F": ChipTiming("MX25U25635F", ((4096, 0.025), (65536, 0.224)), 0.00015),
        "GD25LB256E": ChipTiming("GD25LB256E", ((4096, 0.030), (65536, 0.208)), 0.00032),
    }
)


def timing_for(part: str) -> ChipTiming:
    """The timing table for a part name: a key of CHIP_TIMINGS, or any Winbond ``W25Q…``
    name (``W25Q256JV``, ``W25Q128FV``), which uses the W25Q…JV typicals.

    Raises ConfigError for an unknown part.
    """
    key = part.strip().upper()
    for name, timing in CHIP_TIMINGS.items():
        if name.upper() == key:
            return timing
    if key.startswith("W25Q"):
        return W25Q_JV
    raise ConfigError("no timing model for this flash part", part=part, known=sorted(CHIP_TIMINGS))


class TimedChip:
    """Wraps a FlashChip; charges each operation its typical time (see module doc).

    ``scale`` multiplies the modelled time before ``sleep`` is called (e.g. 0.001
    for the demo); with ``sleep=None`` nothing sleeps and only the account grows.
    Errors of the inner chip pass through; a failed operation is not charged.
    """

    def __init__(
        self,
        chip: FlashChip,
        timing: ChipTiming = W25Q_JV,
        *,
        scale: float = 1.0,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if scale < 0:
            raise ValueError("scale must be >= 0")
        self._chip = chip
        self.timing = timing
        self._scale = scale
        self._sleep = sleep
        self.erase_seconds = 0.0
        self.program_seconds = 0.0
        self.read_seconds = 0.0

    @property
    def geometry(self) -> FlashGeometry:
        return self._chip.geometry

    @property
    def modelled_seconds(self) -> float:
        """Total unscaled datasheet time charged so far."""
        return self.erase_seconds + self.program_seconds + self.read_seconds

    def reset(self) -> None:
        self.erase_seconds = self.program_seconds = self.read_seconds = 0.0

    def read(self, offset: int, length: int) -> bytes:
        data = self._chip.read(offset, length)
        t = self.timing.read_time(length)
        self.read_seconds += t
        self._wait(t)
        return data

    def erase(self, offset: int, length: int) -> None:
        self._chip.erase(offset, length)
        t = self.timing.erase_time(length)
        self.erase_seconds += t
        self._wait(t)

    def program(self, offset: int, data: bytes) -> None:
        self._chip.program(offset, data)
        t = self.timing.program_time(offset, len(data))
        self.program_seconds += t
        self._wait(t)

    def _wait(self, seconds: float) -> None:
        if self._sleep is not None and self._scale > 0:
            self._sleep(seconds * self._scale)
