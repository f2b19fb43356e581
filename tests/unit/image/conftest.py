"""Fixtures for image tests: a release key, a trusting verifier, an image and its package."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from fwrescue.image.package import build_package
from fwrescue.trust.keys import SigningKey, TrustStore, generate_keypair
from fwrescue.trust.rollback import RollbackStore
from fwrescue.trust.verifier import Verifier

# 3 full 64 KiB chunks and a short one: exercises the last-chunk arithmetic.
IMAGE_SIZE = 3 * 64 * 1024 + 1234


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    generate_keypair(directory, "release")
    return directory


@pytest.fixture
def signing_key(keys_dir: Path) -> SigningKey:
    return SigningKey.load(keys_dir / "release.key")


@pytest.fixture
def verifier(tmp_path: Path, keys_dir: Path) -> Verifier:
    return Verifier(TrustStore.from_files([keys_dir / "release.pub"]),
                    RollbackStore(tmp_path / "floors.json"))


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "bios.bin"
    path.write_bytes(random.Random(7).randbytes(IMAGE_SIZE))
    return path


PackageFactory = Callable[..., Path]


@pytest.fixture
def make_package(tmp_path: Path, image_file: Path, signing_key: SigningKey) -> PackageFactory:
    def make(name: str = "bios.fwpkg", *, image: Path | None = None,
             key: SigningKey | None = None, machines: tuple[str, ...] = ("board-a",),
             version: str = "1.2.0", security_version: int = 3,
             target: str = "bios") -> Path:
        out = tmp_path / name
        build_package(image or image_file, out, key=key or signing_key, target=target,
                      machine_names=machines, version=version,
                      security_version=security_version)
        return out

    return make


@pytest.fixture
def package(make_package: PackageFactory) -> Path:
    return make_package()
