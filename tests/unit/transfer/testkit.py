"""Builders for the transfer tests: a fake clock, an in-memory catalog, donors (honest and
rogue) on 127.0.0.1, and a package of random bytes signed with a real release key."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from fwrescue.transfer.server import TransferServer, TransferServerSettings
from fwrescue.transfer.tokens import TokenRegistry
from fwrescue.trust.verifier import VerifiedManifest, Verifier
from tests.fakes.firmware import Firmware, Signer

TOKEN = "tok-recipient-0123456789abcdef"
OTHER_TOKEN = "tok-somebody-else-0123456789"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class MemoryCatalog:
    manifests: dict[str, bytes] = field(default_factory=dict)
    images: dict[str, Path] = field(default_factory=dict)

    def manifest_bytes(self, digest: str) -> bytes | None:
        return self.manifests.get(digest)

    def image_path(self, sha256: str) -> Path | None:
        return self.images.get(sha256)


@dataclass
class Package:
    firmware: Firmware
    verified: VerifiedManifest
    path: Path

    @property
    def data(self) -> bytes:
        return self.firmware.image

    @property
    def sha256(self) -> str:
        return self.verified.manifest.sha256

    @property
    def digest(self) -> str:
        return self.verified.digest

    @property
    def raw(self) -> bytes:
        return self.firmware.signed.raw

    @property
    def chunk_size(self) -> int:
        return self.verified.manifest.chunk_size


def inconsistent(signer: Signer, verifier: Verifier, package: Package) -> Package:
    """The same bytes and chunk list, signed with a whole-image SHA-256 of other bytes:
    every chunk verifies, only the whole-image check can refuse it."""
    manifest = dataclasses.replace(package.firmware.manifest,
                                   sha256=hashlib.sha256(b"other bytes").hexdigest())
    signed = signer.key.sign_manifest(manifest)
    verified = verifier.verify_manifest(signed.raw, target="bios", machine_name="board-a")
    return dataclasses.replace(package, verified=verified)


def make_package(signer: Signer, verifier: Verifier, directory: Path, *, size: int,
                 chunk_size: int = 4096) -> Package:
    fw = signer.firmware(size=size, chunk_size=chunk_size)
    verified = verifier.verify_manifest(fw.signed.raw, target="bios", machine_name="board-a",
                                        expected_digest=fw.signed.digest)
    path = fw.write_image(directory / f"donor-{fw.manifest.sha256[:8]}.bin")
    return Package(fw, verified, path)


@dataclass
class Donor:
    server: TransferServer
    registry: TokenRegistry
    clock: FakeClock
    catalog: MemoryCatalog
    base_url: str
    loads: list[int]


async def start_donor(package: Package, *, settings: TransferServerSettings | None = None,
                      token: str = TOKEN, lease: float = 60.0) -> Donor:
    clock = FakeClock()
    registry = TokenRegistry(clock=clock)
    registry.grant(token, image_sha256=package.sha256, manifest_digest=package.digest,
                   expires_at=clock.now + lease)
    catalog = MemoryCatalog({package.digest: package.raw}, {package.sha256: package.path})
    loads: list[int] = []
    server = TransferServer(catalog, registry, settings, on_load_change=loads.append)
    base_url = await server.start("127.0.0.1", 0)
    return Donor(server, registry, clock, catalog, base_url, loads)


# --- rogue donors: raw asyncio HTTP that misbehaves on purpose ------------------------------

#: behaviour(writer, first, last) answers one parsed image request.
Behaviour = Callable[[asyncio.StreamWriter, int, int], Awaitable[None]]


class RogueDonor:
    """A minimal HTTP/1.1 server on 127.0.0.1 that lets a test script each answer."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[tuple[int, int]] = []
        self.bytes_sent = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            for _ in range(64):  # bounded keep-alive
                head = await reader.readuntil(b"\r\n\r\n")
                first, last = 0, -1
                for line in head.decode().split("\r\n"):
                    if line.lower().startswith("range: bytes="):
                        a, b = line.split("=", 1)[1].split("-")
                        first, last = int(a), int(b)
                self.requests.append((first, last))
                await self.behaviour(writer, first, last)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def head(self, first: int, last: int, size: int, length: int | None) -> bytes:
        lines = ["HTTP/1.1 206 Partial Content", f"Content-Range: bytes {first}-{last}/{size}"]
        lines.append(f"Content-Length: {length}" if length is not None else "Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
