"""Range checks shared by the flash backends (private).

Every chip and region call validates its offsets before touching anything, so a
bad argument changes nothing and raises :class:`FlashAddressError`.
"""

from __future__ import annotations

from fwrescue.errors import FlashError

__all__ = ["FlashAddressError", "check_erase", "check_span"]


class FlashAddressError(FlashError):
    """An offset, length or alignment is outside the chip or region. Nothing was changed."""

    retryable = False  # the same call fails the same way


def check_span(offset: int, length: int, size: int, what: str = "flash") -> None:
    """Raise FlashAddressError unless ``0 <= offset`` and ``offset + length <= size``."""
    if offset < 0 or length < 0 or offset + length > size:
        raise FlashAddressError(
            f"{what} access out of range", offset=offset, length=length, size=size
        )


def check_erase(offset: int, length: int, size: int, erase_sizes: tuple[int, ...]) -> None:
    """Raise FlashAddressError unless ``length`` is an erase size and ``offset`` aligns to it."""
    check_span(offset, length, size, "erase")
    if length not in erase_sizes or offset % length:
        raise FlashAddressError(
            "erase must be one aligned block of a supported size",
            offset=offset,
            length=length,
            erase_sizes=erase_sizes,
        )
