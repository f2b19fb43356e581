"""Staging on BMC storage: a partial image file plus a persisted map of verified chunks.

For an image ``S`` (its SHA-256) the staging directory holds:

``S.part``
    The image being assembled, preallocated to its full size (``posix_fallocate`` so a
    full disk fails before the first byte is fetched). Chunks are written with
    ``pwrite`` at their offsets; only bytes that passed ``Verifier.verify_chunk``.
``S.map``
    A fixed 512-byte JSON header naming the layout (sha256, size, chunk size, digest
    of the signed chunk list), created atomically (temp, fsync, rename, fsync dir),
    followed by one *state byte per chunk*: 0 never fetched, 1 bytes received but not
    verified, 2 verified. A state change is a single-byte ``pwrite``, which cannot
    tear, so the map survives an agent crash at any instant without a rename per chunk.
``S.img``
    The finalized image, after the whole file matched the manifest.

Whole-image check: :meth:`StagedImage.digest_ahead` extends a running SHA-256 over the
*verified prefix* of the part file (chunks ``0..k`` all verified), reading it back into
one reused 256 KiB buffer; the fetcher runs it in the same worker-thread job as each
sync, so by the end of a transfer most of the image is hashed already, off the event
loop. Opening a staging feeds the prefix it re-verifies into the same digest.
:meth:`finalize` hashes only what is left and hands the digest to
``Verifier.verify_image_digest``. The bytes hashed are the file's bytes, as a one-pass
``verify_image_file`` would read them, only earlier: verified chunks are never
rewritten, so a hashed prefix stays what it was unless something outside this class
alters the file (the flash path re-checks the image it writes anyway).

Durability: :meth:`StagedImage.sync` ``fdatasync``\\ s the data file *then* the map; the
fetcher runs it in a worker thread whenever ``sync_due`` (every ``sync_bytes`` of newly
verified data) so the network never waits on the disk, and :meth:`finalize` runs it
before the whole-image check. A power cut can
still persist a map byte before its data; therefore :meth:`StagingArea.open`
re-verifies every chunk the map claims (one read of the staged bytes, bounded by a
chunk buffer) and demotes any that fail. A resumed transfer fetches only what is
missing and never trusts a stale map.

One agent process owns a staging directory; within it a StagingArea refuses to open
the same image twice at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Protocol

from fwrescue.atomicfile import atomic_write, commit_file
from fwrescue.errors import ChunkMismatch, LocalError
from fwrescue.transfer.havemap import encode_have_map
from fwrescue.trust.digests import image_hasher
from fwrescue.trust.verifier import VerifiedManifest, Verifier

__all__ = [
    "DEFAULT_SYNC_BYTES",
    "ImageVerifier",
    "StagedImage",
    "StagingArea",
    "StagingError",
]

_HEADER = 512
_FORMAT = 1
_UNTOUCHED, _RECEIVED, _VERIFIED = 0, 1, 2
# 8 MiB between fdatasyncs: a power cut costs at most that much refetching, and a
# 32 MiB image takes four syncs rather than one per chunk.
DEFAULT_SYNC_BYTES = 8 * 1024 * 1024
# Read-back block for the whole-image digest: few thread hand-offs, memory like one
# socket read block.
_DIGEST_BLOCK = 256 * 1024


class StagingError(LocalError):
    """Staging storage failed or was misused (disk full, I/O error, image in use)."""

    message_id = "Update.1.3.TransferFailed"


class ImageVerifier(Protocol):
    """What finalize needs from the trust module (``Verifier`` or an instance of it)."""

    def verify_image_file(self, verified: VerifiedManifest, path: Path) -> None: ...

    def verify_image_digest(self, verified: VerifiedManifest, sha256_hex: str,
                            size: int) -> None: ...


def _chunks_digest(verified: VerifiedManifest) -> str:
    return hashlib.sha256(",".join(verified.manifest.chunks).encode()).hexdigest()


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError("pwrite wrote nothing")
        view, offset = view[written:], offset + written


class StagingArea:
    """A directory of staged images, addressed by image SHA-256."""

    def __init__(self, directory: Path, *, sync_bytes: int = DEFAULT_SYNC_BYTES) -> None:
        self.directory = directory
        self._sync_bytes = sync_bytes
        self._open: set[str] = set()

    def open(self, verified: VerifiedManifest) -> StagedImage:
        """Open (resume) or create the staging for ``verified``'s image.

        A leftover map for another layout of the same image is discarded. Chunks the
        map claims are re-verified and demoted when they fail. Raises StagingError on
        I/O failure or when this image is already open here.
        """
        sha = verified.manifest.sha256
        if sha in self._open:
            raise StagingError("image is already being staged", sha256=sha)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            image = StagedImage(self, verified, self._sync_bytes)
        except OSError as e:
            raise StagingError("cannot open staging", sha256=sha, detail=str(e)) from e
        self._open.add(sha)
        return image

    def _closed(self, sha256: str) -> None:
        self._open.discard(sha256)


class StagedImage:
    """One image being assembled. Build through :meth:`StagingArea.open`."""

    def __init__(self, area: StagingArea, verified: VerifiedManifest, sync_bytes: int) -> None:
        manifest = verified.manifest
        self._area = area
        self.verified = verified
        self.sha256 = manifest.sha256
        self.size = manifest.size
        self.chunk_count = manifest.chunk_count
        self.part_path = area.directory / f"{self.sha256}.part"
        self.map_path = area.directory / f"{self.sha256}.map"
        self.final_path = area.directory / f"{self.sha256}.img"
        self._sync_bytes = sync_bytes
        self._unsynced = 0
        self._written: set[int] = set()
        self._closed = False
        # The SHA-256 of the part file's first ``_digested`` bytes, always a prefix of
        # verified chunks. The lock also keeps close() from pulling fds from under a
        # worker thread that syncs or hashes.
        self._digest = image_hasher()
        self._digested = 0
        self._io_lock = threading.Lock()
        self._header = self._make_header(verified)
        self._state = self._load_state()
        if self._state is None:
            self._create()
            self._state = bytearray(self.chunk_count)
        self._part_fd = os.open(self.part_path, os.O_RDWR)
        try:
            self._map_fd = os.open(self.map_path, os.O_RDWR)
        except OSError:
            os.close(self._part_fd)
            raise
        try:
            self._recheck()
        except BaseException:
            os.close(self._part_fd)
            os.close(self._map_fd)
            raise

    # --- setup ----------------------------------------------------------------------------

    def _make_header(self, verified: VerifiedManifest) -> bytes:
        m = verified.manifest
        doc = {"format": _FORMAT, "sha256": m.sha256, "size": m.size,
               "chunk_size": m.chunk_size, "chunks": m.chunk_count,
               "chunks_digest": _chunks_digest(verified)}
        raw = json.dumps(doc, sort_keys=True).encode()
        return raw + b"\n" + b" " * (_HEADER - len(raw) - 1)

    def _load_state(self) -> bytearray | None:
        """The persisted chunk states, or None when there is no usable staging."""
        try:
            with open(self.map_path, "rb") as f:
                header = f.read(_HEADER)
                state = bytearray(f.read(self.chunk_count + 1))
            part_size = self.part_path.stat().st_size
        except FileNotFoundError:
            return None
        if (header != self._header or len(state) != self.chunk_count
                or part_size != self.size or any(b > _VERIFIED for b in state)):
            return None  # another layout, a torn header or junk: start over
        return state

    def _create(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.map_path.unlink()
        fd = os.open(self.part_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, self.size)
            except OSError as e:
                if e.errno not in (95, 22):  # EOPNOTSUPP / EINVAL: filesystem can't; truncate
                    raise
                os.ftruncate(fd, self.size)
            os.fsync(fd)
        finally:
            os.close(fd)
        atomic_write(self.map_path, self._header + bytes(self.chunk_count), mode=0o600)

    @property
    def area_dir(self) -> Path:
        return self._area.directory

    def _recheck(self) -> None:
        """Demote map-claimed chunks whose bytes do not verify (power cut before sync);
        the verified prefix feeds the whole-image digest on the way."""
        prefix = True
        for index, state in enumerate(self._state or b""):
            if state != _VERIFIED:
                prefix = False
                continue
            data = self.read_chunk(index)
            try:
                Verifier.verify_chunk(self.verified, index, data)
            except ChunkMismatch:
                self._set(index, _RECEIVED)
                prefix = False
                continue
            if prefix:
                self._digest.update(data)
                self._digested += len(data)

    # --- queries ----------------------------------------------------------------------------

    def missing(self) -> list[int]:
        """Indices of chunks not yet verified, ascending."""
        return [i for i, s in enumerate(self._st) if s != _VERIFIED]

    def complete(self) -> bool:
        return min(self._st, default=_VERIFIED) == _VERIFIED

    @property
    def verified_count(self) -> int:
        return self._st.count(_VERIFIED)

    @property
    def verified_bytes(self) -> int:
        m = self.verified.manifest
        return sum(m.chunk_span(i)[1] for i, s in enumerate(self._st) if s == _VERIFIED)

    def have_bitmap(self) -> bytes:
        """The have-map: one bit per chunk, most significant bit first, set iff verified
        here (what ``GET /chunks/<sha256>`` serves; see docs/fleet-seams.md)."""
        return encode_have_map((i for i, s in enumerate(self._st) if s == _VERIFIED),
                               self.chunk_count)

    def verified_chunks(self) -> list[int]:
        """Indices of the chunks verified here, ascending."""
        return [i for i, s in enumerate(self._st) if s == _VERIFIED]

    def is_verified(self, index: int) -> bool:
        return self._st[self._check_index(index)] == _VERIFIED

    def covers(self, first_byte: int, last_byte: int) -> bool:
        """Whether every chunk that bytes ``first_byte..last_byte`` (inclusive) touch is
        verified here: the only ranges a partial donor may serve onward."""
        if not 0 <= first_byte <= last_byte < self.size:
            return False
        chunk_size = self.verified.manifest.chunk_size
        state = self._st
        return all(state[i] == _VERIFIED
                   for i in range(first_byte // chunk_size, last_byte // chunk_size + 1))

    def was_fetched(self, index: int) -> bool:
        """Whether bytes of chunk ``index`` arrived before without it being verified."""
        return self._st[self._check_index(index)] == _RECEIVED

    @property
    def _st(self) -> bytearray:
        if self._closed or self._state is None:
            raise StagingError("staged image is closed", sha256=self.sha256)
        return self._state

    def _check_index(self, index: int) -> int:
        if not 0 <= index < self.chunk_count:
            raise StagingError("chunk index out of range", index=index,
                               chunks=self.chunk_count)
        return index

    # --- mutation ---------------------------------------------------------------------------

    def begin_chunk(self, index: int) -> bool:
        """Record that bytes of chunk ``index`` are arriving; return whether it had been
        fetched before in this staging's life (a refetch)."""
        before = self._st[self._check_index(index)]
        if before == _VERIFIED:
            raise StagingError("chunk is already verified", index=index)
        if before == _UNTOUCHED:
            self._set(index, _RECEIVED)
        return before == _RECEIVED

    def write_chunk(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """``pwrite`` a chunk the caller has verified at its offset; StagingError on I/O
        failure or a wrong length. Does not mark it verified."""
        offset, length = self.verified.manifest.chunk_span(self._check_index(index))
        if len(data) != length:
            raise StagingError("chunk has the wrong length", index=index,
                               expected=length, actual=len(data))
        if self._st[index] == _VERIFIED:
            raise StagingError("chunk is already verified", index=index)
        try:
            _pwrite_all(self._part_fd, data, offset)
        except OSError as e:
            raise StagingError("cannot write staged chunk", index=index, detail=str(e)) from e
        self._written.add(index)

    def mark_verified(self, index: int) -> None:
        """Mark a chunk written in this session as verified (see ``sync_due``)."""
        if self._check_index(index) not in self._written:
            raise StagingError("only a chunk written in this session can be marked",
                               index=index)
        self._set(index, _VERIFIED)
        self._unsynced += self.verified.manifest.chunk_span(index)[1]

    @property
    def sync_due(self) -> bool:
        """Whether ``sync_bytes`` of verified data were marked since the last sync."""
        return self._unsynced >= self._sync_bytes

    def read_chunk(self, index: int) -> bytes:
        offset, length = self.verified.manifest.chunk_span(self._check_index(index))
        try:
            return os.pread(self._part_fd, length, offset)
        except OSError as e:
            raise StagingError("cannot read staged chunk", index=index, detail=str(e)) from e

    def sync(self) -> None:
        """Make verified data durable, data before map; StagingError on I/O failure.

        Safe to run in a worker thread while the owner keeps writing chunks: it makes
        durable at least what was written before it started.
        """
        self._unsynced = 0
        with self._io_lock:
            self._check_open()
            try:
                os.fdatasync(self._part_fd)
                os.fdatasync(self._map_fd)
            except OSError as e:
                raise StagingError("cannot sync staging", detail=str(e)) from e

    def digest_ahead(self) -> int:
        """Extend the whole-image SHA-256 over the verified prefix of the part file and
        return how many bytes it now covers; StagingError on I/O failure or a short file.

        Safe to run in a worker thread while the owner keeps writing and marking other
        chunks: a verified chunk is never rewritten, and a chunk is marked only after
        its bytes were written.
        """
        with self._io_lock:
            state = self._st
            chunk_size = self.verified.manifest.chunk_size
            index = self._digested // chunk_size
            while index < self.chunk_count and state[index] == _VERIFIED:
                index += 1
            end = self.size if index == self.chunk_count else index * chunk_size
            position = self._digested
            if position == end:
                return position
            buffer = memoryview(bytearray(min(_DIGEST_BLOCK, end - position)))
            try:
                while position < end:
                    count = os.preadv(self._part_fd, [buffer[:end - position]], position)
                    if count <= 0:
                        raise StagingError("staged file is shorter than the image",
                                           offset=position)
                    self._digest.update(buffer[:count])
                    position += count
            except OSError as e:
                raise StagingError("cannot read staged image", detail=str(e)) from e
            finally:
                self._digested = position
            return position

    def _check_open(self) -> None:
        if self._closed:
            raise StagingError("staged image is closed", sha256=self.sha256)

    def _set(self, index: int, state: int) -> None:
        try:
            _pwrite_all(self._map_fd, bytes((state,)), _HEADER + index)
        except OSError as e:
            raise StagingError("cannot update staging map", index=index, detail=str(e)) from e
        self._st[index] = state

    # --- end of life ------------------------------------------------------------------------

    def finalize(self, verifier: ImageVerifier, verified: VerifiedManifest) -> Path:
        """Verify the whole staged file and move it to ``S.img``; return that path.

        The check is ``verifier.verify_image_digest`` on the running digest, once
        :meth:`digest_ahead` has hashed what is left; a part file whose size changed
        goes to the one-pass ``verifier.verify_image_file`` instead. Raises StagingError
        if incomplete or ``verified`` names another image, and ChunkMismatch (after
        deleting the part file and map) if the file does not match.
        """
        if verified.manifest.sha256 != self.sha256 or verified.manifest.size != self.size:
            raise StagingError("manifest names another image", sha256=self.sha256)
        if not self.complete():
            raise StagingError("staged image is incomplete",
                               missing=len(self.missing()))
        self.sync()
        try:
            resized = os.fstat(self._part_fd).st_size != self.size
        except OSError as e:
            raise StagingError("cannot stat staged image", detail=str(e)) from e
        try:
            if resized:  # not the file it was made as: the one-pass check says how
                verifier.verify_image_file(verified, self.part_path)
            covered = self.digest_ahead()
            verifier.verify_image_digest(verified, self._digest.hexdigest(), covered)
        except ChunkMismatch:
            self.discard()
            raise
        try:
            commit_file(self.part_path, self.final_path)
            self.map_path.unlink()
        except OSError as e:
            raise StagingError("cannot finalize staged image", detail=str(e)) from e
        finally:
            self.close()
        return self.final_path

    def discard(self) -> None:
        """Close and delete the part file and the map."""
        self.close()
        for path in (self.part_path, self.map_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def close(self) -> None:
        """Release file descriptors; the staging stays on disk for a later resume."""
        with self._io_lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self._part_fd, self._map_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._area._closed(self.sha256)

    def __enter__(self) -> StagedImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
