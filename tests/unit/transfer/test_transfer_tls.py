"""The transfer plane over mutual TLS, real handshakes on loopback (no ssl mocks).

A recipient fetches from a donor whose certificate names the donor id it was offered;
a donor with another node's certificate, or one from another CA, is refused in the
handshake; a token presented over a TLS session of another node (or with no client
certificate) is refused by the donor and stays good for its recipient."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from fwrescue.config import TlsSettings
from fwrescue.errors import DonorUnavailable
from fwrescue.transfer.client import ImageFetcher
from fwrescue.transfer.server import TransferServer
from fwrescue.transfer.staging import StagingArea
from fwrescue.transfer.tokens import TokenRegistry
from fwrescue.trust.fleet_ca_cli import CA_CERT, init_ca, issue_node
from fwrescue.trust.transfer_tls import client_context, server_context
from fwrescue.trust.verifier import Verifier
from tests.unit.transfer.testkit import TOKEN, Donor, FakeClock, MemoryCatalog, Package

DONOR = "donor-1"
RECIPIENT = "node-r"


class Fleet:
    """A fleet CA (and a second, foreign one) issuing identities on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        init_ca(root / "ca")
        init_ca(root / "foreign-ca")

    def identity(self, node_id: str, *, ca: str = "ca") -> TlsSettings:
        cert, key = issue_node(self.root / ca, node_id, self.root / ca / "nodes" / node_id)
        return TlsSettings(ca=self.root / "ca" / CA_CERT, cert=cert, key=key)

    def client(self, node_id: str | None) -> ssl.SSLContext:
        if node_id is None:  # no client certificate at all
            ctx = ssl.create_default_context(cafile=str(self.root / "ca" / CA_CERT))
            return ctx
        t = self.identity(node_id)
        return client_context(t.ca, t.cert, t.key)


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path / "fleet")


StartTls = Callable[..., Awaitable[tuple[TransferServer, TokenRegistry, str]]]


@pytest.fixture
async def tls_donor(package: Package, fleet: Fleet) -> AsyncIterator[StartTls]:
    servers: list[TransferServer] = []

    async def start(cert_of: str = DONOR, ca: str = "ca") -> tuple[TransferServer,
                                                                  TokenRegistry, str]:
        clock = FakeClock()
        registry = TokenRegistry(clock=clock)
        registry.grant(TOKEN, image_sha256=package.sha256, manifest_digest=package.digest,
                       expires_at=clock.now + 60, recipient_id=RECIPIENT)
        catalog = MemoryCatalog({package.digest: package.raw},
                                {package.sha256: package.path})
        t = fleet.identity(cert_of, ca=ca)
        # a donor trusts the genuine fleet CA for its clients whatever signed its own cert
        server = TransferServer(catalog, registry,
                                ssl_context=server_context(fleet.root / "ca" / CA_CERT,
                                                           t.cert, t.key))
        url = await server.start("127.0.0.1", 0)
        servers.append(server)
        return server, registry, url

    yield start
    for server in servers:
        await server.stop()


async def _fetch(fleet: Fleet, url: str, package: Package, staging: StagingArea,
                 verifier: Verifier, *, client: str | None = RECIPIENT,
                 donor_id: str = DONOR) -> bytes:
    connector = aiohttp.TCPConnector(ssl=fleet.client(client))
    async with aiohttp.ClientSession(connector=connector) as session:
        fetcher = ImageFetcher(session, require_tls=True)
        raw = await fetcher.fetch_manifest(url, package.digest, TOKEN, donor_id=donor_id)
        assert raw == package.raw
        staged = staging.open(package.verified)
        await fetcher.fetch_image(url, TOKEN, package.verified, staged, donor_id=donor_id)
        return staged.finalize(verifier, package.verified).read_bytes()


