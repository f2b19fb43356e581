"""Single-transfer throughput: ImageFetcher (HTTP Range, per-chunk SHA-256, pwrite to
staging, map updates) against a plain asyncio socket copy of the same bytes, both on
loopback in the same run and the same process. Prints the ratio (target >= 0.8), and
the same ratio for fetch + ``StagedImage.finalize`` (the whole-image check), which is
what a recipient waits for before it can flash.

Two topologies: raw loopback (both sides as fast as the CPU allows; SHA-256 of every
chunk is then a large share of the work) and a link shaped to ``--rate-mbit`` (100 Mb/s,
a BMC's NC-SI link) where the donor's per-upload rate limit and the plain copy use the
same pacing.

    .venv/bin/python bench/bench_transfer.py [--mib 32] [--chunk-kib 64] [--rounds 3]
                                             [--rate-mbit 100] [--shaped-mib 8]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import time
from pathlib import Path

import aiohttp

from fwrescue.transfer.client import ImageFetcher
from fwrescue.transfer.server import TransferServer, TransferServerSettings
from fwrescue.transfer.staging import StagingArea
from fwrescue.transfer.tokens import TokenRegistry
from fwrescue.trust.keys import SigningKey, TrustStore, generate_keypair
from fwrescue.trust.manifest import Manifest
from fwrescue.trust.rollback import RollbackStore
from fwrescue.trust.verifier import VerifiedManifest, Verifier

TOKEN = "bench-token-0123456789abcdef"
BLOCK = 256 * 1024


class _Catalog:
    def __init__(self, digest: str, raw: bytes, sha256: str, path: Path) -> None:
        self._m, self._i = {digest: raw}, {sha256: path}

    def manifest_bytes(self, digest: str) -> bytes | None:
        return self._m.get(digest)

    def image_path(self, sha256: str) -> Path | None:
        return self._i.get(sha256)


def _package(work: Path, size: int,
             chunk: int) -> tuple[VerifiedManifest, Path, bytes, Verifier]:
    data = os.urandom(size)
    private, public = generate_keypair(work / "keys", "bench")
    key = SigningKey.load(private)
    manifest = Manifest(target="bios", machine_names=("bench",), version="1.0", security_version=1,
                        size=size, sha256=hashlib.sha256(data).hexdigest(), chunk_size=chunk,
                        chunks=tuple(hashlib.sha256(data[i:i + chunk]).hexdigest()
                                     for i in range(0, size, chunk)), key_id=key.key_id)
    signed = key.sign_manifest(manifest)
    verifier = Verifier(TrustStore.from_files([public]), RollbackStore(work / "floor.json"))
    verified = verifier.verify_manifest(signed.raw, target="bios", machine_name="bench")
    path = work / "image.bin"
    path.write_bytes(data)
    return verified, path, signed.raw, verifier


async def _plain_copy(path: Path, size: int, rate: int | None = None) -> float:
    """Server: pread blocks, write, drain (paced like the donor when ``rate`` is set).
    Client: read until EOF, count bytes."""
    async def serve(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        fd = os.open(path, os.O_RDONLY)
        loop = asyncio.get_running_loop()
        block = BLOCK if rate is None else max(4096, min(BLOCK, rate // 20))
        began = loop.time()
        try:
            for offset in range(0, size, block):
                w.write(os.pread(fd, block, offset))
                await w.drain()
                if rate is not None:
                    ahead = (offset + block) / rate - (loop.time() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        finally:
            os.close(fd)
            w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = 0
    while block := await reader.read(BLOCK):
        got += len(block)
    elapsed = time.perf_counter() - started
    writer.close()
    server.close()
    await server.wait_closed()
    assert got == size
    return elapsed


def _settle_allocator() -> None:
    """Free one large block first, so glibc's dynamic mmap threshold (128 KiB until the
    first large free) is raised before anything is timed. Otherwise every 256 KiB socket
    read or file read is an mmap/munmap pair until some code happens to free a big
    block: measured, that alone moved the plain copy between ~45 and ~31 ms, depending
    on which code ran earlier in the process."""
    block = bytearray(8 * 1024 * 1024)
    del block


async def _fetch(base_url: str, verified: VerifiedManifest, staging: StagingArea,
                 session: aiohttp.ClientSession, verifier: Verifier) -> tuple[float, float]:
    """Seconds for fetch_image, and for fetch_image plus finalize."""
    staged = staging.open(verified)
    started = time.perf_counter()
    stats = await ImageFetcher(session).fetch_image(base_url, TOKEN, verified, staged)
    fetched = time.perf_counter()
    final = staged.finalize(verifier, verified)
    finalized = time.perf_counter()
    assert stats.bytes_received == verified.manifest.size
    final.unlink()
    return fetched - started, finalized - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--chunk-kib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate-mbit", type=int, default=100)
    parser.add_argument("--shaped-mib", type=int, default=8)
    args = parser.parse_args()
    _settle_allocator()
    await _raw(args)
    await _shaped(args)


async def _raw(args: argparse.Namespace) -> None:
    size, chunk = args.mib * 1024 * 1024, args.chunk_kib * 1024
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        verified, path, raw, verifier = _package(work, size, chunk)
        registry = TokenRegistry(clock=time.monotonic)
        registry.grant(TOKEN, image_sha256=verified.manifest.sha256,
                       manifest_digest=verified.digest, expires_at=time.monotonic() + 3600)
        server = TransferServer(_Catalog(verified.digest, raw, verified.manifest.sha256, path),
                                registry)
        base_url = await server.start()
        staging = StagingArea(work / "staging")
        plain: list[float] = []
        fetched: list[float] = []
        finalized: list[float] = []
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(args.rounds):  # interleaved so drift hits both alike
                    plain.append(await _plain_copy(path, size))
                    fetch, total = await _fetch(base_url, verified, staging, session, verifier)
                    fetched.append(fetch)
                    finalized.append(total)
        finally:
            await server.stop()
    mib = size / 2**20
    best_plain, best_fetch, best_total = min(plain), min(fetched), min(finalized)
    print(f"image {args.mib} MiB, chunks {args.chunk_kib} KiB, best of {args.rounds}")
    print(f"plain asyncio socket copy : {best_plain * 1000:8.1f} ms  "
          f"{mib / best_plain:8.1f} MiB/s")
    print(f"ImageFetcher (verify+stage): {best_fetch * 1000:8.1f} ms  "
          f"{mib / best_fetch:8.1f} MiB/s")
    print(f"raw loopback ratio fetcher/plain throughput: {best_plain / best_fetch:.2f}"
          "  (target >= 0.8)")
    print(f"ImageFetcher + finalize    : {best_total * 1000:8.1f} ms  "
          f"{mib / best_total:8.1f} MiB/s  ratio {best_plain / best_total:.2f}")



async def _shaped(args: argparse.Namespace) -> None:
    size, chunk = args.shaped_mib * 1024 * 1024, args.chunk_kib * 1024
    rate = args.rate_mbit * 1_000_000 // 8
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        verified, path, raw, verifier = _package(work, size, chunk)
        registry = TokenRegistry(clock=time.monotonic)
        registry.grant(TOKEN, image_sha256=verified.manifest.sha256,
                       manifest_digest=verified.digest, expires_at=time.monotonic() + 3600)
        server = TransferServer(_Catalog(verified.digest, raw, verified.manifest.sha256, path),
                                registry, TransferServerSettings(rate_limit_bps=rate))
        base_url = await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                plain = await _plain_copy(path, size, rate)
                fetched, total = await _fetch(base_url, verified, StagingArea(work / "s"),
                                              session, verifier)
        finally:
            await server.stop()
    print(f"shaped {args.rate_mbit} Mb/s, {args.shaped_mib} MiB: plain {plain:.2f} s, "
          f"fetcher {fetched:.2f} s, ratio {plain / fetched:.2f}  (target >= 0.8); "
          f"+ finalize {total:.3f} s, ratio {plain / total:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
