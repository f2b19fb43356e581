"""ImageFetcher against donors that die, stall, lie or never stop talking."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from fwrescue.errors import ChunkMismatch, DonorUnavailable, TransferError
from fwrescue.transfer.client import FetchStats, ImageFetcher, TransferLimits
from fwrescue.transfer.server import TransferServerSettings
from fwrescue.transfer.staging import StagingArea
from fwrescue.trust.verifier import VerifiedManifest, Verifier
from tests.unit.transfer.testkit import TOKEN, Donor, Package, RogueDonor

StartDonor = Callable[..., Awaitable[Donor]]


def slow(rate: int = 1024 * 1024) -> TransferServerSettings:
    return TransferServerSettings(rate_limit_bps=rate, read_block=4096, shutdown_timeout=0.05)


async def start_rogue(rogues: list[RogueDonor], behaviour: Callable[..., Awaitable[None]]
                      ) -> tuple[RogueDonor, str]:
    rogue = RogueDonor(behaviour)
    rogues.append(rogue)
    return rogue, await rogue.start()


def stats_of(err: pytest.ExceptionInfo[Exception]) -> FetchStats:
    stats = err.value.fields["stats"]  # type: ignore[attr-defined]
    assert isinstance(stats, FetchStats)
    return stats


async def test_donor_stopped_at_half_then_second_donor_finishes_with_at_most_one_chunk_again(
        donors: StartDonor, package_factory: Callable[..., Package],
        session: aiohttp.ClientSession, staging: StagingArea, verifier: Verifier) -> None:
    package = package_factory(size=96 * 4096)
    first = await donors(package, slow())
    second = await donors(package)
    staged = staging.open(package.verified)
    fetcher = ImageFetcher(session)
    stopping: list[asyncio.Task[None]] = []

    def kill_at_half(done: int, total: int) -> None:
        if done >= total // 2 and not stopping:
            stopping.append(asyncio.create_task(first.server.stop()))

    with pytest.raises(DonorUnavailable) as err:
        await fetcher.fetch_image(first.base_url, TOKEN, package.verified, staged, kill_at_half)
    await stopping[0]
    lost = stats_of(err)
    assert 0 < staged.verified_count < package.verified.manifest.chunk_count
    done = await fetcher.fetch_image(second.base_url, TOKEN, package.verified, staged)
    assert staged.complete()
    assert done.chunks_refetched <= 1
    cs = package.chunk_size
    assert lost.bytes_received + done.bytes_received <= len(package.data) + 2 * cs
    assert staged.finalize(verifier, package.verified).read_bytes() == package.data


async def test_donor_that_serves_half_then_closes_costs_at_most_the_chunk_in_flight(
        donors: StartDonor, package: Package, rogues: list[RogueDonor],
        session: aiohttp.ClientSession, staging: StagingArea) -> None:
    size, cs = len(package.data), package.chunk_size
    cut = size // 2 + cs // 3  # in the middle of a chunk

    async def half(writer: asyncio.StreamWriter, first: int, last: int) -> None:
        writer.write(rogue.head(first, last, size, last - first + 1))
        writer.write(package.data[first:cut])
        await writer.drain()
        writer.close()

    rogue, url = await start_rogue(rogues, half)
    staged = staging.open(package.verified)
    fetcher = ImageFetcher(session)
    with pytest.raises(DonorUnavailable) as err:
        await fetcher.fetch_image(url, TOKEN, package.verified, staged)
    assert staged.verified_count == cut // cs
    assert stats_of(err).bytes_received == cut
    honest = await donors(package)
    done = await fetcher.fetch_image(honest.base_url, TOKEN, package.verified, staged)
    assert staged.complete()
    assert done.chunks_refetched == 1
    assert done.bytes_received == size - (cut // cs) * cs


async def test_corrupted_chunk_raises_chunk_mismatch_and_is_never_marked(
        donors: StartDonor, package: Package, rogues: list[RogueDonor],
        session: aiohttp.ClientSession, staging: StagingArea) -> None:
    size, cs = len(package.data), package.chunk_size
    bad = bytearray(package.data)
    bad[5 * cs + 17] ^= 0xFF

    async def corrupt(writer: asyncio.StreamWriter, first: int, last: int) -> None:
        writer.write(rogue.head(first, last, size, last - first + 1))
        writer.write(bytes(bad[first:last + 1]))
        await writer.drain()

    rogue, url = await start_rogue(rogues, corrupt)
    staged = staging.open(package.verified)
    fetcher = ImageFetcher(session)
    with pytest.raises(ChunkMismatch) as err:
        await fetcher.fetch_image(url, TOKEN, package.verified, staged)
    assert err.value.fields["index"] == 5
    assert staged.missing()[0] == 5 and staged.verified_count == 5
    for i in range(5):
        assert staged.read_chunk(i) == package.data[i * cs:(i + 1) * cs]
    assert staged.read_chunk(5) != bytes(bad[5 * cs:6 * cs])  # bad bytes never written
    honest = await donors(package)
    done = await fetcher.fetch_image(honest.base_url, TOKEN, package.verified, staged)
    assert done.chunks_refetched == 1 and staged.complete()


async def test_donor_announcing_more_bytes_than_asked_is_cut_off_before_the_body(
        package: Package, rogues: list[RogueDonor], session: aiohttp.ClientSession,
        staging: StagingArea) -> None:
    size = len(package.data)

    async def endless(writer: asyncio.StreamWriter, first: int, last: int) -> None:
        writer.write(rogue.head(first, last, size, 1 << 40))
        for _ in range(256):  # bounded "endless" data
            writer.write(b"\0" * 65536)
            await writer.drain()

    rogue, url = await start_rogue(rogues, endless)
    staged = staging.open(package.verified)
    with pytest.raises(TransferError) as err:
        await ImageFetcher(session).fetch_image(url, TOKEN, package.verified, staged)
    assert stats_of(err).bytes_received == 0
    assert staged.verified_count == 0


async def test_close_delimited_donor_sending_more_than_asked_is_read_only_as_far_as_asked(
        package: Package, rogues: list[RogueDonor], session: aiohttp.ClientSession,
        staging: StagingArea) -> None:
    size = len(package.data)

    async def overlong(writer: asyncio.StreamWriter, first: int, last: int) -> None:
        writer.write(rogue.head(first, last, size, None))  # no length: until close
        writer.write(package.data[first:last + 1])
        for _ in range(256):
            writer.write(b"\xee" * 65536)
            await writer.drain()
        writer.close()

    rogue, url = await start_rogue(rogues, overlong)
    staged = staging.open(package.verified)
    stats = await ImageFetcher(session).fetch_image(url, TOKEN, package.verified, staged)
    assert stats.bytes_received == size
    assert staged.complete()


async def test_donor_that_goes_silent_is_dropped_after_the_stall_timeout(
        package: Package, rogues: list[RogueDonor], session: aiohttp.ClientSession,
        staging: StagingArea) -> None:
    size, cs = len(package.data), package.chunk_size
    release = asyncio.Event()

    async def stall(writer: asyncio.StreamWriter, first: int, last: int) -> None:
        writer.write(rogue.head(first, last, size, last - first + 1))
        writer.write(package.data[first:first + 2 * cs])
        await writer.drain()
        await asyncio.wait_for(release.wait(), 10)

    rogue, url = await start_rogue(rogues, stall)
    staged = staging.open(package.verified)
    fetcher = ImageFetcher(session, limits=TransferLimits(stall_timeout=0.3))
    with pytest.raises(DonorUnavailable):
        await fetcher.fetch_image(url, TOKEN, package.verified, staged)
    release.set()
    assert staged.verified_count == 2


async def test_donor_answering_another_range_is_transfer_error(
        package: Package, rogues: list[RogueDonor], session: aiohttp.ClientSession,
        staging: StagingArea) -> None:
    size = len(package.data)

    async def shifted(writer: asyncio.StreamWriter, first: int, last: int) -> None:
        writer.write(rogue.head(first + 1, last, size, last - first))
        writer.write(package.data[first + 1:last + 1])
        await writer.drain()

    rogue, url = await start_rogue(rogues, shifted)
    staged = staging.open(package.verified)
    with pytest.raises(TransferError, match="another range"):
        await ImageFetcher(session).fetch_image(url, TOKEN, package.verified, staged)
    assert staged.verified_count == 0


async def test_trickling_donor_fails_the_minimum_throughput_check(
        donors: StartDonor, package: Package, session: aiohttp.ClientSession,
        staging: StagingArea) -> None:
    donor = await donors(package, slow(rate=16 * 1024))
    limits = TransferLimits(min_throughput_bps=1024 * 1024, throughput_window=0.2)
    with pytest.raises(DonorUnavailable, match="minimum throughput"):
        await ImageFetcher(session, limits=limits).fetch_image(
            donor.base_url, TOKEN, package.verified, staging.open(package.verified))


async def test_a_donor_trickling_under_the_stall_timeout_is_dropped_by_the_default_floor(
        donors: StartDonor, package: Package, rogues: list[RogueDonor],
        session: aiohttp.ClientSession, staging: StagingArea) -> None:
    """A byte every 20 ms never trips the 10 s stall timeout; the default throughput floor
    (no limit configured) drops the donor, and an honest donor then finishes the image."""
    size = len(package.data)

    async def trickle(writer: asyncio.StreamWriter, first: int, last: int) -> None:
        writer.write(rogue.head(first, last, size, last - first + 1))
        for i in range(200):  # bounded: 4 s of trickle at most
            writer.write(package.data[first + i:first + i + 1])
            await writer.drain()
            await asyncio.sleep(0.02)

    rogue, url = await start_rogue(rogues, trickle)
    ticks = iter(range(10**6))  # a clock that advances 1 s per look: the window passes fast
    fetcher = ImageFetcher(session, clock=lambda: float(next(ticks)))
    assert fetcher.limits.min_throughput_bps == TransferLimits().min_throughput_bps
    assert TransferLimits().min_throughput_bps is not None
    staged = staging.open(package.verified)
    with pytest.raises(DonorUnavailable, match="minimum throughput"):
        await fetcher.fetch_image(url, TOKEN, package.verified, staged)
    assert rogue.requests  # the trickle was really asked for the image
    honest = await donors(package)
    await ImageFetcher(session).fetch_image(honest.base_url, TOKEN, package.verified, staged)
    assert staged.complete()


async def test_fetcher_buffers_one_chunk_at_a_time_not_the_image(
        donors: StartDonor, package_factory: Callable[..., Package],
        session: aiohttp.ClientSession, staging: StagingArea) -> None:
    chunk = 64 * 1024
    package = package_factory(size=8 * 1024 * 1024, chunk_size=chunk)
    donor = await donors(package)
    biggest = 0

    def watching(verified: VerifiedManifest, index: int, data: bytes) -> None:
        nonlocal biggest
        biggest = max(biggest, len(data))
        Verifier.verify_chunk(verified, index, data)

    fetcher = ImageFetcher(session, verify_chunk=watching)
    staged = staging.open(package.verified)
    tracemalloc.start()
    try:
        await fetcher.fetch_image(donor.base_url, TOKEN, package.verified, staged)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert staged.complete()
    assert biggest == chunk
    # server and client in this process together: a few read blocks, never the 8 MiB image
    assert peak < 2 * 1024 * 1024
