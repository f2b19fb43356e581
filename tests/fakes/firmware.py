"""Test builders: signing keys, signed manifests and verifiers in a temp folder."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from fwrescue.trust.keys import SigningKey, TrustStore, generate_keypair
from fwrescue.trust.manifest import Manifest, SignedManifest
from fwrescue.trust.rollback import RollbackStore
from fwrescue.trust.verifier import Verifier

CHUNK = 64 * 1024


@dataclass
class Firmware:
    image: bytes
    signed: SignedManifest

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest

    def write_image(self, path: Path) -> Path:
        path.write_bytes(self.image)
        return path


class Signer:
    """A release key in a temp folder that signs firmware images for tests."""

    def __init__(self, directory: Path, name: str = "release") -> None:
        self.directory = directory
        private, self.public = generate_keypair(directory, name)
        self.key = SigningKey.load(private)

    def firmware(self, *, size: int = 256 * 1024, target: str = "bios",
                 machines: tuple[str, ...] = ("board-a",), version: str = "1.0.0",
                 security_version: int = 1, image: bytes | None = None,
                 chunk_size: int = CHUNK) -> Firmware:
        data = image if image is not None else os.urandom(size)
        chunks = tuple(hashlib.sha256(data[i:i + chunk_size]).hexdigest()
                       for i in range(0, len(data), chunk_size))
        manifest = Manifest(target=target, machine_names=machines, version=version,
                            security_version=security_version, size=len(data),
                            sha256=hashlib.sha256(data).hexdigest(), chunk_size=chunk_size,
                            chunks=chunks, key_id=self.key.key_id)
        return Firmware(image=data, signed=self.key.sign_manifest(manifest))

    def verifier(self, state: Path) -> Verifier:
        return Verifier(TrustStore.from_files([self.public]), RollbackStore(state / "floor.json"))
