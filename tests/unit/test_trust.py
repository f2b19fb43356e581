"""The one trust module: each check rejects what it must, and the floor never goes down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fwrescue.errors import (
    ChunkMismatch,
    CompatibilityError,
    JournalError,
    ManifestError,
    RollbackError,
    SignatureError,
    SizeLimitExceeded,
)
from fwrescue.trust.digests import addressed, digests_match, image_hasher, sha256_hex
from fwrescue.trust.manifest import SignedManifest
from fwrescue.trust.rollback import RollbackStore
from fwrescue.trust.verifier import Verifier
from tests.fakes.firmware import Signer


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer(tmp_path / "keys")


def test_genuine_manifest_for_this_board_verifies(signer: Signer, tmp_path: Path) -> None:
    fw = signer.firmware(machines=("board-a", "board-b"))
    verified = signer.verifier(tmp_path).verify_manifest(
        fw.signed.raw, target="bios", machine_name="board-b", expected_digest=fw.signed.digest)
    assert verified.manifest.sha256 == fw.manifest.sha256


def test_manifest_for_another_board_is_refused(signer: Signer, tmp_path: Path) -> None:
    fw = signer.firmware(machines=("board-a",))
    with pytest.raises(CompatibilityError):
        signer.verifier(tmp_path).verify_manifest(fw.signed.raw, target="bios",
                                                  machine_name="board-b")


def test_manifest_for_another_component_is_refused(signer: Signer, tmp_path: Path) -> None:
    fw = signer.firmware(target="cpld")
    with pytest.raises(CompatibilityError):
        signer.verifier(tmp_path).verify_manifest(fw.signed.raw, target="bios",
                                                  machine_name="board-a")


def test_manifest_signed_by_an_unknown_key_is_refused(signer: Signer, tmp_path: Path) -> None:
    rogue = Signer(tmp_path / "rogue", name="rogue")
    fw = rogue.firmware()
    with pytest.raises(SignatureError, match="untrusted key"):
        signer.verifier(tmp_path).verify_manifest(fw.signed.raw, target="bios",
                                                  machine_name="board-a")


def test_edited_manifest_fails_its_signature(signer: Signer, tmp_path: Path) -> None:
    fw = signer.firmware(security_version=1)
    doc = json.loads(fw.signed.raw)
    doc["signed"]["security_version"] = 99
    with pytest.raises(SignatureError, match="does not verify"):
        signer.verifier(tmp_path).verify_manifest(json.dumps(doc).encode(), target="bios",
                                                  machine_name="board-a")


def test_manifest_not_matching_the_offered_digest_is_refused(signer: Signer,
                                                             tmp_path: Path) -> None:
    fw = signer.firmware()
    with pytest.raises(ChunkMismatch):
        signer.verifier(tmp_path).verify_manifest(fw.signed.raw, target="bios",
                                                  machine_name="board-a",
                                                  expected_digest="0" * 64)


def test_rolled_back_security_version_is_refused_and_floor_never_lowers(
        signer: Signer, tmp_path: Path) -> None:
    verifier = signer.verifier(tmp_path)
    new = verifier.verify_manifest(signer.firmware(security_version=5).signed.raw,
                                   target="bios", machine_name="board-a")
    assert verifier.commit_flashed(new)
    old = signer.firmware(security_version=4)
    with pytest.raises(RollbackError):
        verifier.verify_manifest(old.signed.raw, target="bios", machine_name="board-a")
    store = RollbackStore(tmp_path / "floor.json")
    assert not store.raise_floor("bios", 3)
    assert store.floor("bios") == 5


def test_fleet_floor_applies_on_top_of_the_local_floor(signer: Signer, tmp_path: Path) -> None:
    from fwrescue.trust.keys import TrustStore

    verifier = Verifier(TrustStore.from_files([signer.public]),
                        RollbackStore(tmp_path / "f.json"), fleet_floor=lambda t: 7)
    with pytest.raises(RollbackError):
        verifier.verify_manifest(signer.firmware(security_version=6).signed.raw,
                                 target="bios", machine_name="board-a")


def test_chunk_with_a_flipped_bit_or_wrong_length_is_refused(signer: Signer,
                                                             tmp_path: Path) -> None:
    fw = signer.firmware(size=3 * 65536 + 100)
    verified = signer.verifier(tmp_path).verify_manifest(fw.signed.raw, target="bios",
                                                         machine_name="board-a")
    Verifier.verify_chunk(verified, 3, fw.image[3 * 65536:])
    bad = bytearray(fw.image[:65536])
    bad[17] ^= 1
    with pytest.raises(ChunkMismatch):
        Verifier.verify_chunk(verified, 0, bytes(bad))
    with pytest.raises(ChunkMismatch, match="length"):
        Verifier.verify_chunk(verified, 0, fw.image[:65535])


def test_accumulated_whole_image_digest_must_match_size_and_sha256(signer: Signer,
                                                                  tmp_path: Path) -> None:
    fw = signer.firmware(size=2 * 65536 + 7)
    verified = signer.verifier(tmp_path).verify_manifest(fw.signed.raw, target="bios",
                                                         machine_name="board-a")
    size, sha = fw.manifest.size, fw.manifest.sha256
    Verifier.verify_image_digest(verified, sha, size)
    with pytest.raises(ChunkMismatch, match="size"):
        Verifier.verify_image_digest(verified, sha, size - 1)
    with pytest.raises(ChunkMismatch, match="digest"):
        Verifier.verify_image_digest(verified, "0" * 64, size)
    with pytest.raises(ChunkMismatch, match="digest"):
        Verifier.verify_image_digest(verified, sha[:-1] + "\u00e9", size)


def test_read_back_matches_only_the_signed_image_digest(signer: Signer, tmp_path: Path) -> None:
    fw = signer.firmware(size=65536 + 3)
    verified = signer.verifier(tmp_path).verify_manifest(fw.signed.raw, target="bios",
                                                         machine_name="board-a")
    assert Verifier.image_matches(verified, sha256_hex(fw.image))
    assert not Verifier.image_matches(verified, sha256_hex(fw.image[:-1] + b"\0"))
    assert not Verifier.image_matches(verified, fw.manifest.sha256[:-1] + "\u00e9")


def test_digest_comparisons_need_one_type_and_ascii_text() -> None:
    assert digests_match("ab" * 32, "ab" * 32) and digests_match(b"\x01\x02", b"\x01\x02")
    assert not digests_match("ab" * 32, "ab" * 31 + "ac")
    assert not digests_match(b"\x01", "01")  # bytes never equal text
    assert not digests_match("\u00e9", "\u00e9")  # non-ASCII text never matches
    hasher = image_hasher()
    hasher.update(b"abc")
    assert hasher.hexdigest() == sha256_hex(b"abc")


def test_content_address_names_exactly_its_bytes() -> None:
    raw = b'{"manifest": 1}'
    assert addressed(raw, sha256_hex(raw))
    assert not addressed(raw + b" ", sha256_hex(raw))
    assert not addressed(raw, sha256_hex(raw).upper())

def test_image_larger_than_the_agent_limit_is_refused(signer: Signer, tmp_path: Path) -> None:
    from fwrescue.trust.keys import TrustStore

    verifier = Verifier(TrustStore.from_files([signer.public]),
                        RollbackStore(tmp_path / "f.json"), max_image_size=100_000)
    with pytest.raises(SizeLimitExceeded):
        verifier.verify_manifest(signer.firmware(size=200_000).signed.raw, target="bios",
                                 machine_name="board-a")


@pytest.mark.parametrize("raw", [
    b"", b"{", b"[]", b'{"signed": {}, "signature": {}}',
    b'{"signed": {}, "signature": {"keyid": "ab", "sig": "!!"}, "x": 1}',
])
def test_malformed_envelopes_raise_manifest_errors(raw: bytes) -> None:
    with pytest.raises(ManifestError):
        SignedManifest.parse(raw)


def test_oversize_envelope_is_refused_before_parsing() -> None:
    with pytest.raises(SizeLimitExceeded):
        SignedManifest.parse(b" " * 100, max_bytes=10)


def test_unreadable_rollback_state_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "floor.json"
    path.write_text("{not json")
    with pytest.raises(JournalError):
        RollbackStore(path)
