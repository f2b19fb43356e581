"""Image packages (``*.fwpkg``): build, read strictly, and stage through the Verifier.

A package is an *uncompressed* POSIX ustar archive with exactly two regular members,
in this order::

    manifest.json   the signed manifest envelope (see fwrescue.trust.manifest)
    image.bin       the raw firmware image

followed by the end-of-archive zero blocks. Uncompressed, so a reader streams the
image straight from ``image_offset`` and a donor can serve byte ranges of it.

The reader parses the 512-byte ustar headers itself instead of using :mod:`tarfile`,
because ``tarfile`` reads pax and GNU long-name headers into memory before it hands
a member back, and accepts links, directories and many other member types. Here,
anything but the two expected regular members in order is a :class:`PackageError`,
and every size is checked against its limit before a byte of the member is read.

This module makes no trust decision: :func:`stage_package` calls the
:class:`~fwrescue.trust.verifier.Verifier` for every check.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fwrescue.atomicfile import atomic_replace, commit_file
from fwrescue.errors import ConfigError, PackageError, SizeLimitExceeded
from fwrescue.trust.digests import digests_match
from fwrescue.trust.keys import SigningKey
from fwrescue.trust.manifest import MAX_IMAGE_SIZE, MAX_MANIFEST_BYTES, Manifest, SignedManifest
from fwrescue.trust.verifier import VerifiedManifest, Verifier

__all__ = [
    "IMAGE_MEMBER",
    "MANIFEST_MEMBER",
    "PACKAGE_SUFFIX",
    "PackageLayout",
    "PackageReader",
    "PackageTooLarge",
    "build_package",
    "describe",
    "extract_verified",
    "open_package",
    "read_package_layout",
    "stage_package",
    "write_package",
]

PACKAGE_SUFFIX = ".fwpkg"
MANIFEST_MEMBER = "manifest.json"
IMAGE_MEMBER = "image.bin"

_BLOCK = 512
# tarfile pads an archive to a 10 KiB record; 64 KiB of zero trailer is generous for
# any writer and small enough to read and check in one go.
_MAX_TRAILER = 64 * 1024
_COPY_BLOCK = 1024 * 1024



class PackageTooLarge(PackageError, SizeLimitExceeded):
    """A package member is larger than its limit (checked before it is read)."""


_TYPE_NAMES = {
    b"1": "hard link", b"2": "symbolic link", b"3": "character device",
    b"4": "block device", b"5": "directory", b"6": "FIFO", b"7": "contiguous file",
    b"x": "pax extended header", b"g": "pax global header",
    b"L": "GNU long name", b"K": "GNU long link name",
}


_LOW_BYTES = bytes(range(0x80))


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


# --- writing -------------------------------------------------------------------------------


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0  # reproducible: the same image and manifest give the same package bytes
    info.type = tarfile.REGTYPE
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="ascii", errors="strict")


def write_package(out: Path, manifest_raw: bytes, image: Path, *,
                  expected_sha256: str | None = None) -> None:
    """Write ``manifest_raw`` and the file ``image`` as a package at ``out``, atomically.

    The archive goes to a temporary file beside ``out`` and is renamed into place after
    an fsync, so ``out`` is either absent/old or complete. When ``expected_sha256`` is
    given, the image is hashed again while it is copied and a difference (the file
    changed under us) raises :class:`PackageError` and leaves ``out`` untouched.
    Raises OSError when the image cannot be read or ``out`` cannot be written.
    """
    size = image.stat().st_size
    with atomic_replace(out) as f:
        f.write(_header(MANIFEST_MEMBER, len(manifest_raw)))
        f.write(manifest_raw)
        f.write(b"\0" * (_padded(len(manifest_raw)) - len(manifest_raw)))
        f.write(_header(IMAGE_MEMBER, size))
        digest = hashlib.sha256()
        copied = 0
        with open(image, "rb") as src:
            while copied < size:
                block = src.read(min(_COPY_BLOCK, size - copied))
                if not block:
                    raise PackageError("image shrank while packaging", path=str(image))
                digest.update(block)
                f.write(block)
                copied += len(block)
            if src.read(1):
                raise PackageError("image grew while packaging", path=str(image))
        if expected_sha256 is not None and not digests_match(digest.hexdigest(), expected_sha256):
            raise PackageError("image changed while packaging", path=str(image))
        f.write(b"\0" * (_padded(size) - size + 2 * _BLOCK))  # padding + end of archive


def _hash_image(image: Path, chunk_size: int, max_image_size: int) -> tuple[int, str, list[str]]:
    size = image.stat().st_size
    if size <= 0:
        raise ConfigError("image file is empty", path=str(image))
    if size > max_image_size:
        raise SizeLimitExceeded("image file too large", size=size, limit=max_image_size)
    whole = hashlib.sha256()
    chunks: list[str] = []
    total = 0
    with open(image, "rb") as f:
        while block := f.read(chunk_size):
            whole.update(block)
            chunks.append(hashlib.sha256(block).hexdigest())
            total += len(block)
            if total > size:
                raise PackageError("image grew while hashing", path=str(image))
    if total != size:
        raise PackageError("image changed size while hashing", path=str(image))
    return size, whole.hexdigest(), chunks


def build_package(
    image: Path,
    out: Path,
    *,
    key: SigningKey,
    target: str,
    machine_names: Sequence[str],
    version: str,
    security_version: int,
    chunk_size: int = 64 * 1024,
    description: str = "",
    extra: dict[str, str] | None = None,
) -> SignedManifest:
    """Hash ``image`` (whole and per chunk, streamed), sign a manifest and write ``out``.

    Raises ManifestError/SizeLimitExceeded for field values the manifest refuses,
    ConfigError for an empty image, PackageError if the image changes meanwhile, and
    OSError for unreadable or unwritable files. ``out`` is written atomically.
    """
    if not (isinstance(chunk_size, int) and chunk_size > 0):
        raise ConfigError("chunk size must be a positive integer", chunk_size=chunk_size)
    size, sha256, chunks = _hash_image(image, chunk_size, MAX_IMAGE_SIZE)
    manifest = Manifest(
        target=target, machine_names=tuple(machine_names), version=version,
        security_version=security_version, size=size, sha256=sha256, chunk_size=chunk_size,
        chunks=tuple(chunks), key_id=key.key_id, description=description,
        extra=dict(extra or {}),
    )
    signed = key.sign_manifest(manifest)
    write_package(out, signed.raw, image, expected_sha256=sha256)
    return signed


# --- reading -------------------------------------------------------------------------------


def _octal(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:
        raise PackageError("base-256 numeric field in tar header", field=what)
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return 0
    try:
        if not all(0x30 <= c <= 0x37 for c in text):
            raise ValueError(text)
        return int(text, 8)
    except ValueError as e:
        raise PackageError("malformed numeric field in tar header", field=what) from e


def _parse_header(block: bytes, expected: str, position: int) -> int:
    """Check one ustar header for the member ``expected``; return its size."""
    if len(block) < _BLOCK:
        raise PackageError("package truncated inside a tar header", member=expected)
    if block == b"\0" * _BLOCK:
        raise PackageError("package is missing a member", member=expected)
    stored = _octal(block[148:156], "checksum")
    rest = block[:148] + block[156:]
    unsigned = sum(rest) + 8 * 0x20
    # the signed-char sum some old tars wrote: each byte >= 0x80 counts 256 less
    signed = unsigned - 256 * len(rest.translate(None, _LOW_BYTES))
    if stored not in (unsigned, signed):
        raise PackageError("tar header checksum mismatch", member=expected, position=position)
    if block[257:263] != b"ustar\0" and block[257:265] != b"ustar  \0":
        raise PackageError("not a ustar archive", position=position)
    typeflag = block[156:157]
    if typeflag not in (b"0", b"\0"):
        kind = _TYPE_NAMES.get(typeflag, f"type {typeflag!r}")
        raise PackageError(f"package member is a {kind}, not a regular file",
                           position=position)
    try:
        name = block[0:100].split(b"\0", 1)[0].decode("ascii")
        prefix = block[345:500].split(b"\0", 1)[0].decode("ascii")
    except UnicodeDecodeError as e:
        raise PackageError("non-ASCII member name", position=position) from e
    full = f"{prefix}/{name}" if prefix else name
    if full.startswith("/"):
        raise PackageError("absolute member name", name=full)
    if ".." in full.split("/"):
        raise PackageError("member name contains '..'", name=full)
    if full != expected:
        raise PackageError("unexpected package member", name=full, expected=expected)
    return _octal(block[124:136], "size")


@dataclass(frozen=True)
class PackageReader:
    """A package whose layout and manifest shape were checked. *Not yet trusted.*

    The image is read lazily from ``path`` at ``image_offset``; nothing guarantees the
    bytes until the Verifier checked them (see :func:`extract_verified`).
    """

    path: Path
    manifest_raw: bytes
    signed: SignedManifest
    image_offset: int
    image_size: int

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest

    def iter_image(self, block: int = 64 * 1024) -> Iterator[bytes]:
        """Yield the image in blocks of ``block`` bytes (the last may be short).

        Raises PackageError when the file got shorter or cannot be read.
        """
        if block <= 0:
            raise ValueError("block must be positive")
        try:
            with open(self.path, "rb") as f:
                f.seek(self.image_offset)
                remaining = self.image_size
                while remaining > 0:
                    data = f.read(min(block, remaining))
                    if not data:
                        raise PackageError("package truncated inside the image",
                                           path=str(self.path), missing=remaining)
                    remaining -= len(data)
                    yield data
        except OSError as e:
            raise PackageError("cannot read package image", path=str(self.path),
                               detail=str(e)) from e


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise PackageError("package truncated", inside=what)
    return data


@dataclass(frozen=True)
class PackageLayout:
    """Where the members of a checked package lie, and its parsed (untrusted) manifest."""

    manifest_raw: bytes
    signed: SignedManifest
    image_offset: int
    image_size: int


def read_package_layout(
    f: BinaryIO,
    file_size: int,
    *,
    max_manifest_bytes: int = MAX_MANIFEST_BYTES,
    max_image_size: int = MAX_IMAGE_SIZE,
) -> PackageLayout:
    """Check the layout of the package in the seekable binary stream ``f`` (positioned at
    its start, ``file_size`` bytes long) and parse its manifest envelope (shape only).

    The one parser behind :func:`open_package`; also takes an ``io.BytesIO``. Raises
    what :func:`open_package` documents, except that OSError from ``f`` propagates.
    """
    manifest_size = _parse_header(f.read(_BLOCK), MANIFEST_MEMBER, 0)
    if manifest_size > max_manifest_bytes:
        raise PackageTooLarge("package manifest too large", size=manifest_size,
                              limit=max_manifest_bytes)
    if manifest_size == 0:
        raise PackageError("package manifest is empty")
    raw = _read_exact(f, manifest_size, MANIFEST_MEMBER)
    _read_exact(f, _padded(manifest_size) - manifest_size, MANIFEST_MEMBER)
    header_at = _BLOCK + _padded(manifest_size)
    image_size = _parse_header(f.read(_BLOCK), IMAGE_MEMBER, header_at)
    if image_size > max_image_size:
        raise PackageTooLarge("package image too large", size=image_size,
                              limit=max_image_size)
    image_offset = header_at + _BLOCK
    trailer_at = image_offset + _padded(image_size)
    trailer = file_size - trailer_at
    if trailer < 2 * _BLOCK:
        raise PackageError("package truncated", size=file_size,
                           expected_at_least=trailer_at + 2 * _BLOCK)
    if trailer > _MAX_TRAILER:
        raise PackageError("trailing data after the package members", bytes=trailer)
    f.seek(image_offset + image_size)
    tail = f.read(trailer_at - image_offset - image_size)
    if tail.count(0) != len(tail):
        raise PackageError("non-zero padding after the image")
    first = f.read(_BLOCK)
    if first != b"\0" * _BLOCK:
        raise PackageError("package has an extra member after image.bin")
    rest = f.read(_MAX_TRAILER)
    if rest.count(0) != len(rest):
        raise PackageError("trailing data after the package members")
    signed = SignedManifest.parse(raw, max_bytes=max_manifest_bytes)
    if signed.manifest.size != image_size:
        raise PackageError("image member size differs from the manifest", member=image_size,
                           manifest=signed.manifest.size)
    return PackageLayout(manifest_raw=raw, signed=signed, image_offset=image_offset,
                         image_size=image_size)


def open_package(
    path: Path,
    *,
    max_manifest_bytes: int = MAX_MANIFEST_BYTES,
    max_image_size: int = MAX_IMAGE_SIZE,
) -> PackageReader:
    """Open ``path`` strictly and parse its manifest envelope (shape only, no trust).

    Raises PackageError for any layout other than ``manifest.json`` then ``image.bin``
    as regular files followed by zero blocks (links, directories, extra members, bad
    names, truncation, trailing data); PackageTooLarge (a PackageError and a
    SizeLimitExceeded) when a member is larger than
    its limit (checked before reading it); ManifestError for a malformed envelope.
    The checks are :func:`read_package_layout`'s.
    """
    try:
        # O_NONBLOCK: a FIFO or device named *.fwpkg must not hang the reader.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise PackageError("package is not a regular file", path=str(path))
        with os.fdopen(fd, "rb") as f:
            layout = read_package_layout(f, st.st_size, max_manifest_bytes=max_manifest_bytes,
                                         max_image_size=max_image_size)
    except OSError as e:
        raise PackageError("cannot read package", path=str(path), detail=str(e)) from e
    return PackageReader(path=path, manifest_raw=layout.manifest_raw, signed=layout.signed,
                         image_offset=layout.image_offset, image_size=layout.image_size)


# --- verified copying ----------------------------------------------------------------------


def extract_verified(reader: PackageReader, verified: VerifiedManifest, dest: Path) -> None:
    """Copy the image to ``dest`` chunk by chunk, each checked by ``Verifier.verify_chunk``,
    then check the whole file with ``Verifier.verify_image_file``.

    Only one chunk is in memory at a time. On any failure ``dest`` is removed and the
    error re-raised (ChunkMismatch, PackageError, OSError).
    """
    if verified.signed.raw != reader.manifest_raw:
        raise PackageError("verified manifest does not belong to this package")
    try:
        with open(dest, "wb") as out:
            for index, chunk in enumerate(reader.iter_image(verified.manifest.chunk_size)):
                Verifier.verify_chunk(verified, index, chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        Verifier.verify_image_file(verified, dest)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def stage_package(
    verifier: Verifier,
    path: Path,
    *,
    target: str,
    machine_name: str,
    staging_dir: Path,
    max_manifest_bytes: int = MAX_MANIFEST_BYTES,
    max_image_size: int = MAX_IMAGE_SIZE,
) -> tuple[VerifiedManifest, Path]:
    """Open, verify (steps 1–6) and stage the image of the package at ``path``.

    Returns the verified manifest and ``staging_dir/<sha256>.bin``. Raises the
    TrustError subclass of the first failed check (PackageError, ManifestError,
    SignatureError, CompatibilityError, RollbackError, SizeLimitExceeded,
    ChunkMismatch); no partial file is left in ``staging_dir`` on failure.
    """
    reader = open_package(path, max_manifest_bytes=max_manifest_bytes,
                          max_image_size=max_image_size)
    verified = verifier.verify_signed(reader.signed, target=target, machine_name=machine_name)
    staging_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=staging_dir, prefix=".stage-", suffix=".partial")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        extract_verified(reader, verified, tmp)
        final = staging_dir / f"{verified.manifest.sha256}.bin"
        commit_file(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return verified, final


# --- inspection ----------------------------------------------------------------------------


def describe(signed: SignedManifest) -> dict[str, Any]:
    """A JSON-ready summary of a manifest: every field but the chunk list, plus the
    manifest digest and the chunk count. Describes; does not vouch for anything."""
    data = signed.manifest.to_dict()
    del data["chunks"]
    data["digest"] = signed.digest
    data["chunk_count"] = signed.manifest.chunk_count
    return data
