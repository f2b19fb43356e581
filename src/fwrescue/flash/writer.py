"""Erase-aware writing of an image into a region of a NOR chip.

:class:`EraseAwareFlash` implements :class:`fwrescue.flash.device.Flash` over any
:class:`~fwrescue.flash.device.FlashChip`. A write streams the image and the
current chip contents one largest-erase-block *window* at a time (never the
whole image in memory) and, per window:

1. identical window → nothing (counted in ``skipped_bytes``);
2. per smallest erase block (sector): identical → skip; only 1→0 bit changes →
   program just the changed pages, no erase (NOR can clear bits); some 0→1
   change → the sector needs an erase;
3. erase size choice, bottom-up over the aligned hierarchy (4 K ⊂ 32 K ⊂ 64 K):
   a larger block that contains a sector needing erase is erased whole when its
   modelled cost — one erase plus programming every non-0xFF page of the new
   block — is below the summed best cost of its children. With W25Q typicals a
   lone changed sector is erased alone, a 64 KiB block is erased whole once about
   five of its sixteen sectors need erasing, and a full rewrite uses 64 KiB
   blocks only;
4. after an erase, pages that are all 0xFF in the new data are not programmed.

Erase blocks never leave the write span rounded out to sectors, which lies inside
the region. After all windows, the span is read back and compared with the image
(FlashVerifyError on the first mismatch). Partially covered sectors are merged
(old bytes outside the image are reprogrammed as they were).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from fwrescue.errors import ConfigError, FlashCancelled, FlashError, FlashVerifyError
from fwrescue.flash._bounds import check_span
from fwrescue.flash.device import FlashChip, Progress, StopCheck, WriteReport
from fwrescue.flash.timing import W25Q_JV, ChipTiming

__all__ = ["EraseAwareFlash", "ReadableStream", "read_region_to"]


class ReadableStream(Protocol):
    """What the writer needs from an image source: sequential reads and a rewind."""

    def read(self, n: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...


@dataclass(frozen=True)
class _Erase:
    offset: int
    size: int


@dataclass(frozen=True)
class _Program:
    offset: int
    data: bytes


_Op = _Erase | _Program


@dataclass
class _Plan:
    cost: float
    ops: list[_Op]
    needs_erase: bool


class EraseAwareFlash:
    """A :class:`Flash` over ``chip`` restricted to ``[region_offset, region_offset+region_size)``.

    The region must be aligned to the chip's smallest erase size (ConfigError
    otherwise). ``timing`` feeds the erase-size cost rule (W25Q typicals by
    default). ``progress_step`` is how many image bytes pass between progress calls.
    """

    def __init__(
        self,
        chip: FlashChip,
        *,
        region_offset: int = 0,
        region_size: int | None = None,
        timing: ChipTiming = W25Q_JV,
        progress_step: int = 1 << 20,
    ) -> None:
        geo = chip.geometry
        size = geo.size - region_offset if region_size is None else region_size
        e0 = geo.min_erase
        if region_offset < 0 or size <= 0 or region_offset + size > geo.size:
            raise ConfigError("flash region outside the chip", offset=region_offset, size=size)
        if region_offset % e0 or size % e0:
            raise ConfigError("flash region must align to the smallest erase size", erase=e0)
        for small, big in itertools.pairwise(geo.erase_sizes):
            if big % small:
                raise ConfigError("erase sizes must divide each other", sizes=geo.erase_sizes)
        if geo.page_size <= 0 or e0 % geo.page_size:
            raise ConfigError("page size must divide the smallest erase size")
        if progress_step <= 0:
            raise ConfigError("progress_step must be positive")
        self._chip = chip
        self._base = region_offset
        self._size = size
        self._timing = timing
        self._sizes = geo.erase_sizes
        self._page = geo.page_size
        self._step = progress_step
        self._window = geo.erase_sizes[-1]

    @property
    def size(self) -> int:
        return self._size

    @property
    def region_offset(self) -> int:
        return self._base

    @property
    def chip(self) -> FlashChip:
        return self._chip

    # --- reading -------------------------------------------------------------------------

    def read_to(self, offset: int, length: int, dest: Path) -> None:
        """Copy ``length`` region bytes at ``offset`` into ``dest``; on any error remove it."""
        check_span(offset, length, self._size, "region read")
        read_region_to(self._chip, self._base + offset, length, dest, self._window)

    def windows(self, offset: int, length: int) -> Iterator[bytes]:
        """Yield the region bytes ``[offset, offset+length)`` in window-sized pieces."""
        check_span(offset, length, self._size, "region read")
        pos, end = self._base + offset, self._base + offset + length
        while pos < end:
            n = min(self._window - pos % self._window, end - pos)
            yield self._chip.read(pos, n)
            pos += n

    # --- writing -------------------------------------------------------------------------

    def write(self, offset: int, image: Path, progress: Progress | None = None) -> WriteReport:
        """Write the file ``image`` at region ``offset`` erase-aware, then verify (module doc).

        Raises FlashAddressError if it does not fit (nothing written), FlashVerifyError
        on a read-back mismatch, FlashError (or subclass) if the chip or file fails.
        """
        return self.write_until(offset, image, progress, None)

    def write_until(self, offset: int, image: Path, progress: Progress | None,
                    stop: StopCheck | None) -> WriteReport:
        """:meth:`write` that asks ``stop()`` before each window (``StoppableFlash``)."""
        try:
            f = open(image, "rb")  # noqa: SIM115 - closed below, errors translated
        except OSError as e:
            raise FlashError("cannot open image", path=str(image)) from e
        with f:
            length = os.fstat(f.fileno()).st_size
            return self.write_from(offset, f, length, progress, stop=stop)

    def write_from(
        self,
        offset: int,
        src: ReadableStream | BinaryIO,
        length: int,
        progress: Progress | None = None,
        *,
        stop: StopCheck | None = None,
    ) -> WriteReport:
        """Like :meth:`write`, reading ``length`` bytes from ``src`` (rewound once to verify).

        ``stop`` is asked before each window; True raises FlashCancelled there, between
        erase blocks (a window's erases and programs always complete)."""
        check_span(offset, length, self._size, "region write")
        origin = src.tell()
        start = self._base + offset
        end = start + length
        e0 = self._sizes[0]
        lo, hi = start - start % e0, -(-end // e0) * e0
        erased: dict[int, int] = {}
        programmed = 0
        touched_image_bytes = 0
        done = 0
        next_report = 0
        if progress is not None:
            progress(0, length)
        win = lo - lo % self._window
        while win < hi:
            w_lo, w_hi = max(win, lo), min(win + self._window, hi)
            if stop is not None and stop():
                raise FlashCancelled("flash write cancelled at an erase-block boundary",
                                     written=done, offset=max(start, w_lo) - self._base)
            a, b = max(start, w_lo), min(end, w_hi)
            chunk = _read_exact(src, b - a)
            old = self._chip.read(w_lo, w_hi - w_lo)
            new = bytearray(old)
            new[a - w_lo : b - w_lo] = chunk
            if new != old:
                top = len(self._sizes) - 1
                plan = self._plan(w_lo, w_hi, memoryview(old), memoryview(new), win, top)
                touched: set[int] = set()
                for op in plan.ops:
                    if isinstance(op, _Erase):
                        self._chip.erase(op.offset, op.size)
                        erased[op.size] = erased.get(op.size, 0) + 1
                        touched.update(range(op.offset, op.offset + op.size, e0))
                    else:
                        self._chip.program(op.offset, op.data)
                        programmed += len(op.data)
                        touched.add(op.offset - op.offset % e0)
                for s in touched:
                    touched_image_bytes += max(0, min(b, s + e0) - max(a, s))
            done += b - a
            win += self._window
            if progress is not None and (done >= next_report or done == length):
                progress(done, length)
                next_report = done + self._step
        self._verify(src, origin, start, length)
        return WriteReport(
            bytes_total=length,
            bytes_programmed=programmed,
            erased_blocks=erased,
            skipped_bytes=length - touched_image_bytes,
        )

    def _verify(self, src: ReadableStream | BinaryIO, origin: int, start: int, length: int) -> None:
        src.seek(origin)
        pos, end = start, start + length
        while pos < end:
            n = min(self._window - pos % self._window, end - pos)
            want = _read_exact(src, n)
            got = self._chip.read(pos, n)
            if got != want:
                first = next(i for i in range(n) if got[i] != want[i])
                raise FlashVerifyError(
                    "read-back does not match the image",
                    offset=pos + first - self._base,
                    expected=want[first],
                    actual=got[first],
                )
            pos += n

    # --- planning ------------------------------------------------------------------------

    def _plan(
        self, w_lo: int, w_hi: int, old: memoryview, new: memoryview, bs: int, level: int
    ) -> _Plan:
        """Cheapest ops for the aligned block at ``bs`` of size ``sizes[level]`` (module doc)."""
        size = self._sizes[level]
        if level == 0:
            return self._plan_sector(w_lo, old, new, bs)
        child = self._sizes[level - 1]
        total = _Plan(0.0, [], False)
        for cs in range(bs, bs + size, child):
            if cs + child <= w_lo or cs >= w_hi:
                continue
            p = self._plan(w_lo, w_hi, old, new, cs, level - 1)
            total.cost += p.cost
            total.ops.extend(p.ops)
            total.needs_erase |= p.needs_erase
        if total.needs_erase and bs >= w_lo and bs + size <= w_hi:
            block = new[bs - w_lo : bs - w_lo + size]
            runs = self._page_runs(block, None, bs)
            cost = self._timing.erase_time(size) + self._runs_cost(runs)
            if cost < total.cost:
                ops: list[_Op] = [_Erase(bs, size)]
                ops.extend(_Program(s, bytes(new[s - w_lo : e - w_lo])) for s, e in runs)
                return _Plan(cost, ops, True)
        return total

    def _plan_sector(self, w_lo: int, old: memoryview, new: memoryview, bs: int) -> _Plan:
        e0 = self._sizes[0]
        o = old[bs - w_lo : bs - w_lo + e0]
        n = new[bs - w_lo : bs - w_lo + e0]
        if o == n:
            return _Plan(0.0, [], False)
        ni = int.from_bytes(n, "big")
        if int.from_bytes(o, "big") & ni == ni:  # only 1 -> 0 changes: program in place
            runs = self._page_runs(n, o, bs)
            ops: list[_Op] = [_Program(s, bytes(new[s - w_lo : e - w_lo])) for s, e in runs]
            return _Plan(self._runs_cost(runs), ops, False)
        runs = self._page_runs(n, None, bs)
        ops = [_Erase(bs, e0)]
        ops.extend(_Program(s, bytes(new[s - w_lo : e - w_lo])) for s, e in runs)
        return _Plan(self._timing.erase_time(e0) + self._runs_cost(runs), ops, True)

    def _page_runs(
        self, new: memoryview, old: memoryview | None, base: int
    ) -> list[tuple[int, int]]:
        """Absolute [start, end) runs of pages to program: pages differing from ``old``,
        or, after an erase (``old is None``), pages that are not all 0xFF."""
        ps = self._page
        blank = b"\xff" * ps
        runs: list[tuple[int, int]] = []
        for p in range(0, len(new), ps):
            page = new[p : p + ps]
            if page == blank if old is None else page == old[p : p + ps]:
                continue
            s = base + p
            if runs and runs[-1][1] == s:
                runs[-1] = (runs[-1][0], s + len(page))
            else:
                runs.append((s, s + len(page)))
        return runs

    def _runs_cost(self, runs: list[tuple[int, int]]) -> float:
        return sum(self._timing.program_time(s, e - s) for s, e in runs)


def read_region_to(chip: FlashChip, offset: int, length: int, dest: Path, window: int) -> None:
    """Copy chip bytes ``[offset, offset+length)`` into ``dest`` window by window.

    On any failure ``dest`` is removed (never a silently short file) and FlashError raised.
    """
    check_span(offset, length, chip.geometry.size, "read")
    try:
        with open(dest, "wb") as out:
            pos, end = offset, offset + length
            while pos < end:
                n = min(window - pos % window, end - pos)
                data = chip.read(pos, n)
                if len(data) != n:
                    raise FlashError("chip returned short data", offset=pos, length=n)
                out.write(data)
                pos += n
    except BaseException as e:
        Path(dest).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise FlashError("cannot write read-out file", path=str(dest)) from e
        raise


def _read_exact(src: ReadableStream | BinaryIO, n: int) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise FlashError("image source ended early", wanted=n, got=len(data))
    return data
