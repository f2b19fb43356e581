"""Every trust decision fwrescue makes, in one place.

Donors, mirrors, USB sticks and web servers are untrusted carriers (TUF's view of
mirrors). A package is trusted only when all of these hold, checked in this order,
each raising its own :class:`~fwrescue.errors.TrustError` subclass:

1. **Bounded.** The manifest envelope is at most ``max_manifest_bytes`` and parses
   strictly (:meth:`SignedManifest.parse`); ``size`` is at most ``max_image_size``.
2. **Addressed.** When the carrier named a digest (an OFFER), the envelope hashes to it.
3. **Signed.** The signature verifies against a key in the agent's trust store.
4. **Compatible.** ``target`` is the component being recovered and this machine's
   board is among ``machine_names`` (OpenBMC rejects a foreign ``MachineName`` too).
5. **Not rolled back.** ``security_version`` is at least the persisted floor for the
   target and the fleet floor (the agent's ``fleet_floor`` setting; Uptane's release counter).
6. **Exact bytes.** Every chunk matches its signed SHA-256 as it arrives, and the
   whole staged image matches ``sha256`` and ``size`` before any flash write, whether
   the file is hashed in one pass (:meth:`Verifier.verify_image_file`) or its digest
   was accumulated over the staged bytes (:meth:`Verifier.verify_image_digest`).

Bytes read back after a write (the flash, a bank) are the signed image only when
:meth:`Verifier.image_matches` says so. After a successful flash,
:meth:`Verifier.commit_flashed` raises the floor; it never lowers it.

Nothing outside :mod:`fwrescue.trust` decides whether bytes are trusted: other modules
compute digests at their edge and ask this module (or :mod:`fwrescue.trust.digests`, the
constant-time comparisons underneath: content addresses, MAC tags, recorded digests);
``tests/unit/test_trust_boundary.py`` checks ``src/`` for comparisons made elsewhere.
The checks here are pure but for :func:`sha256_file` / :meth:`Verifier.verify_image_file`,
which hash a staged file in one pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fwrescue.errors import (
    ChunkMismatch,
    CompatibilityError,
    RollbackError,
    SizeLimitExceeded,
)
from fwrescue.trust.digests import digests_match
from fwrescue.trust.keys import TrustStore, manifest_signed_bytes
from fwrescue.trust.manifest import MAX_IMAGE_SIZE, MAX_MANIFEST_BYTES, Manifest, SignedManifest
from fwrescue.trust.rollback import RollbackStore

__all__ = ["VerifiedManifest", "Verifier", "sha256_file"]

_READ_BLOCK = 1024 * 1024


def sha256_file(path: Path, length: int | None = None) -> str:
    """SHA-256 of a file (or its first ``length`` bytes), streamed in 1 MiB blocks."""
    digest = hashlib.sha256()
    remaining = length
    with open(path, "rb") as f:
        while remaining is None or remaining > 0:
            block = f.read(_READ_BLOCK if remaining is None else min(_READ_BLOCK, remaining))
            if not block:
                break
            digest.update(block)
            if remaining is not None:
                remaining -= len(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest that passed steps 1–5. Only :class:`Verifier` constructs these."""

    signed: SignedManifest

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest

    @property
    def digest(self) -> str:
        return self.signed.digest


