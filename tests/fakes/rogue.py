"""Rogue donors for end-to-end tests: real DonorServices on the real wire that lie.

A :class:`RogueDonor` is a :class:`~fwrescue.donor.service.DonorService` whose catalog
advertises whatever the test asks (a newer version, a higher security_version,
another board) and whose responder answers at once and never suppresses itself,
so a ``newest`` recipient ranks it first. Its package store is filled with
:func:`plant`, which bypasses every trust check a genuine donor would run.

The four kinds of lies used by the tests (one factory each):

* :func:`rolled_back` — a genuinely signed, *older* release offered as the newest;
* :func:`rogue_signed` — an image signed by a key the fleet does not trust;
* :func:`other_board` — a genuine release of another board offered as this board's;
* :func:`corrupted_carrier` — the genuine manifest, with image bytes flipped on disk.

Also :func:`isolated_network`: a multicast group and port of a test's own, so tests
run in parallel with each other and with demos.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fwrescue.config import DonorSettings, NetworkSettings
from fwrescue.donor.responder import OfferableImage
from fwrescue.donor.service import DonorService
from fwrescue.image.package import build_package
from fwrescue.image.store import PackageStore, StoredImage
from fwrescue.protocol.messages import DonorKind
from fwrescue.sim.fleet import member_network
from fwrescue.trust.keys import SigningKey, generate_keypair
from fwrescue.trust.manifest import SignedManifest
from fwrescue.trust.verifier import VerifiedManifest, sha256_file

if TYPE_CHECKING:
    from fwrescue.agent import Agent
    from fwrescue.flash.device import WriteReport

__all__ = [
    "Claim",
    "RogueDonor",
    "corrupted_carrier",
    "isolated_network",
    "other_board",
    "plant",
    "record_flash_writes",
    "rogue_signed",
    "rolled_back",
]


def isolated_network(rng: random.Random | None = None) -> NetworkSettings:
    """A multicast group and port of this test's own (RFC 2365 organization-local scope)."""
    rng = rng or random.Random()
    return NetworkSettings(group=f"239.254.{rng.randint(1, 254)}.{rng.randint(1, 254)}",
                           port=rng.randint(20000, 32000))


def plant(store: PackageStore, signed: SignedManifest, image: Path) -> StoredImage:
    """Put ``signed`` and ``image`` into ``store`` with no signature, board or floor check.

    Only the store's own size/SHA-256 check of the image against the manifest runs.
    """
    return store.put(VerifiedManifest(signed), image, move=False)


@dataclasses.dataclass(frozen=True)
class Claim:
    """What a rogue's OFFERs say about each image it holds (None: tell the truth)."""

    version: str | None = "9.9.9"
    security_version: int | None = 99
    machine_names: tuple[str, ...] | None = None
    held: int | None = None  # set: offer as a partial donor holding this many chunks


class RogueDonor(DonorService):
    """A donor that advertises ``claim`` for every stored image and answers first.

    Its responder offers with no delay and no jitter and ignores duplicate-answer
    suppression; everything else (ACK, tokens, transfer server) is the genuine code.
    """

    def __init__(self, *, donor_id: str, store: PackageStore, network: NetworkSettings,
                 claim: Claim, kind: DonorKind = DonorKind.PEER) -> None:
        # A rogue is a compromised fleet member: in a TLS fleet it holds a genuine
        # certificate for its own id (TLS authenticates carriers, not their bytes).
        super().__init__(donor_id=donor_id, kind=kind, store=store,
                         network=member_network(network, donor_id),
                         settings=DonorSettings(max_uploads=4, lease_s=30.0),
                         rng=random.Random(hash(donor_id)))
        self.claim = claim
        self.donor_id = donor_id

    def catalog(self) -> list[OfferableImage]:
        c = self.claim
        return [dataclasses.replace(
            image,
            version=c.version if c.version is not None else image.version,
            security_version=(c.security_version if c.security_version is not None
                              else image.security_version),
            machine_names=c.machine_names if c.machine_names is not None
            else image.machine_names,
            held=c.held if c.held is not None else image.held)
            for image in super().catalog()]

    async def start(self) -> None:
        await super().start()
        assert self.responder is not None
        self.responder.limits = dataclasses.replace(
            self.responder.limits, base_delay=0.0, jitter=0.0, console_extra_delay=0.0,
            suppress_after=65_535)


