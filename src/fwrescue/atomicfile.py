"""Atomic, durable file replacement: the one place that writes temp-fsync-rename-fsync.

A power cut at any instant leaves the destination with its old bytes or its new bytes,
never a mix (python-tuf writes its trusted metadata the same way):

1. the new bytes go to a temporary file beside the destination, whose name is this
   writer's own (two writers of one file never share a temp file);
2. the temp file is ``fsync``\\ ed, so its data is on disk before its name is;
3. ``os.replace`` swaps it in (atomic on POSIX within one filesystem);
4. the directory is ``fsync``\\ ed, so the rename itself survives the cut.

On any error before the rename the temp file is removed and the destination is
untouched. Errors are the OS's (``OSError``); callers translate them at their seam.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_replace", "atomic_write", "commit_file", "fsync_dir", "temp_path"]


def fsync_dir(directory: Path) -> None:
    """Make the directory entries of ``directory`` (creations, renames) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """A fresh hidden temp name beside ``path``, unique to this call."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def commit_file(tmp: Path, path: Path) -> None:
    """Rename the already-durable file ``tmp`` over ``path`` and make the rename durable."""
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_replace(path: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` when the block exits without an error.

    ``mode`` is applied when the temp file is created (e.g. ``0o600`` for a key), so the
    bytes are never readable with wider permissions. An exception inside the block (or
    while committing) removes the temp file, leaves ``path`` as it was and propagates.
    """
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        commit_file(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new bytes, never a mix."""
    with atomic_replace(path, mode=mode) as f:
        f.write(data)
