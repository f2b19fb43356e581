"""Fixtures for the transfer tests: a real release key, a verifier, packages, a client
session and donors that are stopped after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from fwrescue.transfer.server import TransferServerSettings
from fwrescue.transfer.staging import StagingArea
from fwrescue.trust.verifier import Verifier
from tests.fakes.firmware import Signer
from tests.unit.transfer.testkit import Donor, Package, RogueDonor, make_package, start_donor


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer(tmp_path / "keys")


@pytest.fixture
def verifier(signer: Signer, tmp_path: Path) -> Verifier:
    return signer.verifier(tmp_path)


@pytest.fixture
def package_factory(signer: Signer, verifier: Verifier,
                    tmp_path: Path) -> Callable[..., Package]:
    def make(size: int = 64 * 4096 + 123, chunk_size: int = 4096) -> Package:
        return make_package(signer, verifier, tmp_path, size=size, chunk_size=chunk_size)
    return make


@pytest.fixture
def package(package_factory: Callable[..., Package]) -> Package:
    return package_factory()


@pytest.fixture
def staging(tmp_path: Path) -> StagingArea:
    return StagingArea(tmp_path / "staging")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def donors() -> AsyncIterator[Callable[..., Awaitable[Donor]]]:
    started: list[Donor] = []

    async def start(package: Package, settings: TransferServerSettings | None = None,
                    **kw: object) -> Donor:
        donor = await start_donor(package, settings=settings, **kw)  # type: ignore[arg-type]
        started.append(donor)
        return donor

    yield start
    for donor in started:
        await donor.server.stop()


@pytest.fixture
async def rogues() -> AsyncIterator[list[RogueDonor]]:
    started: list[RogueDonor] = []
    yield started
    for rogue in started:
        await rogue.stop()