def _store(root: Path) -> PackageStore:
    return PackageStore(root / "store")


def rolled_back(root: Path, *, donor_id: str, network: NetworkSettings, signed: SignedManifest,
                image: Path, claim: Claim | None = None) -> RogueDonor:
    """Serves a genuinely signed release (``signed``, below the recipient's floor) while its
    OFFER claims a high security_version."""
    store = _store(root)
    plant(store, signed, image)
    return RogueDonor(donor_id=donor_id, store=store, network=network, claim=claim or Claim())


def rogue_signed(root: Path, *, donor_id: str, network: NetworkSettings, board: str,
                 image: Path, security_version: int = 7,
                 claim: Claim | None = None) -> RogueDonor:
    """Serves ``image`` for ``board`` signed by a freshly generated key nobody trusts."""
    private, _ = generate_keypair(root / "rogue-keys", "rogue")
    package = root / "rogue.fwpkg"
    signed = build_package(image, package, key=SigningKey.load(private), target="bios",
                           machine_names=[board], version="6.6.6",
                           security_version=security_version)
    store = _store(root)
    plant(store, signed, image)
    return RogueDonor(donor_id=donor_id, store=store, network=network, claim=claim or Claim())


def other_board(root: Path, *, donor_id: str, network: NetworkSettings, signed: SignedManifest,
                image: Path, claimed_boards: Sequence[str],
                claim: Claim | None = None) -> RogueDonor:
    """Serves a genuine release of another board; its catalog claims ``claimed_boards``."""
    store = _store(root)
    plant(store, signed, image)
    base = claim or Claim()
    return RogueDonor(donor_id=donor_id, store=store, network=network,
                      claim=dataclasses.replace(base, machine_names=tuple(claimed_boards)))


def corrupted_carrier(root: Path, *, donor_id: str, network: NetworkSettings,
                      signed: SignedManifest, image: Path, flip_chunk: int = 2,
                      claim: Claim | None = None, flip_all: bool = False) -> RogueDonor:
    """Serves the genuine manifest, but one byte of chunk ``flip_chunk`` of the stored image
    (of every chunk with ``flip_all``) is flipped on disk after the store checked it."""
    store = _store(root)
    stored = plant(store, signed, image)
    manifest = signed.manifest
    chunks = (range(manifest.chunk_count) if flip_all
              else [min(flip_chunk, manifest.chunk_count - 1)])
    with open(stored.image_path, "r+b") as f:
        for index in chunks:
            offset, length = manifest.chunk_span(index)
            f.seek(offset + length // 2)
            byte = f.read(1)
            f.seek(offset + length // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
    return RogueDonor(donor_id=donor_id, store=store, network=network, claim=claim or Claim())


def record_flash_writes(agent: Agent, target: str = "bios") -> list[str]:
    """Wrap ``agent``'s flash for ``target``: the returned list gets the SHA-256 of every
    image handed to ``write`` or to the engine's cancellable ``write_until``."""
    flash = agent.targets[target].flash
    original: Callable[..., WriteReport] = flash.write
    written: list[str] = []

    def write(offset: int, image: Path, progress: Any = None) -> WriteReport:
        written.append(sha256_file(image))
        return original(offset, image, progress)

    setattr(flash, "write", write)  # noqa: B010 - an instance override, on purpose
    if hasattr(flash, "write_until"):  # the engine's cancellable write (StoppableFlash)
        until: Callable[..., WriteReport] = flash.write_until

        def write_until(offset: int, image: Path, progress: Any, stop: Any) -> WriteReport:
            written.append(sha256_file(image))
            return until(offset, image, progress, stop)

        setattr(flash, "write_until", write_until)  # noqa: B010
    return written
