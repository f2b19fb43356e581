"""HttpSource against a real aiohttp server on 127.0.0.1 (plain HTTP and HTTPS)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import random
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fwrescue.errors import SourceError
from fwrescue.image.package import build_package, open_package
from fwrescue.sources import DirectorySource, HttpSource, locate
from fwrescue.trust.keys import SigningKey, TrustStore, generate_keypair
from fwrescue.trust.rollback import RollbackStore
from fwrescue.trust.verifier import Verifier

IMAGE = random.Random(5).randbytes(200_000)
BLOCK = 64 * 1024


class Events:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def __call__(self, event: str, /, **fields: object) -> None:
        self.events.append((event, fields))

    def named(self, event: str) -> list[dict[str, object]]:
        return [f for name, f in self.events if name == event]


class Site:
    def __init__(self, base: str, root: Path, work: Path, staging: Path,
                 verifier: Verifier) -> None:
        self.base, self.root, self.work, self.staging, self.verifier = (
            base, root, work, staging, verifier)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fwrescue test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _app(root: Path, release: asyncio.Event) -> web.Application:
    async def package(request: web.Request) -> web.StreamResponse:
        path = root / request.match_info["name"]
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked, no Content-Length: only the client bounds it
        await response.prepare(request)
        try:
            for _ in range(256):  # at most 16 MiB, far beyond the client's limit
                await response.write(b"\0" * BLOCK)
        except (ConnectionError, RuntimeError):
            pass
        return response

    async def liar(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 50 * 1024 * 1024
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write(b"\0" * 1024)
        return response

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"\0" * 1024)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 10)
        return response

    app = web.Application()
    app.router.add_get("/pkg/{name}", package)
    app.router.add_get("/endless", endless)
    app.router.add_get("/liar", liar)
    app.router.add_get("/stall", stall)
    return app


async def _serve(app: web.Application, ssl_context: ssl.SSLContext | None = None
                 ) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    return runner, int(port)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    generate_keypair(tmp_path / "keys", "release")
    key = SigningKey.load(tmp_path / "keys" / "release.key")
    root = tmp_path / "www"
    root.mkdir()
    image = tmp_path / "image.bin"
    image.write_bytes(IMAGE)
    for machine in ("board-a", "board-b"):
        build_package(image, root / f"{machine}.fwpkg", key=key, target="bios",
                      machine_names=[machine], version="1.0", security_version=1)
    data = bytearray((root / "board-a.fwpkg").read_bytes())
    data[open_package(root / "board-a.fwpkg").image_offset + 1] ^= 0xFF
    (root / "tampered.fwpkg").write_bytes(bytes(data))
    release = asyncio.Event()
    runner, port = await _serve(_app(root, release))
    verifier = Verifier(TrustStore.from_files([tmp_path / "keys"]),
                        RollbackStore(tmp_path / "floors.json"))
    work, staging = tmp_path / "work", tmp_path / "staging"
    work.mkdir()
    staging.mkdir()
    try:
        yield Site(f"http://127.0.0.1:{port}", root, work, staging, verifier)
    finally:
        release.set()
        await runner.cleanup()


async def _locate(site: Site, *sources: Any, events: Events | None = None) -> Any:
    return await locate(list(sources), site.verifier, "bios", "board-a", site.work,
                        site.staging, events or Events())


async def _fetch_error(source: HttpSource, site: Site) -> SourceError:
    with pytest.raises(SourceError) as caught:
        async for _ in source.candidates("bios", "board-a", site.work):
            pass
    assert os.listdir(site.work) == []  # the partial download was removed
    return caught.value


async def test_good_package_over_http_is_staged_and_the_download_removed(site: Site) -> None:
    found = await _locate(site, HttpSource(f"{site.base}/pkg/{{machine}}.fwpkg"))
    assert found is not None
    _, staged, origin = found
    assert staged.read_bytes() == IMAGE
    assert origin == f"http:{site.base}/pkg/board-a.fwpkg"
    assert os.listdir(site.work) == []


async def test_tampered_package_over_http_is_refused_and_the_next_source_used(
        site: Site, tmp_path: Path) -> None:
    usb = tmp_path / "usb"
    usb.mkdir()
    (usb / "p.fwpkg").write_bytes((site.root / "board-a.fwpkg").read_bytes())
    events = Events()
    found = await _locate(site, HttpSource(f"{site.base}/pkg/tampered.fwpkg"),
                          DirectorySource(usb, "usb"), events=events)
    assert found is not None and found[2].startswith("usb:")
    assert [f["error"] for f in events.named("candidate_rejected")] == ["ChunkMismatch"]
    assert os.listdir(site.work) == []


async def test_package_for_another_board_over_http_is_refused(site: Site) -> None:
    events = Events()
    assert await _locate(site, HttpSource(f"{site.base}/pkg/board-b.fwpkg"),
                         events=events) is None
    assert [f["error"] for f in events.named("candidate_rejected")] == ["CompatibilityError"]


async def test_endless_body_is_aborted_mid_stream_at_the_size_bound(site: Site) -> None:
    error = await _fetch_error(HttpSource(f"{site.base}/endless", max_bytes=300_000), site)
    assert error.fields["reason"] == "too_large"


async def test_declared_oversize_body_is_refused_before_reading(site: Site) -> None:
    error = await _fetch_error(HttpSource(f"{site.base}/liar", max_bytes=1_000_000), site)
    assert error.fields["reason"] == "too_large" and error.fields["size"] == 50 * 1024 * 1024


async def test_missing_package_is_a_status_source_error(site: Site) -> None:
    error = await _fetch_error(HttpSource(f"{site.base}/pkg/nothing.fwpkg"), site)
    assert error.fields["reason"] == "status" and error.fields["status"] == 404
    events = Events()
    assert await _locate(site, HttpSource(f"{site.base}/pkg/nothing.fwpkg"),
                         events=events) is None
    assert "error status" in str(events.named("source_failed")[0]["reason"])


async def test_unreachable_port_is_a_source_error(site: Site) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    error = await _fetch_error(HttpSource(f"http://127.0.0.1:{port}/p.fwpkg"), site)
    assert error.fields["reason"] == "unreachable"


async def test_stalled_server_is_a_timeout_source_error(site: Site) -> None:
    error = await _fetch_error(HttpSource(f"{site.base}/stall", stall_timeout=0.3), site)
    assert error.fields["reason"] == "timeout"


async def test_https_is_verified_by_default_and_accepts_a_site_ca(
        site: Site, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner, port = await _serve(_app(site.root, asyncio.Event()), context)
    try:
        url = f"https://127.0.0.1:{port}/pkg/board-a.fwpkg"
        error = await _fetch_error(HttpSource(url), site)
        assert error.fields["reason"] == "tls"
        found = await _locate(site, HttpSource(url, ca_file=cert))
        assert found is not None and found[1].read_bytes() == IMAGE
    finally:
        await runner.cleanup()
