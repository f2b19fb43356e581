"""ImageFetcher against honest donors: full transfers, resume, manifests, refusals."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from fwrescue.errors import ChunkMismatch, DonorUnavailable, SizeLimitExceeded, TransferError
from fwrescue.transfer.client import ImageFetcher, TransferLimits
from fwrescue.transfer.server import TransferServerSettings
from fwrescue.transfer.staging import StagingArea
from fwrescue.trust.verifier import Verifier
from tests.fakes.firmware import Signer
from tests.unit.transfer.testkit import OTHER_TOKEN, TOKEN, Donor, Package, inconsistent

StartDonor = Callable[..., Awaitable[Donor]]


async def test_full_transfer_stages_the_exact_image_and_finalize_passes(
        donors: StartDonor, package: Package, session: aiohttp.ClientSession,
        staging: StagingArea, verifier: Verifier) -> None:
    donor = await donors(package)
    fetcher = ImageFetcher(session)
    raw = await fetcher.fetch_manifest(donor.base_url, package.digest, TOKEN,
                                       max_bytes=64 * 1024)
    verified = verifier.verify_manifest(raw, target="bios", machine_name="board-a",
                                        expected_digest=package.digest)
    staged = staging.open(verified)
    seen: list[tuple[int, int]] = []
    stats = await fetcher.fetch_image(donor.base_url, TOKEN, verified, staged,
                                      lambda done, total: seen.append((done, total)))
    assert staged.complete()
    assert stats.requests == 1  # one contiguous run, one Range request
    assert stats.bytes_received == len(package.data) == donor.server.stats.bytes_by_token[TOKEN]
    assert stats.chunks_fetched == verified.manifest.chunk_count
    assert stats.chunks_refetched == 0
    assert seen[-1] == (len(package.data), len(package.data))
    final = staged.finalize(verifier, verified)
    assert final.read_bytes() == package.data


async def test_resume_requests_only_missing_runs(
        donors: StartDonor, package: Package, session: aiohttp.ClientSession,
        staging: StagingArea) -> None:
    donor = await donors(package)
    cs = package.chunk_size
    staged = staging.open(package.verified)
    for i in [0, 1, 5, 6, 7, 30]:
        staged.begin_chunk(i)
        staged.write_chunk(i, package.data[i * cs:(i + 1) * cs])
        staged.mark_verified(i)
    n = package.verified.manifest.chunk_count
    stats = await ImageFetcher(session).fetch_image(donor.base_url, TOKEN, package.verified,
                                                    staged)
    assert stats.requests == 3  # [2..4], [8..29], [31..n-1]
    assert stats.chunks_fetched == n - 6
    assert stats.bytes_received == len(package.data) - 6 * cs
    assert staged.complete()


async def test_complete_staging_fetches_nothing(
        donors: StartDonor, package: Package, session: aiohttp.ClientSession,
        staging: StagingArea) -> None:
    donor = await donors(package)
    staged = staging.open(package.verified)
    fetcher = ImageFetcher(session)
    await fetcher.fetch_image(donor.base_url, TOKEN, package.verified, staged)
    again = await fetcher.fetch_image(donor.base_url, TOKEN, package.verified, staged)
    assert (again.requests, again.bytes_received) == (0, 0)


async def test_refused_token_is_donor_unavailable_and_nothing_is_staged(
        donors: StartDonor, package: Package, session: aiohttp.ClientSession,
        staging: StagingArea) -> None:
    donor = await donors(package)
    staged = staging.open(package.verified)
    fetcher = ImageFetcher(session)
    with pytest.raises(DonorUnavailable) as err:
        await fetcher.fetch_image(donor.base_url, OTHER_TOKEN, package.verified, staged)
    assert err.value.fields["status"] == 401
    with pytest.raises(DonorUnavailable):
        await fetcher.fetch_manifest(donor.base_url, package.digest, OTHER_TOKEN)
    assert staged.verified_count == 0


async def test_busy_donor_is_donor_unavailable_with_retry_after(
        donors: StartDonor, package_factory: Callable[..., Package],
        session: aiohttp.ClientSession, staging: StagingArea) -> None:
    package = package_factory(size=128 * 1024)
    settings = TransferServerSettings(max_uploads=1, rate_limit_bps=64 * 1024,
                                      shutdown_timeout=0.05)
    donor = await donors(package, settings)
    async with session.get(f"{donor.base_url}/images/{package.sha256}",
                           headers={"Authorization": f"Bearer {TOKEN}"}) as hog:
        await hog.content.read(1)
        with pytest.raises(DonorUnavailable) as err:
            await ImageFetcher(session).fetch_image(donor.base_url, TOKEN, package.verified,
                                                    staging.open(package.verified))
        hog.close()
    assert err.value.fields["status"] == 503
    assert err.value.fields["retry_after"] == "2"


async def test_manifest_over_the_limit_is_cut_off(
        donors: StartDonor, package: Package, session: aiohttp.ClientSession) -> None:
    donor = await donors(package)
    with pytest.raises(SizeLimitExceeded):
        await ImageFetcher(session).fetch_manifest(donor.base_url, package.digest, TOKEN,
                                                   max_bytes=100)


async def test_malformed_endpoint_digest_or_token_from_a_donor_is_transfer_error(
        session: aiohttp.ClientSession, package: Package) -> None:
    fetcher = ImageFetcher(session)
    for url, digest, token in [("ftp://127.0.0.1:1", package.digest, TOKEN),
                               ("http://u:p@127.0.0.1:1", package.digest, TOKEN),
                               ("http://127.0.0.1:1", "XYZ", TOKEN),
                               ("http://127.0.0.1:1", package.digest, "bad\r\ntoken-xxxxxxx")]:
        with pytest.raises(TransferError):
            await fetcher.fetch_manifest(url, digest, token)


async def test_nobody_listening_is_donor_unavailable(
        session: aiohttp.ClientSession, package: Package, staging: StagingArea) -> None:
    import socket
    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fetcher = ImageFetcher(session, limits=TransferLimits(connect_timeout=2))
    with pytest.raises(DonorUnavailable):
        await fetcher.fetch_image(f"http://127.0.0.1:{port}", TOKEN, package.verified,
                                  staging.open(package.verified))


async def test_background_syncs_hash_the_verified_prefix_ahead_of_finalize(
        donors: StartDonor, package: Package, session: aiohttp.ClientSession,
        tmp_path: Path, verifier: Verifier, monkeypatch: pytest.MonkeyPatch) -> None:
    donor = await donors(package)
    staged = StagingArea(tmp_path / "s", sync_bytes=8 * 4096).open(package.verified)
    covered: list[tuple[bool, int]] = []
    ahead = staged.digest_ahead

    def spy() -> int:
        result = ahead()
        covered.append((threading.current_thread() is threading.main_thread(), result))
        return result

    monkeypatch.setattr(staged, "digest_ahead", spy)
    await ImageFetcher(session).fetch_image(donor.base_url, TOKEN, package.verified, staged)
    assert covered and not any(on_loop for on_loop, _ in covered)  # worker threads only
    assert covered[-1][1] >= len(package.data) // 2  # most of the image hashed already
    assert staged.finalize(verifier, package.verified).read_bytes() == package.data


async def test_fetched_image_whose_chunks_verify_but_whole_digest_does_not_is_refused(
        donors: StartDonor, package: Package, session: aiohttp.ClientSession,
        tmp_path: Path, signer: Signer, verifier: Verifier) -> None:
    liar = inconsistent(signer, verifier, package)
    donor = await donors(liar)
    staged = StagingArea(tmp_path / "s", sync_bytes=8 * 4096).open(liar.verified)
    stats = await ImageFetcher(session).fetch_image(donor.base_url, TOKEN, liar.verified,
                                                    staged)
    assert staged.complete() and stats.chunks_fetched == liar.verified.manifest.chunk_count
    with pytest.raises(ChunkMismatch, match="digest"):
        staged.finalize(verifier, liar.verified)
    assert not staged.part_path.exists() and not staged.final_path.exists()
