"""Single-transfer throughput: ImageFetcher (HTTP Range, per-chunk SHA-256, pwrite to
staging, map updates) against a plain asyncio socket copy of the same bytes, both on
loopback in the same run and the same process. Prints the ratio (target >= 0.8), and
the same ratio for fetch + ``StagedImage.finalize`` (the whole-image check), which is
what a recipient waits for before it can flash.

Then TLS against plain HTTP in the same run (``--no-tls`` skips it): the same image
from two donors that differ only in mutual TLS (fleet CA, node certificates, the
recipient naming the donor), raw and shaped; whole-image fetches and swarm-style
fetches of many ranges on one kept-alive connection; and the handshake's cost (a fresh
connection and one small request, TLS minus plain).

Two topologies: raw loopback (both sides as fast as the CPU allows; SHA-256 of every
chunk is then a large share of the work) and a link shaped to ``--rate-mbit`` (100 Mb/s,
a BMC's NC-SI link) where the donor's per-upload rate limit and the plain copy use the
same pacing.

    .venv/bin/python bench/bench_transfer.py [--mib 32] [--chunk-kib 64] [--rounds 3]
                                             [--rate-mbit 100] [--shaped-mib 8]
                                             [--range-kib 1024] [--handshakes 50] [--no-tls]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp

from fwrescue.config import TlsSettings
from fwrescue.transfer.client import ImageFetcher
from fwrescue.transfer.server import TransferServer, TransferServerSettings
from fwrescue.transfer.staging import StagingArea
from fwrescue.transfer.tokens import TokenRegistry
from fwrescue.trust.fleet_ca_cli import CA_CERT, init_ca, issue_node
from fwrescue.trust.keys import SigningKey, TrustStore, generate_keypair
from fwrescue.trust.manifest import Manifest
from fwrescue.trust.rollback import RollbackStore
from fwrescue.trust.transfer_tls import client_context, server_context
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
    parser.add_argument("--range-kib", type=int, default=1024)
    parser.add_argument("--handshakes", type=int, default=50)
    parser.add_argument("--no-tls", action="store_true")
    args = parser.parse_args()
    _settle_allocator()
    await _raw(args)
    await _shaped(args)
    if not args.no_tls:
        await _tls_vs_plain(args)


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


# --- TLS vs plain -------------------------------------------------------------------------

DONOR, RECIPIENT = "bench-donor", "bench-recipient"


def _identities(work: Path) -> tuple[TlsSettings, TlsSettings]:
    init_ca(work / "ca")
    pairs = []
    for node in (DONOR, RECIPIENT):
        cert, key = issue_node(work / "ca", node, work / "ca" / node)
        pairs.append(TlsSettings(ca=work / "ca" / CA_CERT, cert=cert, key=key))
    return pairs[0], pairs[1]


def _session(tls: TlsSettings | None) -> aiohttp.ClientSession:
    ssl_option = client_context(tls.ca, tls.cert, tls.key) if tls is not None else True
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_option))


async def _timed_fetch(url: str, tls: TlsSettings | None, verified: VerifiedManifest,
                       scratch: Path, range_chunks: int | None) -> float:
    """Seconds to move the image over one kept-alive session: one whole-image request,
    or ``range_chunks``-chunk ranges one after another (how a swarm asks a donor)."""
    async with _session(tls) as session:
        fetcher = ImageFetcher(session, require_tls=tls is not None)
        donor = DONOR if tls is not None else None
        started = time.perf_counter()
        if range_chunks is None:
            staged = StagingArea(scratch).open(verified)
            await fetcher.fetch_image(url, TOKEN, verified, staged, donor_id=donor)
            elapsed = time.perf_counter() - started
            staged.close()
            shutil.rmtree(scratch)
            return elapsed
        n = verified.manifest.chunk_count
        for first in range(0, n, range_chunks):  # each chunk verified, as the swarm does
            await fetcher.fetch_chunks(url, TOKEN, verified, first,
                                       min(first + range_chunks, n) - 1,
                                       lambda i, d: Verifier.verify_chunk(verified, i, d),
                                       donor_id=donor)
        return time.perf_counter() - started


async def _handshake(url: str, tls: TlsSettings | None, digest: str, n: int) -> float:
    """Mean seconds of a fresh session's first (manifest) request."""
    total = 0.0
    for _ in range(n):
        async with _session(tls) as session:
            fetcher = ImageFetcher(session, require_tls=tls is not None)
            started = time.perf_counter()
            await fetcher.fetch_manifest(url, digest, TOKEN,
                                         donor_id=DONOR if tls is not None else None)
            total += time.perf_counter() - started
    return total / n