class Verifier:
    """The trust policy of one agent: its trust store, floors and limits."""

    def __init__(
        self,
        trust_store: TrustStore,
        rollback: RollbackStore,
        *,
        max_image_size: int = MAX_IMAGE_SIZE,
        max_manifest_bytes: int = MAX_MANIFEST_BYTES,
        fleet_floor: Callable[[str], int] | None = None,
    ) -> None:
        self._trust_store = trust_store
        self._rollback = rollback
        self._max_image_size = max_image_size
        self._max_manifest_bytes = max_manifest_bytes
        self._fleet_floor = fleet_floor

    def floor(self, target: str) -> int:
        """The effective anti-rollback floor: the higher of the persisted and the fleet floor."""
        fleet = self._fleet_floor(target) if self._fleet_floor else 0
        return max(self._rollback.floor(target), fleet)

    def verify_manifest(
        self,
        raw: bytes,
        *,
        target: str,
        machine_name: str,
        expected_digest: str | None = None,
    ) -> VerifiedManifest:
        """Steps 1–5 for an envelope from an untrusted carrier; raise a TrustError subclass."""
        signed = SignedManifest.parse(raw, max_bytes=self._max_manifest_bytes)  # step 1
        return self.verify_signed(signed, target=target, machine_name=machine_name,
                                  expected_digest=expected_digest)

    def verify_signed(
        self,
        signed: SignedManifest,
        *,
        target: str,
        machine_name: str,
        expected_digest: str | None = None,
    ) -> VerifiedManifest:
        """Steps 1–5 for an already parsed envelope."""
        manifest = signed.manifest
        if manifest.size > self._max_image_size:  # step 1
            raise SizeLimitExceeded("image larger than this agent accepts",
                                    size=manifest.size, limit=self._max_image_size)
        if expected_digest is not None and not digests_match(  # step 2
                signed.digest, expected_digest):
            raise ChunkMismatch("manifest does not match the offered digest",
                                expected=expected_digest, actual=signed.digest)
        self._trust_store.verify(signed.key_id, signed.signature,  # step 3
                                 manifest_signed_bytes(manifest))
        if manifest.target != target:  # step 4
            raise CompatibilityError("package is for another component",
                                     package_target=manifest.target, target=target)
        if machine_name not in manifest.machine_names:
            raise CompatibilityError("package is for another board",
                                     machine_names=list(manifest.machine_names),
                                     machine_name=machine_name)
        floor = self.floor(target)  # step 5
        if manifest.security_version < floor:
            raise RollbackError("security version below the anti-rollback floor",
                                security_version=manifest.security_version, floor=floor)
        return VerifiedManifest(signed)

    def verify_signed_ignoring_floor(self, signed: SignedManifest, *, target: str,
                                     machine_name: str) -> VerifiedManifest:
        """Steps 1, 3 and 4, for the record of what is *already* on flash (to check the
        flash against it, or to re-write a staged image after a restart). Step 5 is left out
        because a fleet floor may have risen past the installed image since; that is an
        update to schedule, not a reason to distrust the record."""
        if signed.manifest.size > self._max_image_size:
            raise SizeLimitExceeded("image larger than this agent accepts",
                                    size=signed.manifest.size, limit=self._max_image_size)
        self._trust_store.verify(signed.key_id, signed.signature,
                                 manifest_signed_bytes(signed.manifest))
        manifest = signed.manifest
        if not manifest.fits(target, machine_name):
            raise CompatibilityError("package is for another component or board",
                                     package_target=manifest.target, target=target,
                                     machine_name=machine_name)
        return VerifiedManifest(signed)

    def verify_for_donation(self, signed: SignedManifest) -> VerifiedManifest:
        """Steps 1 and 3 only, for a donor or console that serves many boards: it checks the
        package is bounded and authentically signed; each recipient still runs every step."""
        if signed.manifest.size > self._max_image_size:
            raise SizeLimitExceeded("image larger than this agent accepts",
                                    size=signed.manifest.size, limit=self._max_image_size)
        self._trust_store.verify(signed.key_id, signed.signature,
                                 manifest_signed_bytes(signed.manifest))
        return VerifiedManifest(signed)

    @staticmethod
    def verify_chunk(verified: VerifiedManifest, index: int, data: bytes) -> None:
        """Step 6 for one chunk; raise ChunkMismatch on a wrong length or digest."""
        manifest = verified.manifest
        _, length = manifest.chunk_span(index)
        if len(data) != length:
            raise ChunkMismatch("chunk has the wrong length", index=index,
                                expected=length, actual=len(data))
        if not digests_match(hashlib.sha256(data).hexdigest(), manifest.chunks[index]):
            raise ChunkMismatch("chunk digest does not match the signed list", index=index)

    @staticmethod
    def verify_image_file(verified: VerifiedManifest, path: Path) -> None:
        """Step 6 for a whole staged image file: exact size and SHA-256."""
        manifest = verified.manifest
        size = path.stat().st_size
        if size != manifest.size:
            raise ChunkMismatch("staged image has the wrong size", expected=manifest.size,
                                actual=size)
        if not digests_match(sha256_file(path), manifest.sha256):
            raise ChunkMismatch("staged image digest does not match the manifest")

    @staticmethod
    def verify_image_digest(verified: VerifiedManifest, sha256_hex: str, size: int) -> None:
        """Step 6 for a whole staged image whose SHA-256 the caller accumulated over
        exactly ``size`` staged bytes; raise ChunkMismatch unless both match the manifest."""
        manifest = verified.manifest
        if size != manifest.size:
            raise ChunkMismatch("staged image has the wrong size", expected=manifest.size,
                                actual=size)
        if not digests_match(sha256_hex, manifest.sha256):
            raise ChunkMismatch("staged image digest does not match the manifest")

    @staticmethod
    def image_matches(verified: VerifiedManifest, sha256_hex: str) -> bool:
        """Whether bytes whose SHA-256 the caller computed over ``manifest.size`` bytes (a
        flash read-back, a bank) are the signed image. The caller decides what a mismatch
        means (a retry, a failed integrity check); the comparison is this one."""
        return digests_match(sha256_hex, verified.manifest.sha256)

    def commit_flashed(self, verified: VerifiedManifest) -> bool:
        """Raise the floor after a successful flash and boot; never lowers it."""
        manifest = verified.manifest
        return self._rollback.raise_floor(manifest.target, manifest.security_version)
