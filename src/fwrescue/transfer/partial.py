"""What a donor can serve: complete images from its package store and, while it is still
receiving one, the verified chunks of a *partial* image (it is a partial donor).

:class:`PartialImages` is the registry the recipient side fills: when a recovery has
verified a manifest and opened its staging, it registers the staged image; when the
staging is finalized or closed, it removes it. :class:`DonorCatalog` joins the store and
that registry for the transfer server (content by address, plus a :class:`Servable`
view that says which byte ranges may go out) and for the donor's OFFERs (a partial image
is offered with ``held`` = its verified chunk count, and only once it holds one).

Nothing unverified is ever served: :meth:`Servable.covers` is true only for ranges whose
every chunk is verified here, and a verified chunk is never rewritten in staging.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fwrescue.donor.responder import OfferableImage
from fwrescue.errors import FwRescueError
from fwrescue.image.store import StoredImage
from fwrescue.transfer.havemap import full_have_map, have_map_length
from fwrescue.transfer.staging import StagedImage

__all__ = ["DonorCatalog", "PartialImages", "Servable", "StoreLike"]

log = logging.getLogger(__name__)

# A recipient stages one image per target; a handful of entries is every realistic case.
MAX_PARTIAL = 16


class Servable(Protocol):
    """An image a donor may serve ranges of."""

    @property
    def size(self) -> int: ...

    @property
    def path(self) -> Path: ...

    @property
    def complete(self) -> bool: ...

    def have_bitmap(self) -> bytes: ...

    def covers(self, first_byte: int, last_byte: int) -> bool: ...


@dataclass(frozen=True)
class _Complete:
    size: int
    path: Path
    chunk_count: int
    complete: bool = True

    def have_bitmap(self) -> bytes:
        return full_have_map(self.chunk_count)

    def covers(self, first_byte: int, last_byte: int) -> bool:
        return 0 <= first_byte <= last_byte < self.size


class _Partial:
    """A live view of a staged image; a closed staging serves nothing."""

    def __init__(self, staged: StagedImage) -> None:
        self._staged = staged

    @property
    def size(self) -> int:
        return self._staged.size

    @property
    def path(self) -> Path:
        return self._staged.part_path

    @property
    def complete(self) -> bool:
        try:
            return self._staged.complete()
        except FwRescueError:
            return False

    def have_bitmap(self) -> bytes:
        try:
            return self._staged.have_bitmap()
        except FwRescueError:  # closed meanwhile: claim nothing
            return bytes(have_map_length(self._staged.chunk_count))

    def covers(self, first_byte: int, last_byte: int) -> bool:
        try:
            return self._staged.covers(first_byte, last_byte)
        except FwRescueError:
            return False


@dataclass
class _Entry:
    staged: StagedImage
    manifest_raw: bytes
    manifest_digest: str
    finished: _Complete | None = None  # verified whole, until the store takes it over
    finalizing: bool = False  # being moved into place: serve nothing meanwhile


class PartialImages:
    """Staged images this node is receiving and may serve the verified chunks of."""

    def __init__(self) -> None:
        self._by_sha: dict[str, _Entry] = {}

    def add(self, staged: StagedImage, manifest_raw: bytes, manifest_digest: str) -> None:
        """Serve ``staged``'s verified chunks (``manifest_raw`` is its signed envelope,
        already verified by the caller) until :meth:`remove`."""
        if len(self._by_sha) >= MAX_PARTIAL and staged.sha256 not in self._by_sha:
            log.warning("not serving partial image %s: %d partial images already served",
                        staged.sha256[:12], MAX_PARTIAL)
            return
        self._by_sha[staged.sha256] = _Entry(staged, manifest_raw, manifest_digest)

    def remove(self, sha256: str) -> None:
        self._by_sha.pop(sha256, None)

    def finalizing(self, sha256: str) -> None:
        """The staging is being finalized (renamed, closed): answer 404 until
        :meth:`finished`, never a have-map that would look shrunk."""
        entry = self._by_sha.get(sha256)
        if entry is not None:
            entry.finalizing = True

    def finished(self, sha256: str, path: Path) -> None:
        """The staging was finalized into ``path`` (the whole image, verified): keep
        serving it from there until the package store holds it, so recipients swarming
        from this node see no gap between the staging and the store."""
        entry = self._by_sha.get(sha256)
        if entry is None:
            return
        m = entry.staged.verified.manifest
        entry.finished = _Complete(size=m.size, path=path, chunk_count=m.chunk_count)
        entry.finalizing = False

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._by_sha

    def manifest_bytes(self, digest: str) -> bytes | None:
        for entry in self._by_sha.values():
            if entry.manifest_digest == digest:
                return entry.manifest_raw
        return None

    def servable(self, sha256: str) -> Servable | None:
        entry = self._by_sha.get(sha256)
        if entry is None or entry.finalizing:
            return None
        return entry.finished if entry.finished is not None else _Partial(entry.staged)

    def offerable(self) -> list[OfferableImage]:
        """Partial images holding at least one verified chunk, as OFFER material."""
        out = []
        for entry in list(self._by_sha.values()):
            if entry.finished is not None or entry.finalizing:
                continue  # the store offers it as a complete image soon
            try:
                held = entry.staged.verified_count
            except FwRescueError:
                continue
            if held == 0 or held == entry.staged.chunk_count:
                continue  # nothing to give yet / about to become a complete image
            m = entry.staged.verified.manifest
            out.append(OfferableImage(
                manifest_digest=entry.manifest_digest, image_sha256=m.sha256,
                target=m.target, machine_names=m.machine_names, version=m.version,
                security_version=m.security_version, size=m.size, held=held))
        return out


class StoreLike(Protocol):
    """What :class:`DonorCatalog` needs of a :class:`~fwrescue.image.store.PackageStore`."""

    def manifest_bytes(self, digest: str) -> bytes | None: ...

    def image_path(self, sha256: str) -> Path | None: ...

    def list(self) -> list[StoredImage]: ...


class DonorCatalog:
    """The transfer server's catalog: the store first, then partial images."""

    def __init__(self, store: StoreLike, partial: PartialImages | None = None) -> None:
        self._store = store
        self._partial = partial

    def manifest_bytes(self, digest: str) -> bytes | None:
        raw = self._store.manifest_bytes(digest)
        if raw is None and self._partial is not None:
            raw = self._partial.manifest_bytes(digest)
        return raw

    def image_path(self, sha256: str) -> Path | None:
        """Complete images only (a partial image is served through :meth:`servable`)."""
        return self._store.image_path(sha256)

    def servable(self, sha256: str) -> Servable | None:
        path = self._store.image_path(sha256)
        count = next((len(s.manifest.chunks) for s in self._store.list()
                      if s.manifest.sha256 == sha256), None) if path is not None else None
        if path is not None and count is not None:
            try:
                size = path.stat().st_size
            except OSError:
                return None
            return _Complete(size=size, path=path, chunk_count=count)
        return self._partial.servable(sha256) if self._partial is not None else None