async def _tls_vs_plain(args: argparse.Namespace) -> None:
    chunk = args.chunk_kib * 1024
    rate = args.rate_mbit * 1_000_000 // 8
    range_chunks = max(1, args.range_kib * 1024 // chunk)
    rows: list[tuple[str, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        donor_tls, recipient_tls = _identities(work)
        for label, mib, shaped in ((f"raw loopback, {args.mib} MiB", args.mib, False),
                                   (f"shaped {args.rate_mbit} Mb/s, {args.shaped_mib} MiB",
                                    args.shaped_mib, True)):
            size = mib * 1024 * 1024
            verified, path, raw, _ = _package(work / f"p{mib}{shaped}", size, chunk)
            registry = TokenRegistry(clock=time.monotonic)
            registry.grant(TOKEN, image_sha256=verified.manifest.sha256,
                           manifest_digest=verified.digest,
                           expires_at=time.monotonic() + 3600, recipient_id=RECIPIENT)
            settings = TransferServerSettings(rate_limit_bps=rate if shaped else None)
            catalog = _Catalog(verified.digest, raw, verified.manifest.sha256, path)
            plain_server = TransferServer(catalog, registry, settings)
            tls_server = TransferServer(catalog, registry, settings, ssl_context=server_context(
                donor_tls.ca, donor_tls.cert, donor_tls.key))
            plain_url, tls_url = await plain_server.start(), await tls_server.start()
            scratch = work / f"s{mib}{shaped}"
            rounds = 1 if shaped else args.rounds
            try:
                for mode, chunks in (("whole image", None),
                                     (f"{args.range_kib} KiB ranges", range_chunks)):
                    best = {"plain": float("inf"), "tls": float("inf")}
                    for _ in range(rounds):  # interleaved so drift hits both alike
                        best["plain"] = min(best["plain"], await _timed_fetch(
                            plain_url, None, verified, scratch, chunks))
                        best["tls"] = min(best["tls"], await _timed_fetch(
                            tls_url, recipient_tls, verified, scratch, chunks))
                    rows.append((f"{label}, {mode}", mib / best["plain"], mib / best["tls"],
                                 best["plain"] / best["tls"]))
                if not shaped:
                    hs_plain = await _handshake(plain_url, None, verified.digest,
                                                args.handshakes)
                    hs_tls = await _handshake(tls_url, recipient_tls, verified.digest,
                                              args.handshakes)
            finally:
                await plain_server.stop()
                await tls_server.stop()
    print(f"TLS vs plain (mutual TLS, EC P-256 certificates; best of {args.rounds} raw, 1 shaped)")
    print(f"{'transfer':<44} {'plain MiB/s':>11} {'TLS MiB/s':>10} {'TLS/plain':>9}")
    for name, plain_mibs, tls_mibs, ratio in rows:
        print(f"{name:<44} {plain_mibs:>11.1f} {tls_mibs:>10.1f} {ratio:>9.2f}")
    print(f"first request on a fresh connection (mean of {args.handshakes}): plain "
          f"{hs_plain * 1000:.2f} ms, TLS {hs_tls * 1000:.2f} ms: handshake costs "
          f"{(hs_tls - hs_plain) * 1000:.2f} ms, once per donor (connections are kept alive)")


if __name__ == "__main__":
    asyncio.run(main())
