"""A content-addressed package store on BMC (or console) storage.

Layout::

    root/manifests/<manifest digest>.json   the signed envelope, byte for byte
    root/images/<image sha256>.bin          the raw image it describes

Entries appear only by rename (write to a temporary name in the same directory,
fsync, ``os.replace``), image first and manifest second, so a concurrent reader (the
transfer server streaming an image) sees either no entry or a complete one, and an
image file never changes once it has its final name. Several manifests (other boards,
other versions with the same bytes) may share one image.

Every name read from disk must be 64 lowercase hex digits plus its suffix; anything
else, and any entry that fails its checks, is skipped and listed in :attr:`junk`.
The listing is cached in memory and refreshed on every put (a donor answers
solicits from it often).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from fwrescue.atomicfile import atomic_write, commit_file
from fwrescue.errors import (
    ChunkMismatch,
    FwRescueError,
    LocalError,
    PackageError,
    SizeLimitExceeded,
)
from fwrescue.image.package import extract_verified, open_package, write_package
from fwrescue.trust.digests import addressed
from fwrescue.trust.manifest import MAX_IMAGE_SIZE, MAX_MANIFEST_BYTES, Manifest, SignedManifest
from fwrescue.trust.verifier import VerifiedManifest, Verifier

__all__ = ["PackageStore", "StoreError", "StoredImage"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_COPY_BLOCK = 1024 * 1024
# A console repository of many boards and versions; far beyond that is a mistake.
DEFAULT_MAX_ENTRIES = 4096


class StoreError(LocalError):
    """The store cannot do what was asked (unknown digest, unusable root)."""

    http_status = 404
    message_id = "Base.1.22.ResourceNotFound"


@dataclass(frozen=True)
class StoredImage:
    """One stored package: its envelope and the path of its image file."""

    signed: SignedManifest
    image_path: Path

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest

    @property
    def digest(self) -> str:
        return self.signed.digest


def _temp_in(directory: Path, stem: str) -> Path:
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{stem[:16]}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


class PackageStore:
    """Packages by manifest digest and images by SHA-256 under ``root``.

    ``verifier``, when given, re-checks every envelope found on disk at load time with
    :meth:`Verifier.verify_for_donation` (bounded and authentically signed); entries
    that fail go to :attr:`junk`. Thread-safe; readers never see a partial entry.
    """

    def __init__(self, root: Path, *, verifier: Verifier | None = None,
                 max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_manifest_bytes: int = MAX_MANIFEST_BYTES,
                 max_image_size: int = MAX_IMAGE_SIZE) -> None:
        self.root = root
        self._manifests = root / "manifests"
        self._images = root / "images"
        self._verifier = verifier
        self._max_entries = max_entries
        self._max_manifest_bytes = max_manifest_bytes
        self._max_image_size = max_image_size
        self._lock = threading.Lock()
        try:
            self._manifests.mkdir(parents=True, exist_ok=True)
            self._images.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError("cannot create the package store", root=str(root),
                             detail=str(e)) from e
        self.junk: list[tuple[Path, str]] = []
        self._entries: dict[str, StoredImage] = self._scan()

    # --- loading -----------------------------------------------------------------------

    def _scan(self) -> dict[str, StoredImage]:
        entries: dict[str, StoredImage] = {}
        junk: list[tuple[Path, str]] = []
        names = sorted(os.listdir(self._manifests))
        for name in names:
            path = self._manifests / name
            if len(entries) >= self._max_entries:
                junk.append((path, "store holds more than max_entries manifests"))
                continue
            digest, dot, suffix = name.partition(".")
            if not (_HEX64.match(digest) and dot and suffix == "json"):
                junk.append((path, "not a <64 hex>.json name"))
                continue
            try:
                entries[digest] = self._load_entry(path, digest)
            except (FwRescueError, OSError) as e:
                junk.append((path, str(e)))
        for name in sorted(os.listdir(self._images)):
            sha, dot, suffix = name.partition(".")
            if not (_HEX64.match(sha) and dot and suffix == "bin"):
                junk.append((self._images / name, "not a <64 hex>.bin name"))
        self.junk = junk
        return entries

    def _load_entry(self, path: Path, digest: str) -> StoredImage:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError("manifest entry is not a regular file")
        if st.st_size > self._max_manifest_bytes:
            raise SizeLimitExceeded("stored manifest too large", size=st.st_size,
                                    limit=self._max_manifest_bytes)
        raw = path.read_bytes()
        if not addressed(raw, digest):
            raise StoreError("stored manifest does not hash to its name")
        signed = SignedManifest.parse(raw, max_bytes=self._max_manifest_bytes)
        if self._verifier is not None:
            self._verifier.verify_for_donation(signed)
        image = self._images / f"{signed.manifest.sha256}.bin"
        ist = os.lstat(image)
        if not stat.S_ISREG(ist.st_mode) or ist.st_size != signed.manifest.size:
            raise StoreError("stored image missing or of the wrong size",
                             image=image.name)
        return StoredImage(signed=signed, image_path=image)

    def refresh(self) -> None:
        """Re-read the store from disk (after another process changed it)."""
        entries = self._scan()
        with self._lock:
            self._entries = entries

    # --- queries -------------------------------------------------------------------------

    def list(self) -> list[StoredImage]:
        """Every stored package, sorted by target, version, digest (from the cache)."""
        with self._lock:
            items = list(self._entries.values())
        return sorted(items, key=lambda s: (s.manifest.target, s.manifest.version, s.digest))

    def get(self, digest: str) -> StoredImage | None:
        if not isinstance(digest, str) or not _HEX64.match(digest):
            return None
        with self._lock:
            return self._entries.get(digest)

    def manifest_bytes(self, digest: str) -> bytes | None:
        """The stored envelope for ``digest`` exactly as signed, or None."""
        entry = self.get(digest)
        return entry.signed.raw if entry else None

    def image_path(self, sha256: str) -> Path | None:
        """The image file with this SHA-256 if a stored manifest refers to it, else None.

        Safe to stream concurrently with puts: an image file is never rewritten.
        """
        if not isinstance(sha256, str) or not _HEX64.match(sha256):
            return None
        with self._lock:
            for entry in self._entries.values():
                if entry.manifest.sha256 == sha256:
                    return entry.image_path
        return None

    # --- changes -------------------------------------------------------------------------

    def _commit_image(self, verified: VerifiedManifest, image: Path, *, move: bool) -> Path:
        manifest = verified.manifest
        final = self._images / f"{manifest.sha256}.bin"
        if image.resolve() == final.resolve():
            Verifier.verify_image_file(verified, final)
            return final  # the caller handed back the stored file itself
        with contextlib.suppress(FileNotFoundError, ChunkMismatch):
            # Reuse a stored copy only if its bytes still match: a rotten file on BMC
            # storage must be replaced by the fresh verified one, not trusted by its size.
            Verifier.verify_image_file(verified, final)
            if move:
                image.unlink(missing_ok=True)
            return final  # same content already stored: idempotent
        tmp = _temp_in(self._images, manifest.sha256)
        try:
            moved = False
            if move:
                try:
                    os.replace(image, tmp)
                    moved = True
                except OSError:  # another filesystem: fall back to copying
                    moved = False
            if not moved:
                with open(image, "rb") as src, open(tmp, "wb") as dst:
                    while block := src.read(_COPY_BLOCK):
                        dst.write(block)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            # The bytes under the final name are the bytes checked here, whatever the
            # caller's file does afterwards.
            Verifier.verify_image_file(verified, tmp)
            commit_file(tmp, final)
            if move and not moved:
                image.unlink(missing_ok=True)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return final

    def _commit_manifest(self, verified: VerifiedManifest) -> None:
        final = self._manifests / f"{verified.digest}.json"
        if final.exists():
            return
        atomic_write(final, verified.signed.raw)

    def put(self, verified: VerifiedManifest, image: Path, *, move: bool = True) -> StoredImage:
        """Store a verified manifest and its staged image; idempotent for the same content.

        The image is re-checked against the manifest (size and SHA-256) under its
        temporary name before it gets its final one: ChunkMismatch if it differs,
        and nothing is stored. ``move`` hands the file over (renamed when on the same
        filesystem, else copied and removed; a moved file that fails the check is
        deleted). Raises OSError on storage failures.
        """
        if verified.manifest.size > self._max_image_size:
            raise SizeLimitExceeded("image larger than this store accepts",
                                    size=verified.manifest.size, limit=self._max_image_size)
        image_final = self._commit_image(verified, image, move=move)
        self._commit_manifest(verified)
        entry = StoredImage(signed=verified.signed, image_path=image_final)
        with self._lock:
            self._entries = {**self._entries, verified.digest: entry}
        return entry

    def import_package(self, verifier: Verifier, path: Path) -> StoredImage:
        """Import a package file for donation: ``verify_for_donation`` (bounded, signed by a
        trusted key), then copy the image in chunk by chunk with every chunk and the whole
        image verified. Raises the TrustError of the failed check; stores nothing then."""
        reader = open_package(path, max_manifest_bytes=self._max_manifest_bytes,
                              max_image_size=self._max_image_size)
        verified = verifier.verify_for_donation(reader.signed)
        existing = self.get(verified.digest)
        if existing is not None:
            return existing
        tmp = _temp_in(self._images, verified.manifest.sha256)
        try:
            extract_verified(reader, verified, tmp)
            return self.put(verified, tmp, move=True)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def export_package(self, digest: str, out: Path) -> None:
        """Write the stored package ``digest`` as a ``.fwpkg`` at ``out`` (atomically).

        Raises StoreError for an unknown digest, PackageError if the stored image no
        longer matches its manifest while it is copied.
        """
        entry = self.get(digest)
        if entry is None:
            raise StoreError("no stored package with this digest", digest=str(digest)[:80])
        try:
            write_package(out, entry.signed.raw, entry.image_path,
                          expected_sha256=entry.manifest.sha256)
        except PackageError as e:
            raise PackageError("stored image no longer matches its manifest",
                               digest=digest) from e

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, str) and self.get(digest) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
