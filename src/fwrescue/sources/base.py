"""The predetermined-location seam: what a source yields and how events are logged.

A source (flash golden region, BMC storage directory, removable media, network
share, HTTP(S) URL) yields *candidate* package files. It decides nothing about
trust: the ladder (:func:`fwrescue.sources.ladder.locate`) stages every candidate
through :func:`fwrescue.image.package.stage_package`, the same checks a donor's
package gets.

A source that cannot be used at all (unreachable, unmounted, unreadable) raises
:class:`fwrescue.errors.SourceError` from ``candidates``; the ladder logs it and
moves to the next source.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["Candidate", "ImageSource", "LogFn", "discard_log"]


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """A package file to try. ``cleanup``: a temporary file the consumer deletes."""

    path: Path
    origin: str
    cleanup: bool = False


class LogFn(Protocol):
    """``log(event, **fields)``: a structured event (``candidate_rejected``, …)."""

    def __call__(self, event: str, /, **fields: object) -> None: ...


@runtime_checkable
class ImageSource(Protocol):
    """A predetermined location. ``name`` is e.g. ``usb:/media/usb0`` or ``golden``."""

    @property
    def name(self) -> str: ...

    def candidates(self, target: str, machine_name: str,
                   workdir: Path) -> AsyncIterator[Candidate]:
        """Yield candidate packages, best first; temporary files go in ``workdir``.

        Raises SourceError when the location as a whole is unusable.
        """
        ...


def discard_log(event: str, /, **fields: object) -> None:
    """A LogFn that drops events."""
