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
run in parallel with each other and with demos, and :class:`ReplayRogue`, which has no
store and no fleet key: it re-sends honest OFFER and ACK datagrams it captured.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fwrescue.config import DonorSettings, NetworkSettings
from fwrescue.donor.responder import OfferableImage
from fwrescue.donor.service import DonorService
from fwrescue.image.package import build_package
from fwrescue.image.store import PackageStore, StoredImage
from fwrescue.protocol.messages import DonorKind
from fwrescue.protocol.session import GROUP, Address, Destination
from fwrescue.sim.fleet import member_network
from fwrescue.trust.keys import SigningKey, generate_keypair
from fwrescue.trust.manifest import SignedManifest
from fwrescue.trust.verifier import VerifiedManifest, sha256_file

if TYPE_CHECKING:
    from fwrescue.agent import Agent
    from fwrescue.flash.device import WriteReport

__all__ = [
    "Claim",
    "ReplayRogue",
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
                 claim: Claim, kind: DonorKind = DonorKind.PEER,
                 max_uploads: int = 4) -> None:
        # A rogue is a compromised fleet member: in a TLS fleet it holds a genuine
        # certificate for its own id (TLS authenticates carriers, not their bytes).
        super().__init__(donor_id=donor_id, kind=kind, store=store,
                         network=member_network(network, donor_id),
                         settings=DonorSettings(max_uploads=max_uploads, lease_s=30.0),
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


_CAPTURED = (b'{"t":"offer"', b'{"t":"ack"')  # body starts (compact JSON, type first)


class ReplayRogue:
    """Re-sends genuine OFFER and ACK datagrams it captured; it holds no fleet key.

    :meth:`tap` puts it on an honest agent's wire (a mirror port: it sees that agent's
    datagrams, unicast ACKs too). Each captured datagram is sent again, from its own
    socket, ``delay`` seconds later:

    * **again** — byte for byte to the same destination (the recipient's codec has seen
      its nonce);
    * **elsewhere** — its ``recipient_id`` rewritten to another node's (same length) and
      the tag kept, to the group (the HMAC no longer matches);
    * **later** — :meth:`replay_old` sends the datagrams kept from earlier rounds again
      (their timestamps leave the replay window; inside it, a new session's xid differs).

    ``sent`` maps every datagram it sent to its kind (the newest ``max_sent``), so a codec
    watch can tell what became of each."""

    def __init__(self, *, group: str, port: int, node_ids: Sequence[str],
                 delay: float = 0.02, keep_old: int = 32, max_sent: int = 8192) -> None:
        self.group, self.port, self.delay = group, port, delay
        self.node_ids = list(node_ids)
        self.fresh: deque[tuple[float, bytes, Destination]] = deque(maxlen=1024)
        self.old: deque[tuple[bytes, Destination]] = deque(maxlen=keep_old)
        self.sent: OrderedDict[bytes, str] = OrderedDict()
        self.counts: dict[str, int] = {"again": 0, "elsewhere": 0, "later": 0}
        self._max_sent = max_sent
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    def tap(self, shared_link: object) -> None:
        """Copy every OFFER/ACK an agent's :class:`SharedLink` sends (instance override)."""
        send: Callable[[bytes, Destination], None] = getattr(shared_link, "_send")  # noqa: B009

        def tapped(data: bytes, dest: Destination) -> None:
            send(data, dest)
            if data[8:20].startswith(_CAPTURED):
                self.fresh.append((time.monotonic() + self.delay, data, dest))

        setattr(shared_link, "_send", tapped)  # noqa: B010

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sock.setblocking(False)
        self._sock = sock
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def replay_old(self) -> None:
        """Send every datagram kept from earlier rounds again, byte for byte."""
        for data, dest in list(self.old):
            self._send(data, dest, "later")

    async def _loop(self) -> None:
        while True:
            now = time.monotonic()
            while self.fresh and self.fresh[0][0] <= now:
                _, data, dest = self.fresh.popleft()
                self._send(data, dest, "again")
                moved = self._readdress(data)
                if moved is not None:
                    self._send(moved, GROUP, "elsewhere")
                self.old.append((data, dest))
            await asyncio.sleep(self.delay / 2)

    def _readdress(self, data: bytes) -> bytes | None:
        for rid in self.node_ids:
            needle = f'"recipient_id":"{rid}"'.encode()
            if needle in data:
                other = next((o for o in self.node_ids if o != rid and len(o) == len(rid)),
                             None)
                if other is None:
                    return None
                return data.replace(needle, f'"recipient_id":"{other}"'.encode(), 1)
        return None

    def _send(self, data: bytes, dest: Destination, kind: str) -> None:
        if self._sock is None:
            return
        target: Address = (self.group, self.port) if dest is GROUP else dest
        try:
            self._sock.sendto(data, target)
        except OSError:
            return  # a full socket buffer: this replay is lost, like any datagram
        self.counts[kind] += 1
        self.sent.pop(data, None)
        self.sent[data] = kind
        while len(self.sent) > self._max_sent:
            self.sent.popitem(last=False)
