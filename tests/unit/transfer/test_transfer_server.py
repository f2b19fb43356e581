"""The donor's HTTP endpoints: tokens, digests, ranges, admission control, byte counts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from fwrescue.transfer.server import TransferServer, TransferServerSettings, parse_range
from fwrescue.transfer.tokens import TokenRegistry
from tests.unit.transfer.testkit import (
    OTHER_TOKEN,
    TOKEN,
    Donor,
    FakeClock,
    MemoryCatalog,
    Package,
)

StartDonor = Callable[..., Awaitable[Donor]]


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(("header", "size", "expected"), [
    (None, 100, None),
    ("bytes=0-9", 100, (0, 9)),
    ("bytes=90-", 100, (90, 99)),
    ("bytes=90-1000", 100, (90, 99)),
    ("bytes=-10", 100, (90, 99)),
    ("bytes=-1000", 100, (0, 99)),
    ("items=0-9", 100, None),  # another unit: ignored (RFC 9110 §14.2)
])
def test_parse_range_accepts_one_satisfiable_range(header: str | None, size: int,
                                                   expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=9-3", "bytes=0-1,5-6", "bytes=-0",
                                    "bytes=-", "bytes=a-b", "bytes=1-2x", "bytes= 1-2",
                                    "bytes=" + "9" * 30 + "-"])
def test_parse_range_refuses_unsatisfiable_malformed_and_multi_ranges(header: str) -> None:
    with pytest.raises(ValueError):
        parse_range(header, 100)


async def test_whole_image_and_manifest_are_served_to_the_token_holder(
        donors: StartDonor, package: Package, session: aiohttp.ClientSession) -> None:
    donor = await donors(package)
    async with session.get(f"{donor.base_url}/images/{package.sha256}", headers=auth()) as r:
        assert r.status == 200
        assert r.headers["Accept-Ranges"] == "bytes"
        assert await r.read() == package.data
    async with session.get(f"{donor.base_url}/manifests/{package.digest}",
                           headers=auth()) as r:
        assert r.status == 200
        assert await r.read() == package.raw
    assert donor.server.stats.bytes_by_token == {TOKEN: len(package.data)}


async def test_head_announces_length_without_a_body(
        donors: StartDonor, package: Package, session: aiohttp.ClientSession) -> None:
    donor = await donors(package)
    async with session.head(f"{donor.base_url}/images/{package.sha256}", headers=auth()) as r:
        assert r.status == 200
        assert int(r.headers["Content-Length"]) == len(package.data)
        assert await r.read() == b""
    assert donor.server.stats.image_bytes == 0


async def test_range_requests_get_206_with_content_range_or_416(
        donors: StartDonor, package: Package, session: aiohttp.ClientSession) -> None:
    donor = await donors(package)
    url = f"{donor.base_url}/images/{package.sha256}"
    size = len(package.data)
    async with session.get(url, headers={**auth(), "Range": "bytes=4096-8191"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 4096-8191/{size}"
        assert await r.read() == package.data[4096:8192]
    async with session.get(url, headers={**auth(), "Range": "bytes=-5"}) as r:
        assert r.status == 206 and await r.read() == package.data[-5:]
    async with session.get(url, headers={**auth(), "Range": f"bytes={size - 3}-"}) as r:
        assert r.status == 206 and await r.read() == package.data[-3:]
    for bad in (f"bytes={size}-", "bytes=0-1,4-5", "bytes=5-1"):
        async with session.get(url, headers={**auth(), "Range": bad}) as r:
            assert r.status == 416
            assert r.headers["Content-Range"] == f"bytes */{size}"


@pytest.mark.parametrize("case", ["none", "wrong-scheme", "unknown", "expired", "revoked"])
async def test_requests_without_a_live_token_get_401_and_no_bytes(
        donors: StartDonor, package: Package, session: aiohttp.ClientSession,
        case: str) -> None:
    donor = await donors(package)
    headers = auth()
    if case == "none":
        headers = {}
    elif case == "wrong-scheme":
        headers = {"Authorization": f"Basic {TOKEN}"}
    elif case == "unknown":
        headers = auth(OTHER_TOKEN)
    elif case == "expired":
        donor.clock.now += 61
    elif case == "revoked":
        donor.registry.revoke(TOKEN)
    for path in (f"images/{package.sha256}", f"manifests/{package.digest}"):
        async with session.get(f"{donor.base_url}/{path}", headers=headers) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer ")
            body = await r.json()
            assert body["error"]["code"].startswith("Base.")
    assert donor.server.stats.image_bytes == 0


async def test_token_for_another_image_gets_403(
        donors: StartDonor, package_factory: Callable[..., Package],
        session: aiohttp.ClientSession) -> None:
    mine, theirs = package_factory(size=8192), package_factory(size=8192)
    donor = await donors(mine)
    donor.catalog.images[theirs.sha256] = theirs.path
    donor.registry.grant(OTHER_TOKEN, image_sha256=theirs.sha256,
                         manifest_digest=theirs.digest, expires_at=donor.clock.now + 60)
    async with session.get(f"{donor.base_url}/images/{theirs.sha256}", headers=auth()) as r:
        assert r.status == 403
    async with session.get(f"{donor.base_url}/images/{theirs.sha256}",
                           headers=auth(OTHER_TOKEN)) as r:
        assert r.status == 200 and await r.read() == theirs.data


async def test_malformed_digest_is_400_and_unheld_digest_is_404(
        donors: StartDonor, package: Package, session: aiohttp.ClientSession) -> None:
    donor = await donors(package)
    async with session.get(f"{donor.base_url}/images/{package.sha256.upper()}",
                           headers=auth()) as r:
        assert r.status == 400
    async with session.get(f"{donor.base_url}/images/{package.sha256[:-1]}",
                           headers=auth()) as r:
        assert r.status == 400
    del donor.catalog.images[package.sha256]
    async with session.get(f"{donor.base_url}/images/{package.sha256}", headers=auth()) as r:
        assert r.status == 404


async def test_second_concurrent_upload_gets_503_with_retry_after(
        donors: StartDonor, package_factory: Callable[..., Package],
        session: aiohttp.ClientSession) -> None:
    package = package_factory(size=256 * 1024)
    settings = TransferServerSettings(max_uploads=1, rate_limit_bps=256 * 1024,
                                      shutdown_timeout=0.05)
    donor = await donors(package, settings)
    url = f"{donor.base_url}/images/{package.sha256}"
    async with session.get(url, headers=auth()) as first:
        assert first.status == 200
        await first.content.read(1)  # the first upload is under way
        async with session.get(url, headers=auth()) as second:
            assert second.status == 503
            assert second.headers["Retry-After"] == "2"
        first.close()
    stats = donor.server.stats
    assert stats.uploads_refused == 1 and stats.peak_uploads == 1
    for _ in range(100):  # the aborted upload ends on the server soon after
        if donor.loads[-1] == 0:
            break
        await asyncio.sleep(0.02)
    assert donor.loads[0] == 1 and donor.loads[-1] == 0


@pytest.mark.parametrize("rate", [None, 1 << 30])  # sendfile path, paced copy path
async def test_image_file_that_shrinks_mid_upload_is_cut_short_never_padded(
        package: Package, session: aiohttp.ClientSession, rate: int | None) -> None:
    half = len(package.data) // 2
    catalog = MemoryCatalog({package.digest: package.raw}, {package.sha256: package.path})
    registry = TokenRegistry(clock=FakeClock())
    registry.grant(TOKEN, image_sha256=package.sha256, manifest_digest=package.digest,
                   expires_at=FakeClock().now + 60)

    def shrink(active: int) -> None:  # runs after fstat, before the body is sent
        if active:
            os.truncate(package.path, half)

    server = TransferServer(catalog, registry,
                            TransferServerSettings(rate_limit_bps=rate, read_block=4096),
                            on_load_change=shrink)
    base_url = await server.start()
    body = bytearray()
    try:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.get(f"{base_url}/images/{package.sha256}", headers=auth()) as r:
                assert r.status == 200 and r.content_length == len(package.data)
                async for block in r.content.iter_chunked(65536):
                    body += block
    finally:
        await server.stop()
    assert bytes(body) == package.data[:half]
    assert server.stats.bytes_by_token[TOKEN] == half