async def test_a_transfer_over_mutual_tls_recovers_the_signed_image_with_one_handshake(
        tls_donor: StartTls, fleet: Fleet, package: Package, staging: StagingArea,
        verifier: Verifier) -> None:
    server, _, url = await tls_donor()
    assert url.startswith("https://127.0.0.1:")
    connector = aiohttp.TCPConnector(ssl=fleet.client(RECIPIENT))
    async with aiohttp.ClientSession(connector=connector) as session:
        fetcher = ImageFetcher(session, require_tls=True)
        staged = staging.open(package.verified)
        n = package.verified.manifest.chunk_count
        got: dict[int, bytes] = {}
        for first in range(0, n, 8):  # many ranges from one donor, as a swarm asks
            await fetcher.fetch_chunks(url, TOKEN, package.verified, first,
                                       min(first + 7, n - 1), got.__setitem__,
                                       donor_id=DONOR)
        for index, data in got.items():
            staged.begin_chunk(index)
            staged.write_chunk(index, data)
            staged.mark_verified(index)
        assert staged.finalize(verifier, package.verified).read_bytes() == package.data
        # keep-alive: every range rode one connection (one TLS handshake)
        assert len(connector._conns) == 1
        assert sum(len(v) for v in connector._conns.values()) == 1
    assert server.stats.image_bytes == len(package.data)


async def test_fetch_manifest_and_image_over_tls(
        tls_donor: StartTls, fleet: Fleet, package: Package, staging: StagingArea,
        verifier: Verifier) -> None:
    _, _, url = await tls_donor()
    assert await _fetch(fleet, url, package, staging, verifier) == package.data


@pytest.mark.parametrize(("cert_of", "ca"), [("node-x", "ca"), (DONOR, "foreign-ca")],
                         ids=["names-another-node", "another-ca"])
async def test_a_donor_without_the_offered_identity_is_refused_in_the_handshake(
        tls_donor: StartTls, fleet: Fleet, package: Package, staging: StagingArea,
        verifier: Verifier, cert_of: str, ca: str) -> None:
    server, _, url = await tls_donor(cert_of=cert_of, ca=ca)
    with pytest.raises(DonorUnavailable, match="TLS handshake"):
        await _fetch(fleet, url, package, staging, verifier)
    assert server.stats.image_bytes == 0


@pytest.mark.parametrize("client", ["node-x", None], ids=["another-nodes-cert", "no-cert"])
async def test_a_token_over_another_nodes_session_is_refused_and_stays_good(
        tls_donor: StartTls, fleet: Fleet, package: Package, staging: StagingArea,
        verifier: Verifier, tmp_path: Path, client: str | None) -> None:
    server, registry, url = await tls_donor()
    with pytest.raises(DonorUnavailable) as refused:
        await _fetch(fleet, url, package, staging, verifier, client=client)
    if client is not None:  # a fleet member: the session opens, the token does not
        assert refused.value.fields.get("status") == 403
    assert server.stats.image_bytes == 0
    assert len(registry) == 1  # the grant is untouched ...
    # ... and its recipient still gets the image with it
    assert await _fetch(fleet, url, package, StagingArea(tmp_path / "again"),
                        verifier) == package.data


async def test_a_plain_http_donor_is_refused_when_tls_is_configured(
        donors: Callable[..., Awaitable[Donor]], fleet: Fleet, package: Package,
        staging: StagingArea, verifier: Verifier) -> None:
    donor = await donors(package)
    url = donor.base_url
    assert url.startswith("http://")
    with pytest.raises(DonorUnavailable, match="plain HTTP"):
        await _fetch(fleet, url, package, staging, verifier)
    assert donor.server.stats.image_bytes == 0


async def test_a_tls_server_context_must_demand_client_certificates(
        fleet: Fleet, package: Package) -> None:
    from fwrescue.errors import ConfigError

    t = fleet.identity(DONOR)
    loose = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    loose.load_cert_chain(t.cert, t.key)
    with pytest.raises(ConfigError, match="client certificates"):
        TransferServer(MemoryCatalog({}, {}), TokenRegistry(clock=FakeClock()),
                       ssl_context=loose)
