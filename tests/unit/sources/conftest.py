"""Fixtures for source tests: a release key, a trusting verifier, packages, an event log."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from fwrescue.image.package import build_package
from fwrescue.trust.keys import SigningKey, TrustStore, generate_keypair
from fwrescue.trust.rollback import RollbackStore
from fwrescue.trust.verifier import Verifier


class EventLog:
    """Records ``log(event, **fields)`` calls."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def __call__(self, event: str, /, **fields: object) -> None:
        self.events.append((event, fields))

    def named(self, event: str) -> list[dict[str, object]]:
        return [fields for name, fields in self.events if name == event]


@pytest.fixture
def events() -> EventLog:
    return EventLog()


@pytest.fixture
def signing_key(tmp_path: Path) -> SigningKey:
    generate_keypair(tmp_path / "keys", "release")
    return SigningKey.load(tmp_path / "keys" / "release.key")


@pytest.fixture
def verifier(tmp_path: Path, signing_key: SigningKey) -> Verifier:
    return Verifier(TrustStore.from_files([tmp_path / "keys"]),
                    RollbackStore(tmp_path / "floors.json"))


@pytest.fixture
def image_bytes() -> bytes:
    return random.Random(11).randbytes(150_000)


@pytest.fixture
def make_package(tmp_path: Path, image_bytes: bytes,
                 signing_key: SigningKey) -> Callable[..., Path]:
    def make(out: Path, *, machines: tuple[str, ...] = ("board-a",), version: str = "1.0",
             security_version: int = 1, image: bytes | None = None) -> Path:
        src = tmp_path / f"{out.name}.img"
        src.write_bytes(image if image is not None else image_bytes)
        out.parent.mkdir(parents=True, exist_ok=True)
        build_package(src, out, key=signing_key, target="bios", machine_names=machines,
                      version=version, security_version=security_version)
        src.unlink()
        return out

    return make


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(workdir, staging_dir)"""
    work, staging = tmp_path / "work", tmp_path / "staging"
    work.mkdir()
    staging.mkdir()
    return work, staging
