"""Import an OpenBMC-style BIOS tarball (``gen-bios-tar``) into a signed ``.fwpkg``.

The tarball (gzip'd or plain tar) holds ``MANIFEST`` (``key=value`` lines), one image
file, and when signed ``publickey`` plus a ``<file>.sig`` for every file, made with
``openssl dgst -sha256 -sign`` (RSA PKCS#1 v1.5 over SHA-256).

Mapping to the fwrescue manifest (see docs/package-format.md):

==============================  ==============================================
OpenBMC MANIFEST                fwrescue manifest
==============================  ==============================================
``purpose=…VersionPurpose.Host``  required; the component is ``target`` (``bios``)
``version=``                    ``version``
``MachineName=``                first of ``machine_names``
``CompatibleName=`` (repeated)  the following ``machine_names``
``ExtendedVersion=``            ``extra["openbmc.ExtendedVersion"]``
``KeyType=`` / ``HashType=``    checked, then kept in ``extra``
==============================  ==============================================

When ``trusted_rsa_keys`` is given, the tarball must be signed: its ``publickey`` must
equal the trusted key for its ``KeyType`` and every file's ``.sig`` must verify with
that key, as an OpenBMC BMC checks against ``/etc/activationdata/<KeyType>/``. With
``trusted_rsa_keys=None`` the OpenBMC signatures are not checked (the caller vouches
for the tarball by signing the resulting package with its own key).

Every read is bounded: member count, each member's size before it is read, and the
total decompressed bytes (against gzip and pax-header bombs).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, utils
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from fwrescue.errors import ConfigError, PackageError, SignatureError, SizeLimitExceeded
from fwrescue.image.package import PackageTooLarge, build_package
from fwrescue.trust.keys import SigningKey
from fwrescue.trust.manifest import MAX_IMAGE_SIZE, SignedManifest

__all__ = ["HOST_PURPOSE", "OpenBmcManifest", "import_openbmc", "import_openbmc_stream",
           "parse_openbmc_manifest"]

HOST_PURPOSE = "xyz.openbmc_project.Software.Version.VersionPurpose.Host"
_MAX_MEMBERS = 16  # MANIFEST, image, publickey and their .sig files, with room to spare
_MAX_MANIFEST = 64 * 1024
_MAX_PUBLICKEY = 16 * 1024  # a PEM RSA-4096 public key is under 1 KiB
_MAX_SIG = 4096  # an RSA-16384 signature is 2 KiB
_MAX_HEADER_OVERHEAD = 1024 * 1024  # tar headers and padding on top of the members
_COPY_BLOCK = 1024 * 1024
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


@dataclass(frozen=True)
class OpenBmcManifest:
    """The fields of an OpenBMC MANIFEST that the import uses."""

    purpose: str
    version: str
    machine_name: str
    compatible_names: tuple[str, ...] = ()
    extended_version: str = ""
    key_type: str = ""
    hash_type: str = ""
    other: dict[str, str] = field(default_factory=dict)


def parse_openbmc_manifest(data: bytes) -> OpenBmcManifest:
    """Parse MANIFEST ``key=value`` lines strictly; PackageError on anything malformed."""
    if len(data) > _MAX_MANIFEST:
        raise SizeLimitExceeded("OpenBMC MANIFEST too large", size=len(data),
                                limit=_MAX_MANIFEST)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PackageError("OpenBMC MANIFEST is not UTF-8") from e
    single: dict[str, str] = {}
    compatible: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise PackageError("OpenBMC MANIFEST line is not key=value", line=number)
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if key == "CompatibleName":
            compatible.append(value)
        elif key in single:
            raise PackageError("OpenBMC MANIFEST repeats a key", key=key)
        else:
            single[key] = value
    for required in ("purpose", "version", "MachineName"):
        if not single.get(required):
            raise PackageError("OpenBMC MANIFEST lacks a field", field=required)
    known = {"purpose", "version", "MachineName", "ExtendedVersion", "KeyType", "HashType"}
    return OpenBmcManifest(
        purpose=single["purpose"], version=single["version"],
        machine_name=single["MachineName"], compatible_names=tuple(compatible),
        extended_version=single.get("ExtendedVersion", ""),
        key_type=single.get("KeyType", ""), hash_type=single.get("HashType", ""),
        other={k: v for k, v in single.items() if k not in known},
    )


class _BoundedReader(io.RawIOBase):
    """A read-only stream that fails once more than ``limit`` bytes were read."""

    def __init__(self, inner: BinaryIO, limit: int) -> None:
        self._inner = inner
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(min(len(buffer), self._left + 1))
        if len(data) > self._left:
            raise PackageTooLarge("OpenBMC tarball decompresses to more than allowed")
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)


@dataclass
class _Extracted:
    small: dict[str, bytes] = field(default_factory=dict)
    image_name: str = ""
    image_path: Path | None = None


def _member_name(info: tarfile.TarInfo) -> str | None:
    """The flat name of a member, None for the top directory entry; PackageError else."""
    name = info.name[2:] if info.name.startswith("./") else info.name
    if info.isdir() and name in ("", ".", "./"):
        return None
    if not info.isreg():
        raise PackageError("OpenBMC tarball member is not a regular file", name=info.name[:128])
    if not _MEMBER_NAME.match(name):
        raise PackageError("OpenBMC tarball member name not allowed (flat names only)",
                           name=info.name[:128])
    return name


def _extract(raw: BinaryIO, workdir: Path, max_image_size: int) -> _Extracted:
    out = _Extracted()
    limit = max_image_size + _MAX_MEMBERS * (_MAX_MANIFEST + _MAX_SIG) + _MAX_HEADER_OVERHEAD
    magic = raw.read(2)
    raw.seek(0)
    inner: BinaryIO = (
        cast(BinaryIO, gzip.GzipFile(fileobj=raw)) if magic == b"\x1f\x8b" else raw)
    bounded = io.BufferedReader(_BoundedReader(inner, limit))
    with tarfile.open(fileobj=bounded, mode="r|") as archive:
        count = 0
        seen: set[str] = set()
        for info in archive:
            count += 1
            if count > _MAX_MEMBERS:
                raise PackageError("OpenBMC tarball has too many members",
                                   limit=_MAX_MEMBERS)
            name = _member_name(info)
            if name is None:
                continue
            if name in seen:
                raise PackageError("OpenBMC tarball repeats a member", name=name)
            seen.add(name)
            source = archive.extractfile(info)
            if source is None:  # pragma: no cover - isreg() was checked
                raise PackageError("OpenBMC tarball member unreadable", name=name)
            if name in ("MANIFEST", "publickey") or name.endswith(".sig"):
                bound = {"MANIFEST": _MAX_MANIFEST, "publickey": _MAX_PUBLICKEY}.get(
                    name, _MAX_SIG)
                if info.size > bound:
                    raise PackageTooLarge("OpenBMC tarball member too large",
                                            name=name, size=info.size, limit=bound)
                out.small[name] = source.read(info.size)
                continue
            if out.image_path is not None:
                raise PackageError("OpenBMC tarball holds more than one image",
                                   names=[out.image_name, name])
            if info.size > max_image_size:
                raise PackageTooLarge("OpenBMC image too large", size=info.size,
                                        limit=max_image_size)
            out.image_name = name
            out.image_path = workdir / "image.bin"
            with open(out.image_path, "wb") as dst:
                shutil.copyfileobj(source, dst, _COPY_BLOCK)
            if out.image_path.stat().st_size != info.size:
                raise PackageError("OpenBMC image truncated", name=name)
    return out


def _load_rsa(pem: bytes, what: str) -> RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise SignatureError(f"{what} is not a PEM public key") from e
    if not isinstance(key, RSAPublicKey):
        raise SignatureError(f"{what} is not an RSA public key")
    return key


def _spki(key: RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _sha256_path(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_COPY_BLOCK):
            digest.update(block)
    return digest.digest()


def _check_signatures(extracted: _Extracted, obmc: OpenBmcManifest,
                      trusted_rsa_keys: Mapping[str, Path]) -> None:
    small = extracted.small
    if not obmc.key_type or "publickey" not in small:
        raise SignatureError("OpenBMC tarball is not signed (no KeyType or publickey)")
    if obmc.hash_type != "RSA-SHA256":
        raise SignatureError("unsupported OpenBMC HashType", hash_type=obmc.hash_type[:64])
    trusted_path = trusted_rsa_keys.get(obmc.key_type)
    if trusted_path is None:
        raise SignatureError("no trusted key for this KeyType", key_type=obmc.key_type[:64])
    try:
        if trusted_path.stat().st_size > _MAX_PUBLICKEY:
            raise ConfigError("trusted RSA key file too large", path=str(trusted_path))
        trusted_pem = trusted_path.read_bytes()
    except OSError as e:
        raise ConfigError("cannot read trusted RSA key", path=str(trusted_path)) from e
    trusted = _load_rsa(trusted_pem, "trusted key")
    if _spki(_load_rsa(small["publickey"], "package publickey")) != _spki(trusted):
        raise SignatureError("package publickey is not the trusted key for its KeyType",
                             key_type=obmc.key_type[:64])
    if extracted.image_path is None:
        raise PackageError("OpenBMC tarball has no image file")
    digests = {"MANIFEST": hashlib.sha256(small["MANIFEST"]).digest(),
               "publickey": hashlib.sha256(small["publickey"]).digest(),
               extracted.image_name: _sha256_path(extracted.image_path)}
    sigs = {name[:-4]: data for name, data in small.items() if name.endswith(".sig")}
    stray = set(sigs) - set(digests)
    if stray:
        raise SignatureError("signature for a file that is not in the tarball",
                             names=sorted(stray))
    for name, digest in digests.items():
        signature = sigs.get(name)
        if signature is None:
            raise SignatureError("file has no signature", name=name)
        try:
            trusted.verify(signature, digest, padding.PKCS1v15(),
                           utils.Prehashed(hashes.SHA256()))
        except InvalidSignature as e:
            raise SignatureError("OpenBMC signature does not verify", name=name) from e


def import_openbmc(
    tar: Path,
    out: Path,
    *,
    key: SigningKey,
    security_version: int,
    trusted_rsa_keys: Mapping[str, Path] | None = None,
    target: str = "bios",
    chunk_size: int = 64 * 1024,
    max_image_size: int = MAX_IMAGE_SIZE,
    workdir: Path | None = None,
) -> SignedManifest:
    """Check an OpenBMC BIOS tarball and write it as a package signed by ``key``.

    Raises PackageError (malformed tarball or MANIFEST, wrong purpose),
    SizeLimitExceeded (too many or too large members), SignatureError (signatures
    required but missing, untrusted publickey, a .sig that does not verify),
    ManifestError (a value the fwrescue manifest refuses), ConfigError (unreadable
    trusted key). ``out`` is written only when every check passed.
    """
    try:
        raw = open(tar, "rb")  # noqa: SIM115 - closed below, after the import
    except OSError as e:
        raise PackageError("cannot read OpenBMC tarball", path=str(tar),
                           detail=str(e)[:200]) from e
    with raw:
        return import_openbmc_stream(
            raw, tar.name, out, key=key, security_version=security_version,
            trusted_rsa_keys=trusted_rsa_keys, target=target, chunk_size=chunk_size,
            max_image_size=max_image_size, workdir=workdir)


def import_openbmc_stream(
    raw: BinaryIO,
    name: str,
    out: Path,
    *,
    key: SigningKey,
    security_version: int,
    trusted_rsa_keys: Mapping[str, Path] | None = None,
    target: str = "bios",
    chunk_size: int = 64 * 1024,
    max_image_size: int = MAX_IMAGE_SIZE,
    workdir: Path | None = None,
) -> SignedManifest:
    """:func:`import_openbmc` of a tarball read from the seekable binary stream ``raw``
    (a file or an ``io.BytesIO``) called ``name`` (for the package description).

    The one import path (:func:`import_openbmc` opens the file and calls this); raises
    what :func:`import_openbmc` documents.
    """
    with tempfile.TemporaryDirectory(dir=workdir or out.parent, prefix=".obmc-") as tmp:
        try:
            extracted = _extract(raw, Path(tmp), max_image_size)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise PackageError("not a readable OpenBMC tarball", detail=str(e)[:200]) from e
        except OSError as e:
            raise PackageError("cannot read OpenBMC tarball", path=name,
                               detail=str(e)[:200]) from e
        if "MANIFEST" not in extracted.small:
            raise PackageError("OpenBMC tarball has no MANIFEST")
        if extracted.image_path is None:
            raise PackageError("OpenBMC tarball has no image file")
        obmc = parse_openbmc_manifest(extracted.small["MANIFEST"])
        if obmc.purpose != HOST_PURPOSE:
            raise PackageError("OpenBMC package is not a host (BIOS) image",
                               purpose=obmc.purpose[:128])
        if trusted_rsa_keys is not None:
            _check_signatures(extracted, obmc, trusted_rsa_keys)
        names = [obmc.machine_name]
        names += [n for n in obmc.compatible_names if n not in names]
        extra = {"openbmc.purpose": obmc.purpose,
                 "openbmc.signature": "verified" if trusted_rsa_keys is not None
                 else "not-checked"}
        if obmc.extended_version:
            extra["openbmc.ExtendedVersion"] = obmc.extended_version
        if obmc.key_type:
            extra["openbmc.KeyType"] = obmc.key_type
        signed = build_package(
            extracted.image_path, out, key=key, target=target, machine_names=names,
            version=obmc.version, security_version=security_version,
            chunk_size=chunk_size, description=f"imported from OpenBMC {name}"[:256],
            extra=extra,
        )
        return signed
