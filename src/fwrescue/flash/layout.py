"""Flash layouts: the BIOS region inside a larger chip, two banks with an atomic switch,
and read access to a golden (backup) region.

Bank switch — a marker on the chip itself. The marker region holds two slots,
one smallest-erase sector each. A record is::

    magic "FWRBANK1" | seq u64 | active u8 | image length u64 | image SHA-256 (32)
    | SHA-256 of everything before (32)

The valid record (magic and digest check out) with the highest ``seq`` names the
active bank; with none valid the chip is fresh and bank A is active. A switch
writes ``seq+1`` into slot ``(seq+1) % 2`` — always the slot *not* holding the
current record — erasing it, programming the record and reading it back.

Why this survives a power cut anywhere: :meth:`BankedFlash.write` only erases and
programs the inactive bank, then the spare marker slot. A cut in the bank write
leaves the old record untouched (old bank active, its contents untouched); a
cut in the marker write leaves a torn slot whose digest fails, so the old
record still wins; only a complete, digest-valid new record switches. The marker
lives on the chip (not in a BMC state file) so the same chip-level fault
injection covers it and the switch is as durable as the bank it points to.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fwrescue.errors import ConfigError, FlashError, FlashVerifyError
from fwrescue.flash._bounds import FlashAddressError, check_span
from fwrescue.flash.device import FlashChip, Progress, StopCheck, WriteReport
from fwrescue.flash.timing import W25Q_JV, ChipTiming
from fwrescue.flash.writer import EraseAwareFlash, read_region_to
from fwrescue.trust.digests import digests_match

__all__ = [
    "BankState",
    "BankedFlash",
    "FlashLayout",
    "FlashRegion",
    "RegionReader",
    "decode_marker",
    "encode_marker",
]

_MAGIC = b"FWRBANK1"
_BODY = struct.Struct(">8sQBQ32s")
MARKER_RECORD_SIZE = _BODY.size + 32


@dataclass(frozen=True)
class FlashRegion:
    """A named byte range of a chip."""

    name: str
    offset: int
    size: int

    def __post_init__(self) -> None:
        if self.offset < 0 or self.size <= 0:
            raise ConfigError("flash region needs offset >= 0 and size > 0", region=self.name)

    @property
    def end(self) -> int:
        return self.offset + self.size

    def overlaps(self, other: FlashRegion) -> bool:
        return self.offset < other.end and other.offset < self.end


@dataclass(frozen=True)
class FlashLayout:
    """Where things live on the chip. ``bank_b`` needs ``marker``; ``golden`` is optional.

    :meth:`check` validates against a chip (alignment, bounds, no overlaps).
    """

    bank_a: FlashRegion
    bank_b: FlashRegion | None = None
    marker: FlashRegion | None = None
    golden: FlashRegion | None = None

    def regions(self) -> list[FlashRegion]:
        return [r for r in (self.bank_a, self.bank_b, self.marker, self.golden) if r is not None]

    def check(self, chip_size: int, min_erase: int) -> None:
        """Raise ConfigError unless every region is sector-aligned, inside the chip, disjoint,
        the banks are equal in size and a dual-bank layout has a two-sector marker."""
        regions = self.regions()
        for r in regions:
            if r.end > chip_size:
                raise ConfigError("flash region beyond the chip", region=r.name)
            if r.offset % min_erase or r.size % min_erase:
                raise ConfigError("flash region not sector-aligned", region=r.name)
        for i, r in enumerate(regions):
            for q in regions[i + 1 :]:
                if r.overlaps(q):
                    raise ConfigError("flash regions overlap", a=r.name, b=q.name)
        if self.bank_b is not None:
            if self.bank_b.size != self.bank_a.size:
                raise ConfigError("banks differ in size")
            if self.marker is None or self.marker.size != 2 * min_erase:
                raise ConfigError("a dual-bank layout needs a marker of two sectors")


@dataclass(frozen=True)
class BankState:
    """The decoded marker: which bank is active and what was written there."""

    active: int
    seq: int
    image_length: int = 0
    image_sha256: bytes = b""

    def __post_init__(self) -> None:
        if self.active not in (0, 1) or self.seq < 0 or self.image_length < 0:
            raise ValueError("invalid bank state")
        if self.image_sha256 and len(self.image_sha256) != 32:
            raise ValueError("image_sha256 must be 32 bytes")


def encode_marker(state: BankState) -> bytes:
    """The on-chip record for ``state`` (module doc)."""
    body = _BODY.pack(
        _MAGIC, state.seq, state.active, state.image_length, state.image_sha256 or bytes(32)
    )
    return body + hashlib.sha256(body).digest()


def decode_marker(raw: bytes) -> BankState | None:
    """The state in a slot, or None if it is blank, torn or foreign (never raises)."""
    if len(raw) < MARKER_RECORD_SIZE:
        return None
    body, digest = raw[: _BODY.size], raw[_BODY.size : MARKER_RECORD_SIZE]
    if not digests_match(hashlib.sha256(body).digest(), digest):
        return None
    magic, seq, active, length, sha = _BODY.unpack(body)
    if magic != _MAGIC or active not in (0, 1):
        return None
    return BankState(active, seq, length, b"" if sha == bytes(32) else sha)


class RegionReader:
    """Read-only access to one region (the golden copy a recovery source reads)."""

    def __init__(self, chip: FlashChip, region: FlashRegion, window: int = 1 << 16) -> None:
        check_span(region.offset, region.size, chip.geometry.size, "region")
        self._chip = chip
        self.region = region
        self._window = window

    @property
    def size(self) -> int:
        return self.region.size

    def read_to(self, offset: int, length: int, dest: Path) -> None:
        """Copy ``length`` bytes at region ``offset`` into ``dest`` (removed on failure)."""
        check_span(offset, length, self.region.size, "region read")
        read_region_to(self._chip, self.region.offset + offset, length, dest, self._window)

    def sha256(self, offset: int = 0, length: int | None = None) -> bytes:
        """SHA-256 of region bytes ``[offset, offset+length)`` (default: to the region end)."""
        n = self.region.size - offset if length is None else length
        check_span(offset, n, self.region.size, "region read")
        h = hashlib.sha256()
        pos, end = self.region.offset + offset, self.region.offset + offset + n
        while pos < end:
            k = min(self._window, end - pos)
            h.update(self._chip.read(pos, k))
            pos += k
        return h.digest()


class _PaddedReader:
    """A file followed by 0xFF up to ``total`` bytes; rewindable."""

    def __init__(self, f: BinaryIO, length: int, total: int) -> None:
        self._f = f
        self._length = length
        self._total = total
        self._pos = 0

    def read(self, n: int = -1, /) -> bytes:
        remaining = self._total - self._pos
        n = remaining if n < 0 else min(n, remaining)
        from_file = max(0, min(n, self._length - self._pos))
        data = self._f.read(from_file) if from_file else b""
        if len(data) != from_file:
            raise FlashError("image file ended early", wanted=from_file, got=len(data))
        self._pos += n
        return data + b"\xff" * (n - from_file)

    def seek(self, offset: int, whence: int = 0, /) -> int:
        if offset != 0 or whence != 0:
            raise ValueError("only rewinding is supported")
        self._f.seek(0)
        self._pos = 0
        return 0

    def tell(self) -> int:
        return self._pos


class BankedFlash:
    """A :class:`Flash` over a dual-bank chip: reads the active bank, writes the inactive one.

    ``write(0, image)`` writes ``image`` padded with 0xFF to the bank size into the
    inactive bank, verifies it, then switches the marker (module doc). The report
    covers the bank write (``bytes_total`` = bank size). Raises FlashAddressError
    for an offset other than 0 or an image larger than a bank, FlashVerifyError
    if the bank or the new marker reads back wrong, FlashError otherwise.
    """

    def __init__(
        self,
        chip: FlashChip,
        layout: FlashLayout,
        *,
        timing: ChipTiming = W25Q_JV,
        progress_step: int = 1 << 20,
    ) -> None:
        geo = chip.geometry
        layout.check(geo.size, geo.min_erase)
        if layout.bank_b is None or layout.marker is None:
            raise ConfigError("BankedFlash needs bank_b and a marker")
        self._chip = chip
        self.layout = layout
        self._banks = (layout.bank_a, layout.bank_b)
        self._marker = layout.marker
        self._sector = geo.min_erase
        self._writers = tuple(
            EraseAwareFlash(
                chip,
                region_offset=b.offset,
                region_size=b.size,
                timing=timing,
                progress_step=progress_step,
            )
            for b in self._banks
        )

    @property
    def size(self) -> int:
        return self._banks[0].size

    @property
    def state(self) -> BankState:
        """The marker as on the chip now (fresh chip: bank 0, seq 0)."""
        best: BankState | None = None
        for slot in (0, 1):
            st = decode_marker(self._chip.read(self._slot_offset(slot), MARKER_RECORD_SIZE))
            if st is not None and (best is None or st.seq > best.seq):
                best = st
        return best if best is not None else BankState(active=0, seq=0)

    @property
    def active_bank(self) -> int:
        return self.state.active

    @property
    def golden(self) -> RegionReader | None:
        g = self.layout.golden
        return None if g is None else RegionReader(self._chip, g)

    def bank(self, index: int) -> RegionReader:
        """Read-only view of bank 0 (A) or 1 (B)."""
        return RegionReader(self._chip, self._banks[index])

    def read_to(self, offset: int, length: int, dest: Path) -> None:
        """Copy from the *active* bank into ``dest``."""
        self._writers[self.active_bank].read_to(offset, length, dest)

    def check_active(self) -> None:
        """Raise FlashVerifyError unless the active bank holds the image the marker records."""
        st = self.state
        if not st.image_sha256:
            raise FlashVerifyError("active bank has no recorded image", bank=st.active)
        got = self.bank(st.active).sha256(0, st.image_length)
        if not digests_match(got, st.image_sha256):
            raise FlashVerifyError("active bank does not match its recorded digest", bank=st.active)

    def write(self, offset: int, image: Path, progress: Progress | None = None) -> WriteReport:
        """Write the inactive bank, verify it, then switch to it (class doc)."""
        return self.write_until(offset, image, progress, None)

    def write_until(self, offset: int, image: Path, progress: Progress | None,
                    stop: StopCheck | None) -> WriteReport:
        """:meth:`write` asking ``stop()`` before each window of the bank write; a stop
        leaves the marker (and so the active bank) untouched."""
        if offset != 0:
            raise FlashAddressError("a bank is written whole, from offset 0", offset=offset)
        cur = self.state
        target = 1 - cur.active
        try:
            f = open(image, "rb")  # noqa: SIM115 - closed below, errors translated
        except OSError as e:
            raise FlashError("cannot open image", path=str(image)) from e
        with f:
            length = f.seek(0, 2)
            if length > self.size:
                raise FlashAddressError("image larger than a bank", length=length, size=self.size)
            f.seek(0)
            h = hashlib.sha256()
            while chunk := f.read(1 << 20):
                h.update(chunk)
            f.seek(0)
            report = self._writers[target].write_from(
                0, _PaddedReader(f, length, self.size), self.size, progress, stop=stop
            )
        self._switch(BankState(target, cur.seq + 1, length, h.digest()))
        return report

    def previous_image_sha256(self) -> str | None:
        """Hex SHA-256 of the image the *previously* active bank holds, when its marker
        record is intact, names the other bank, and that bank still matches it (hashed
        now); None otherwise. What :meth:`fall_back` would make active."""
        prev = self._previous_state()
        if prev is None:
            return None
        got = self.bank(prev.active).sha256(0, prev.image_length)
        return got.hex() if digests_match(got, prev.image_sha256) else None

    def fall_back(self) -> None:
        """Make the previously active bank active again (a new marker record; the banks are
        not written). FlashVerifyError, with nothing changed, unless
        :meth:`previous_image_sha256` vouches for that bank. A power cut in the marker write
        leaves the current bank active (module doc)."""
        prev = self._previous_state()
        if prev is None or self.previous_image_sha256() is None:
            raise FlashVerifyError("the previous bank does not hold its recorded image")
        cur = self.state
        self._switch(BankState(prev.active, cur.seq + 1, prev.image_length, prev.image_sha256))

    def _previous_state(self) -> BankState | None:
        cur = self.state
        if cur.seq == 0:
            return None
        other = decode_marker(self._chip.read(self._slot_offset((cur.seq + 1) % 2),
                                              MARKER_RECORD_SIZE))
        if (other is None or other.seq != cur.seq - 1 or other.active == cur.active
                or not other.image_sha256):
            return None
        return other

    def _slot_offset(self, slot: int) -> int:
        return self._marker.offset + slot * self._sector

    def _switch(self, new: BankState) -> None:
        where = self._slot_offset(new.seq % 2)
        record = encode_marker(new)
        self._chip.erase(where, self._sector)
        self._chip.program(where, record)
        if decode_marker(self._chip.read(where, MARKER_RECORD_SIZE)) != new:
            raise FlashVerifyError("bank marker did not read back", offset=where)
