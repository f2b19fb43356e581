"""Directory sources: BMC storage, removable media mount points, network shares.

:class:`DirectorySource` offers the ``*.fwpkg`` files of one directory (not
recursive). It reads each file's manifest *only as a hint to order them* — packages
that name this target and board first, higher security version first — and never
as a trust decision: every candidate, hint or not, is staged through the Verifier by
the ladder. Entries that are not regular files, too large, or beyond the count
limit are skipped with a logged reason; a junk file never stops the ladder.

:class:`WatchedDirectory` polls a mount point for new or changed packages so the
agent can retry a pending recovery the moment a USB stick is plugged in.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Literal

from fwrescue.errors import ConfigError, FwRescueError, SourceError
from fwrescue.image.package import PACKAGE_SUFFIX, open_package
from fwrescue.sources.base import Candidate, LogFn, discard_log
from fwrescue.trust.manifest import MAX_IMAGE_SIZE, MAX_MANIFEST_BYTES

__all__ = ["DEFAULT_MAX_FILES", "DEFAULT_MAX_PACKAGE_BYTES", "DirectoryKind",
           "DirectorySource", "WatchedDirectory"]

DirectoryKind = Literal["bmc-storage", "usb", "share"]
_KINDS = ("bmc-storage", "usb", "share")
# A stick or share with more packages than this is not a recovery medium; bound the work.
DEFAULT_MAX_FILES = 64
# The largest image plus the largest manifest plus tar headers and trailer.
DEFAULT_MAX_PACKAGE_BYTES = MAX_IMAGE_SIZE + MAX_MANIFEST_BYTES + 128 * 1024

Sleep = Callable[[float], Awaitable[None]]
_Signature = tuple[int, int, int]  # (size, mtime_ns, inode)


def _list_packages(directory: Path, max_files: int, max_bytes: int,
                   log: LogFn, source: str) -> list[Path]:
    """Regular ``*.fwpkg`` files in ``directory`` within the limits, sorted by name."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError as e:
        raise SourceError("directory does not exist (not mounted?)",
                          path=str(directory)) from e
    except OSError as e:
        raise SourceError("cannot list directory", path=str(directory),
                          detail=str(e)) from e
    found: list[Path] = []
    for entry in entries:
        if not entry.name.endswith(PACKAGE_SUFFIX) or entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if len(found) >= max_files:
            log("candidate_skipped", source=source, candidate=str(path),
                reason=f"more than {max_files} packages in the directory")
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as e:
            log("candidate_skipped", source=source, candidate=str(path), reason=str(e))
            continue
        if not stat.S_ISREG(st.st_mode):
            log("candidate_skipped", source=source, candidate=str(path),
                reason="not a regular file")
            continue
        if st.st_size > max_bytes:
            log("candidate_skipped", source=source, candidate=str(path),
                reason="package larger than the limit", size=st.st_size, limit=max_bytes)
            continue
        found.append(path)
    return found


class DirectorySource:
    """The ``*.fwpkg`` files of one directory, as candidates (never cleaned up)."""

    def __init__(self, path: Path, kind: DirectoryKind = "bmc-storage", *,
                 max_files: int = DEFAULT_MAX_FILES,
                 max_package_bytes: int = DEFAULT_MAX_PACKAGE_BYTES,
                 log: LogFn = discard_log) -> None:
        if kind not in _KINDS:
            raise ConfigError("unknown directory source kind", kind=kind)
        if max_files <= 0 or max_package_bytes <= 0:
            raise ConfigError("directory source limits must be positive")
        self.path = path
        self.kind: DirectoryKind = kind
        self._max_files = max_files
        self._max_bytes = max_package_bytes
        self._log = log

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.path}"

    def _ordered(self, target: str, machine_name: str) -> list[Path]:
        paths = _list_packages(self.path, self._max_files, self._max_bytes, self._log,
                               self.name)
        ranked: list[tuple[tuple[int, int, str], Path]] = []
        for path in paths:
            try:
                manifest = open_package(path).manifest
                fits = manifest.fits(target, machine_name)
                rank = (0 if fits else 1, -manifest.security_version, path.name)
            except (FwRescueError, OSError):
                rank = (2, 0, path.name)  # unreadable: tried last, rejected with its reason
            ranked.append((rank, path))
        return [path for _, path in sorted(ranked)]

    async def candidates(self, target: str, machine_name: str,
                         workdir: Path) -> AsyncIterator[Candidate]:
        """Yield this directory's packages, likely fits first. SourceError if unlistable."""
        for path in await asyncio.to_thread(self._ordered, target, machine_name):
            yield Candidate(path=path, origin=f"{self.name}/{path.name}", cleanup=False)


class WatchedDirectory:
    """Polls a directory and reports ``*.fwpkg`` files that appeared or changed.

    A file is reported once its (size, mtime, inode) has stayed the same for one
    poll, so a package still being copied onto the stick is not reported half-written.
    Files present at the first poll are the baseline and not reported, unless
    ``report_existing``. A missing directory (medium unplugged) is an empty one.
    """

    def __init__(self, path: Path, *, interval: float = 2.0,
                 max_files: int = DEFAULT_MAX_FILES, report_existing: bool = False,
                 sleep: Sleep = asyncio.sleep) -> None:
        if not interval > 0:
            raise ConfigError("watch interval must be positive", interval=interval)
        self.path = path
        self.interval = interval
        self._max_files = max_files
        self._sleep = sleep
        self._baseline_pending = not report_existing
        self._reported: dict[str, _Signature] = {}
        self._pending: dict[str, _Signature] = {}

    def _snapshot(self) -> dict[str, _Signature]:
        snap: dict[str, _Signature] = {}
        try:
            entries = sorted(os.scandir(self.path), key=lambda e: e.name)
        except OSError:
            return snap
        for entry in entries:
            if len(snap) >= self._max_files:
                break
            if not entry.name.endswith(PACKAGE_SUFFIX) or entry.name.startswith("."):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                snap[entry.name] = (st.st_size, st.st_mtime_ns, st.st_ino)
        return snap

    def poll(self) -> list[Path]:
        """One poll: the files that became new or changed and then settled."""
        snap = self._snapshot()
        if self._baseline_pending:
            self._baseline_pending = False
            self._reported = dict(snap)
            return []
        ready: list[Path] = []
        pending: dict[str, _Signature] = {}
        for name, sig in snap.items():
            if self._reported.get(name) == sig:
                continue
            if self._pending.get(name) == sig:
                self._reported[name] = sig
                ready.append(self.path / name)
            else:
                pending[name] = sig
        self._pending = pending
        # Forget removed files, so re-inserting the same stick reports them again.
        self._reported = {n: s for n, s in self._reported.items() if n in snap}
        return ready

    async def changes(self, *, max_polls: int | None = None) -> AsyncIterator[Path]:
        """Yield each settled new/changed package path; poll every ``interval`` seconds.

        Runs until cancelled, or for ``max_polls`` polls when given.
        """
        polls = 0
        while max_polls is None or polls < max_polls:
            polls += 1
            for path in await asyncio.to_thread(self.poll):
                yield path
            await self._sleep(self.interval)
