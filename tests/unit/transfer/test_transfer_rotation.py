"""Upload slot rotation: a busy 503 says so (X-Fwrescue-Busy), and with a queue a
request that finds every body slot taken waits its turn instead of being refused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from fwrescue.errors import ConfigError, DonorUnavailable
from fwrescue.transfer.client import BUSY_HEADER, _refusal
from fwrescue.transfer.server import SERVER_STATE, TransferServerSettings
from tests.unit.transfer.testkit import TOKEN, Donor, Package

StartDonor = Callable[..., Awaitable[Donor]]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_busy_503_carries_the_busy_header_and_the_client_reads_it(
        donors: StartDonor, package_factory: Callable[..., Package],
        session: aiohttp.ClientSession) -> None:
    package = package_factory(size=256 * 1024)
    donor = await donors(package, TransferServerSettings(
        max_uploads=1, rate_limit_bps=64 * 1024, shutdown_timeout=0.05))
    url = f"{donor.base_url}/images/{package.sha256}"
    async with session.get(url, headers=AUTH) as first:
        await first.content.read(1)
        async with session.get(url, headers=AUTH) as second:
            assert second.status == 503
            assert second.headers[BUSY_HEADER] == "1"
            error = _refusal(second, "image")
        first.close()
    assert isinstance(error, DonorUnavailable) and error.fields["busy"] is True


async def test_queued_request_waits_for_the_slot_and_gets_the_whole_range(
        donors: StartDonor, package_factory: Callable[..., Package],
        session: aiohttp.ClientSession) -> None:
    package = package_factory(size=64 * 1024)
    donor = await donors(package, TransferServerSettings(
        max_uploads=1, rate_limit_bps=256 * 1024, queue_wait_s=10.0, max_queued=4))
    url = f"{donor.base_url}/images/{package.sha256}"

    async def fetch(first: int, last: int) -> bytes:
        headers = {**AUTH, "Range": f"bytes={first}-{last}"}
        async with session.get(url, headers=headers) as r:
            assert r.status == 206
            return await r.read()

    bodies = await asyncio.gather(*(fetch(i * 16384, i * 16384 + 16383) for i in range(4)))
    assert b"".join(bodies) == package.data
    stats = donor.server.stats
    assert stats.peak_uploads == 1 and stats.uploads_refused == 0
    assert stats.uploads_started == 4 and stats.active_uploads == 0


async def test_a_full_queue_is_refused_at_once(
        donors: StartDonor, package_factory: Callable[..., Package],
        session: aiohttp.ClientSession) -> None:
    package = package_factory(size=256 * 1024)
    donor = await donors(package, TransferServerSettings(
        max_uploads=1, rate_limit_bps=64 * 1024, queue_wait_s=10.0, max_queued=1,
        shutdown_timeout=0.05))
    url = f"{donor.base_url}/images/{package.sha256}"
    async with session.get(url, headers=AUTH) as first:
        await first.content.read(1)
        waiting = asyncio.create_task(session.get(url, headers=AUTH))
        for _ in range(200):  # until the second request stands in line
            if donor.server.app[SERVER_STATE].waiters:
                break
            await asyncio.sleep(0.01)
        async with session.get(url, headers=AUTH) as third:
            assert third.status == 503 and third.headers[BUSY_HEADER] == "1"
        first.close()
        second = await waiting
        assert second.status == 200
        second.close()
    assert donor.server.stats.uploads_refused == 1


@pytest.mark.parametrize(("field", "value"), [("queue_wait_s", -1.0), ("queue_wait_s", 61.0),
                                              ("max_queued", -1), ("max_queued", 5000)])
def test_queue_settings_out_of_range_are_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError):
        TransferServerSettings(**{field: value})  # type: ignore[arg-type]
