"""Partial donors: the have-map endpoint and ranges served only from verified chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from fwrescue.errors import TransferError
from fwrescue.image.store import PackageStore
from fwrescue.transfer.havemap import (
    decode_have_map,
    encode_have_map,
    full_have_map,
)
from fwrescue.transfer.pacing import Pacer
from fwrescue.transfer.partial import DonorCatalog, PartialImages
from fwrescue.transfer.server import TransferServer
from fwrescue.transfer.staging import StagedImage, StagingArea
from fwrescue.transfer.tokens import TokenRegistry
from tests.unit.transfer.testkit import TOKEN, FakeClock, Package

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_have_map_codec_is_msb_first_and_strict() -> None:
    assert encode_have_map([0, 9], 10) == b"\x80\x40"
    assert decode_have_map(b"\x80\x40", 10) == [0, 9]
    assert full_have_map(10) == b"\xff\xc0" and full_have_map(8) == b"\xff"
    assert decode_have_map(full_have_map(13), 13) == list(range(13))
    with pytest.raises(TransferError, match="wrong length"):
        decode_have_map(b"\x80", 10)
    with pytest.raises(TransferError, match="past the last chunk"):
        decode_have_map(b"\x80\x20", 10)
    with pytest.raises(ValueError):
        encode_have_map([10], 10)


def put_chunks(staged: StagedImage, package: Package, indices: list[int]) -> None:
    for index in indices:
        offset, length = package.verified.manifest.chunk_span(index)
        staged.write_chunk(index, package.data[offset:offset + length])
        staged.mark_verified(index)


class Partial:
    def __init__(self, staged: StagedImage, server: TransferServer, url: str,
                 images: PartialImages) -> None:
        self.staged, self.server, self.url, self.images = staged, server, url, images


@pytest.fixture
async def partial(package: Package, staging: StagingArea,
                  tmp_path: Path) -> AsyncIterator[Partial]:
    staged = staging.open(package.verified)
    images = PartialImages()
    images.add(staged, package.raw, package.digest)
    clock = FakeClock()
    registry = TokenRegistry(clock=clock)
    registry.grant(TOKEN, image_sha256=package.sha256, manifest_digest=package.digest,
                   expires_at=clock.now + 60)
    catalog = DonorCatalog(PackageStore(tmp_path / "store"), images)
    server = TransferServer(catalog, registry, servables=catalog)
    url = await server.start("127.0.0.1", 0)
    yield Partial(staged, server, url, images)
    await server.stop()
    staged.close()


async def test_have_map_lists_exactly_the_verified_chunks(
        partial: Partial, package: Package, session: aiohttp.ClientSession) -> None:
    count = package.verified.manifest.chunk_count
    async with session.get(f"{partial.url}/chunks/{package.sha256}", headers=AUTH) as resp:
        assert resp.status == 200
        assert decode_have_map(await resp.read(), count) == []
    put_chunks(partial.staged, package, [0, 1, 5])
    async with session.get(f"{partial.url}/chunks/{package.sha256}", headers=AUTH) as resp:
        assert decode_have_map(await resp.read(), count) == [0, 1, 5]
        assert resp.headers["X-Complete"] == "0"
    async with session.get(f"{partial.url}/chunks/{package.sha256}") as resp:
        assert resp.status == 401  # token-authorized like every endpoint
    async with session.get(f"{partial.url}/chunks/{'0' * 64}", headers=AUTH) as resp:
        assert resp.status == 403


async def test_partial_donor_serves_verified_ranges_and_416_for_the_rest(
        partial: Partial, package: Package, session: aiohttp.ClientSession) -> None:
    put_chunks(partial.staged, package, [0, 1, 5])
    cs = package.chunk_size
    url = f"{partial.url}/images/{package.sha256}"
    async with session.get(url, headers={**AUTH, "Range": f"bytes=0-{2 * cs - 1}"}) as resp:
        assert resp.status == 206
        assert await resp.read() == package.data[: 2 * cs]
    async with session.get(url, headers={**AUTH, "Range": f"bytes={5 * cs}-{6 * cs - 1}"}) \
            as resp:
        assert resp.status == 206 and await resp.read() == package.data[5 * cs: 6 * cs]
    for rng in (f"bytes=0-{2 * cs}", f"bytes={4 * cs}-{5 * cs}", "bytes=-1"):
        async with session.get(url, headers={**AUTH, "Range": rng}) as resp:
            assert resp.status == 416, rng  # touches an unverified chunk
            assert resp.headers["Content-Range"] == f"bytes */{package.verified.manifest.size}"
    async with session.get(url, headers=AUTH) as resp:
        assert resp.status == 416  # the whole image: not all verified
    async with session.get(f"{partial.url}/manifests/{package.digest}", headers=AUTH) as resp:
        assert resp.status == 200 and await resp.read() == package.raw


async def test_unverified_bytes_on_disk_are_never_served(
        partial: Partial, package: Package, session: aiohttp.ClientSession) -> None:
    cs = package.chunk_size
    # Bytes written but not verified (a chunk that failed its digest, say) stay private.
    partial.staged.write_chunk(2, b"\x00" * cs)
    url = f"{partial.url}/images/{package.sha256}"
    async with session.get(url, headers={**AUTH, "Range": f"bytes={2 * cs}-{3 * cs - 1}"}) \
            as resp:
        assert resp.status == 416
    count = package.verified.manifest.chunk_count
    async with session.get(f"{partial.url}/chunks/{package.sha256}", headers=AUTH) as resp:
        assert decode_have_map(await resp.read(), count) == []


async def test_removed_or_closed_partial_serves_nothing(
        partial: Partial, package: Package, session: aiohttp.ClientSession) -> None:
    put_chunks(partial.staged, package, [0])
    cs = package.chunk_size
    url = f"{partial.url}/images/{package.sha256}"
    partial.staged.close()
    async with session.get(url, headers={**AUTH, "Range": f"bytes=0-{cs - 1}"}) as resp:
        assert resp.status == 416
    partial.images.remove(package.sha256)
    async with session.get(url, headers={**AUTH, "Range": f"bytes=0-{cs - 1}"}) as resp:
        assert resp.status == 404


def test_partial_images_offer_only_when_holding_chunks(
        package: Package, staging: StagingArea) -> None:
    images = PartialImages()
    with staging.open(package.verified) as staged:
        images.add(staged, package.raw, package.digest)
        assert images.offerable() == []
        put_chunks(staged, package, [3, 4])
        (offer,) = images.offerable()
        assert offer.held == 2 and offer.manifest_digest == package.digest
        assert offer.image_sha256 == package.sha256


def test_pacer_shares_one_budget_between_callers() -> None:
    clock = FakeClock(0.0)
    pacer = Pacer(100_000, burst=0, clock=clock)
    waits = [pacer.reserve(10_000) for _ in range(4)]  # four uploads at once
    assert waits == pytest.approx([0.1, 0.2, 0.3, 0.4])
    clock.now = 10.0  # an idle link does not bank unlimited credit
    assert pacer.reserve(10_000) == pytest.approx(0.1)

