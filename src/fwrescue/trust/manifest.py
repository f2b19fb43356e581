"""The signed manifest: what a package claims about its image.

A manifest is a frozen, self-validating dataclass. Its wire form is a *signed
envelope*, canonical JSON (UTF-8, sorted keys, no spaces)::

    {"signed": {<manifest fields>}, "signature": {"keyid": "<hex>", "sig": "<base64>"}}

The signature is Ed25519 over ``canonical_json(signed)``. The envelope's SHA-256
is the manifest digest that offers name and that stores address it by.

Vocabulary follows OpenBMC's image MANIFEST: ``target`` is the component
(``bios``, ``cpld``, ``nic``…; OpenBMC's ``purpose``), ``machine_names`` are the
compatible boards (``MachineName``/``CompatibleName``).

This module only parses and checks *shape*. Whether a manifest is trusted is
decided in :mod:`fwrescue.trust.verifier`, nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from fwrescue.errors import ManifestError, SizeLimitExceeded

__all__ = [
    "MANIFEST_SCHEMA",
    "MAX_CHUNKS",
    "MAX_IMAGE_SIZE",
    "MAX_MANIFEST_BYTES",
    "Manifest",
    "SignedManifest",
    "canonical_json",
]

MANIFEST_SCHEMA = 1
# A 64 MiB SPI NOR is the largest BIOS part in current servers; a site may lower this.
MAX_IMAGE_SIZE = 64 * 1024 * 1024
# 16384 chunks x 67 bytes of hex + quotes: about 1.1 MiB of manifest at the worst.
MAX_CHUNKS = 16384
MAX_MANIFEST_BYTES = 2 * 1024 * 1024
MIN_CHUNK_SIZE = 4 * 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEYID = re.compile(r"^[0-9a-f]{16,64}$")


def canonical_json(value: Any) -> bytes:
    """The one byte encoding that is signed and hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _require(cond: bool, message: str, **fields: object) -> None:
    if not cond:
        raise ManifestError(message, **fields)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What the signer vouches for. Construction validates every field or raises ManifestError."""

    target: str
    machine_names: tuple[str, ...]
    version: str
    security_version: int
    size: int
    sha256: str
    chunk_size: int
    chunks: tuple[str, ...]
    key_id: str
    schema: int = MANIFEST_SCHEMA
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.schema == MANIFEST_SCHEMA, "unsupported manifest schema", schema=self.schema)
        _require(bool(_NAME.match(self.target)), "bad target name", target=self.target)
        _require(0 < len(self.machine_names) <= 32, "machine_names must list 1..32 boards")
        for name in self.machine_names:
            _require(isinstance(name, str) and bool(_NAME.match(name)), "bad machine name",
                     machine_name=name)
        _require(bool(_VERSION.match(self.version)), "bad version string", version=self.version)
        _require(isinstance(self.security_version, int) and not isinstance(
            self.security_version, bool) and 0 <= self.security_version < 2**32,
            "security_version must be an integer in [0, 2^32)")
        if not (isinstance(self.size, int) and 0 < self.size <= MAX_IMAGE_SIZE):
            raise SizeLimitExceeded("image size out of range", size=self.size,
                                    limit=MAX_IMAGE_SIZE)
        _require(bool(_HEX64.match(self.sha256)), "sha256 must be 64 lowercase hex digits")
        cs = self.chunk_size
        _require(isinstance(cs, int) and MIN_CHUNK_SIZE <= cs <= MAX_CHUNK_SIZE
                 and cs & (cs - 1) == 0, "chunk_size must be a power of two in [4 KiB, 4 MiB]",
                 chunk_size=cs)
        expected = -(-self.size // cs)
        _require(expected <= MAX_CHUNKS, "too many chunks", chunks=expected, limit=MAX_CHUNKS)
        _require(len(self.chunks) == expected, "chunk list does not cover the image",
                 chunks=len(self.chunks), expected=expected)
        for digest in self.chunks:
            _require(isinstance(digest, str) and bool(_HEX64.match(digest)),
                     "chunk digest must be 64 lowercase hex digits")
        _require(bool(_KEYID.match(self.key_id)), "bad key id", key_id=self.key_id)
        _require(len(self.description) <= 256, "description longer than 256 characters")
        _require(len(self.extra) <= 16 and all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 256
            for k, v in self.extra.items()), "extra must be at most 16 short string pairs")

    @property
    def chunk_count(self) -> int:
        return len(self.chunks)

    def chunk_span(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index``; the last chunk may be short."""
        if not 0 <= index < len(self.chunks):
            raise IndexError(index)
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    def fits(self, target: str, machine_name: str) -> bool:
        return self.target == target and machine_name in self.machine_names

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["machine_names"] = list(self.machine_names)
        data["chunks"] = list(self.chunks)
        return data

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        """Strictly decode: unknown keys, missing keys and wrong types raise ManifestError."""
        if not isinstance(data, dict):
            raise ManifestError("manifest must be a JSON object")
        known = {"schema", "target", "machine_names", "version", "security_version", "size",
                 "sha256", "chunk_size", "chunks", "key_id", "description", "extra"}
        unknown = set(data) - known
        _require(not unknown, "unknown manifest fields", fields=sorted(unknown))
        required = known - {"description", "extra", "schema"}
        missing = required - set(data)
        _require(not missing, "missing manifest fields", fields=sorted(missing))
        types: dict[str, type | tuple[type, ...]] = {
            "schema": int, "target": str, "machine_names": list, "version": str,
            "security_version": int, "size": int, "sha256": str, "chunk_size": int,
            "chunks": list, "key_id": str, "description": str, "extra": dict,
        }
        for key, value in data.items():
            _require(isinstance(value, types[key]) and not isinstance(value, bool),
                     "wrong type for manifest field", field=key)
        try:
            return cls(
                schema=data.get("schema", MANIFEST_SCHEMA),
                target=data["target"],
                machine_names=tuple(data["machine_names"]),
                version=data["version"],
                security_version=data["security_version"],
                size=data["size"],
                sha256=data["sha256"],
                chunk_size=data["chunk_size"],
                chunks=tuple(data["chunks"]),
                key_id=data["key_id"],
                description=data.get("description", ""),
                extra=dict(data.get("extra", {})),
            )
        except TypeError as e:  # a value of the wrong type deep inside
            raise ManifestError("malformed manifest", detail=str(e)) from e


