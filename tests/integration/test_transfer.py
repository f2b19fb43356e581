"""End to end on 127.0.0.1: a donor *process* is SIGKILLed half-way through an image;
the recipient restarts its staging from disk and a second donor finishes the image,
fetching again at most the chunk that was in flight; finalize checks the whole file."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp

from fwrescue.errors import DonorUnavailable
from fwrescue.transfer.client import FetchStats, ImageFetcher, TransferLimits
from fwrescue.transfer.server import TransferServer
from fwrescue.transfer.staging import StagingArea
from fwrescue.transfer.tokens import TokenRegistry
from tests.fakes.firmware import Signer

TOKEN = "integration-token-0123456789"

# A donor agent reduced to its transfer server: serves one image at 512 KiB/s.
DONOR = """
import asyncio, sys, time
from pathlib import Path
from fwrescue.transfer.server import TransferServer, TransferServerSettings
from fwrescue.transfer.tokens import TokenRegistry

class Catalog:
    def manifest_bytes(self, digest):
        return Path(sys.argv[3]).read_bytes() if digest == sys.argv[2] else None
    def image_path(self, sha256):
        return Path(sys.argv[4]) if sha256 == sys.argv[1] else None

async def main():
    tokens = TokenRegistry(clock=time.monotonic)
    tokens.grant(sys.argv[5], image_sha256=sys.argv[1], manifest_digest=sys.argv[2],
                 expires_at=time.monotonic() + 60)
    server = TransferServer(Catalog(), tokens, TransferServerSettings(rate_limit_bps=512 * 1024))
    print(await server.start(), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


class _Catalog:
    def __init__(self, digest: str, raw: bytes, sha256: str, path: Path) -> None:
        self.digest, self.raw, self.sha256, self.path = digest, raw, sha256, path

    def manifest_bytes(self, digest: str) -> bytes | None:
        return self.raw if digest == self.digest else None

    def image_path(self, sha256: str) -> Path | None:
        return self.path if sha256 == self.sha256 else None


async def test_killed_donor_process_then_restart_then_second_donor_completes(
        tmp_path: Path) -> None:
    signer = Signer(tmp_path / "keys")
    verifier = signer.verifier(tmp_path)
    fw = signer.firmware(size=1024 * 1024 + 777, chunk_size=16 * 1024)
    image = fw.write_image(tmp_path / "image.bin")
    (tmp_path / "manifest.json").write_bytes(fw.signed.raw)
    sha, digest = fw.manifest.sha256, fw.signed.digest

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DONOR, sha, digest, str(tmp_path / "manifest.json"), str(image),
        TOKEN, stdout=asyncio.subprocess.PIPE)
    tokens = TokenRegistry(clock=time.monotonic)
    tokens.grant(TOKEN, image_sha256=sha, manifest_digest=digest,
                 expires_at=time.monotonic() + 60)
    second = TransferServer(_Catalog(digest, fw.signed.raw, sha, image), tokens)
    try:
        assert proc.stdout is not None
        first_url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        second_url = await second.start()
        async with aiohttp.ClientSession() as session:
            fetcher = ImageFetcher(session, limits=TransferLimits(stall_timeout=5))
            raw = await fetcher.fetch_manifest(first_url, digest, TOKEN)
            verified = verifier.verify_manifest(raw, target="bios", machine_name="board-a",
                                                expected_digest=digest)
            staged = StagingArea(tmp_path / "staging").open(verified)

            def kill_past_40_percent(done: int, total: int) -> None:
                if done * 10 >= total * 4 and proc.returncode is None:
                    proc.kill()  # SIGKILL to the donor process this test started

            try:
                await fetcher.fetch_image(first_url, TOKEN, verified, staged,
                                          kill_past_40_percent)
                raise AssertionError("the killed donor cannot have finished")
            except DonorUnavailable as e:
                lost = e.fields["stats"]
            assert isinstance(lost, FetchStats)
            verified_before = staged.verified_count
            assert 0 < verified_before < fw.manifest.chunk_count
            del staged  # the recipient agent restarts too

            resumed = StagingArea(tmp_path / "staging").open(verified)
            assert len(resumed.missing()) == fw.manifest.chunk_count - verified_before
            done = await fetcher.fetch_image(second_url, TOKEN, verified, resumed)
            assert done.chunks_refetched <= 1
            assert lost.bytes_received + done.bytes_received <= fw.manifest.size + 2 * 16 * 1024
            assert second.stats.bytes_by_token[TOKEN] == done.bytes_received
            final = resumed.finalize(verifier, verified)
        assert final.read_bytes() == fw.image
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await second.stop()
