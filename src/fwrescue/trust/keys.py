"""Ed25519 signing keys and the agent's trust store.

Key files are PEM: ``NAME.key`` (PKCS#8 private key, mode 0600) and ``NAME.pub``
(SubjectPublicKeyInfo). A key id is the first 32 hex digits of the SHA-256 of the
raw 32-byte public key, so the same key always has the same id wherever it lives.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fwrescue.errors import ConfigError, SignatureError
from fwrescue.trust.manifest import Manifest, SignedManifest, canonical_json

__all__ = ["SigningKey", "TrustStore", "generate_keypair", "key_id_of"]

# A PEM Ed25519 key is about 120 bytes; anything far larger is not a key file.
_MAX_KEY_FILE = 16 * 1024


def manifest_signed_bytes(manifest: Manifest) -> bytes:
    return canonical_json(manifest.to_dict())


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def _read_key_file(path: Path) -> bytes:
    try:
        if path.stat().st_size > _MAX_KEY_FILE:
            raise ConfigError("key file too large", path=str(path))
        return path.read_bytes()
    except OSError as e:
        raise ConfigError("cannot read key file", path=str(path), detail=str(e)) from e


@dataclass(frozen=True)
class SigningKey:
    """A private key that signs manifests."""

    private_key: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id_of(self.private_key.public_key())

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def sign_manifest(self, manifest: Manifest) -> SignedManifest:
        """Sign ``manifest`` (whose key_id must be this key's) into an envelope."""
        if manifest.key_id != self.key_id:
            raise ConfigError("manifest names another key", key_id=manifest.key_id)
        signed_bytes = manifest_signed_bytes(manifest)
        raw = SignedManifest.envelope(manifest, self.sign(signed_bytes))
        return SignedManifest.parse(raw)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Load a PEM private key; ConfigError if unreadable or not Ed25519."""
        try:
            key = serialization.load_pem_private_key(_read_key_file(path), password=None)
        except (ValueError, TypeError) as e:
            raise ConfigError("not a PEM private key", path=str(path), detail=str(e)) from e
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError("signing key must be Ed25519", path=str(path))
        return cls(key)


def generate_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (0600) and ``NAME.pub`` into ``directory``; refuse to overwrite."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    if private_path.exists() or public_path.exists():
        raise ConfigError("key files already exist", path=str(private_path))
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


class TrustStore:
    """The public keys an agent trusts, by key id. Immutable after construction."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> TrustStore:
        """Load PEM public keys (a directory is scanned for ``*.pub``); ConfigError on junk."""
        keys: dict[str, Ed25519PublicKey] = {}
        for path in paths:
            files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
            for file in files:
                try:
                    key = serialization.load_pem_public_key(_read_key_file(file))
                except (ValueError, TypeError) as e:
                    raise ConfigError("not a PEM public key", path=str(file)) from e
                if not isinstance(key, Ed25519PublicKey):
                    raise ConfigError("trusted keys must be Ed25519", path=str(file))
                keys[key_id_of(key)] = key
        return cls(keys)

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, key_id: str, signature: bytes, data: bytes) -> None:
        """Raise SignatureError unless ``signature`` over ``data`` is valid for a trusted key."""
        key = self._keys.get(key_id)
        if key is None:
            raise SignatureError("manifest signed by an untrusted key", key_id=key_id)
        try:
            key.verify(signature, data)
        except InvalidSignature as e:
            raise SignatureError("manifest signature does not verify", key_id=key_id) from e
