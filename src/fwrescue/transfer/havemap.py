"""Have-maps: which chunks of an image a donor holds verified, one bit per chunk.

Wire form (``GET /chunks/<sha256>``, docs/fleet-seams.md): ``ceil(chunks / 8)`` bytes,
chunk 0 in the most significant bit of byte 0, pad bits zero. A complete donor answers
all ones. :func:`decode_have_map` is strict: a body of another length or with a pad bit
set is a donor error (:class:`~fwrescue.errors.TransferError`), never a guess.
"""

from __future__ import annotations

from collections.abc import Iterable

from fwrescue.errors import TransferError

__all__ = ["decode_have_map", "encode_have_map", "full_have_map", "have_map_length"]

# The manifest allows at most 16384 chunks (trust/manifest.py): 2 KiB of bitmap.
MAX_CHUNKS_IN_MAP = 1 << 20


def have_map_length(chunk_count: int) -> int:
    return (chunk_count + 7) // 8


def encode_have_map(indices: Iterable[int], chunk_count: int | None = None) -> bytes:
    """The bitmap with the bits of ``indices`` set (length from ``chunk_count`` or the
    largest index)."""
    items = list(indices)
    count = chunk_count if chunk_count is not None else (max(items) + 1 if items else 0)
    out = bytearray(have_map_length(count))
    for index in items:
        if not 0 <= index < count:
            raise ValueError(f"chunk index {index} outside 0..{count - 1}")
        out[index >> 3] |= 0x80 >> (index & 7)
    return bytes(out)


def full_have_map(chunk_count: int) -> bytes:
    """A complete donor's map: every chunk bit set, pad bits clear."""
    out = bytearray(b"\xff" * have_map_length(chunk_count))
    spare = len(out) * 8 - chunk_count
    if spare:
        out[-1] = (0xFF << spare) & 0xFF
    return bytes(out)


def decode_have_map(data: bytes, chunk_count: int) -> list[int]:
    """The chunk indices set in ``data``; TransferError if it is not exactly the map of
    an image of ``chunk_count`` chunks."""
    if not 0 < chunk_count <= MAX_CHUNKS_IN_MAP:
        raise TransferError("bad chunk count for a have-map", chunks=chunk_count)
    if len(data) != have_map_length(chunk_count):
        raise TransferError("have-map has the wrong length", length=len(data),
                            expected=have_map_length(chunk_count))
    spare = len(data) * 8 - chunk_count
    if spare and data[-1] & ((1 << spare) - 1):
        raise TransferError("have-map sets bits past the last chunk")
    found: list[int] = []
    for byte_index, byte in enumerate(data):
        if byte == 0:
            continue
        base = byte_index * 8
        for bit in range(8):
            if byte & (0x80 >> bit):
                found.append(base + bit)
    return found