@dataclass(frozen=True)
class SignedManifest:
    """A manifest with its signature, as received. *Not yet trusted.*

    ``raw`` is the envelope exactly as stored or received; ``digest`` is its SHA-256,
    the content address that offers and stores use.
    """

    manifest: Manifest
    key_id: str
    signature: bytes
    raw: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def signed_bytes(self) -> bytes:
        """The exact bytes the signature covers."""
        return canonical_json(self.manifest.to_dict())

    @classmethod
    def parse(cls, raw: bytes, *, max_bytes: int = MAX_MANIFEST_BYTES) -> SignedManifest:
        """Decode an envelope; raise ManifestError/SizeLimitExceeded on anything off-shape."""
        import base64
        import binascii

        if len(raw) > max_bytes:
            raise SizeLimitExceeded("manifest too large", size=len(raw), limit=max_bytes)
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            # RecursionError: nesting deeper than the decoder recurses (a hostile donor)
            raise ManifestError("manifest is not valid JSON", detail=str(e)[:200]) from e
        if not isinstance(doc, dict) or set(doc) != {"signed", "signature"}:
            raise ManifestError("envelope must have exactly 'signed' and 'signature'")
        sig = doc["signature"]
        if not isinstance(sig, dict) or set(sig) != {"keyid", "sig"}:
            raise ManifestError("signature must have exactly 'keyid' and 'sig'")
        if not isinstance(sig["keyid"], str) or not isinstance(sig["sig"], str):
            raise ManifestError("signature fields must be strings")
        try:
            signature = base64.b64decode(sig["sig"], validate=True)
        except (binascii.Error, ValueError) as e:
            raise ManifestError("signature is not base64", detail=str(e)) from e
        manifest = Manifest.from_dict(doc["signed"])
        if sig["keyid"] != manifest.key_id:
            raise ManifestError("envelope key id differs from the signed key id")
        return cls(manifest=manifest, key_id=sig["keyid"], signature=signature, raw=raw)

    @staticmethod
    def envelope(manifest: Manifest, signature: bytes) -> bytes:
        """Encode an envelope (used by the signer)."""
        import base64

        return canonical_json({
            "signed": manifest.to_dict(),
            "signature": {"keyid": manifest.key_id, "sig": base64.b64encode(signature).decode()},
        })
