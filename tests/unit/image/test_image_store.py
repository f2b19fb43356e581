"""The content-addressed package store."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from fwrescue.errors import ChunkMismatch, SignatureError
from fwrescue.image.package import open_package, stage_package
from fwrescue.image.store import PackageStore, StoreError
from fwrescue.trust.keys import TrustStore, generate_keypair
from fwrescue.trust.rollback import RollbackStore
from fwrescue.trust.verifier import VerifiedManifest, Verifier

PackageFactory = Callable[..., Path]


def _staged(verifier: Verifier, package: Path, tmp_path: Path,
            machine: str = "board-a") -> tuple[VerifiedManifest, Path]:
    return stage_package(verifier, package, target="bios", machine_name=machine,
                         staging_dir=tmp_path / "stage")


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_put_list_get_export_round_trip(package: Path, verifier: Verifier,
                                        tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "store")
    verified, staged = _staged(verifier, package, tmp_path)
    entry = store.put(verified, staged)
    assert not staged.exists()  # moved in
    assert [e.digest for e in store.list()] == [verified.digest]
    assert store.get(verified.digest) == entry
    assert store.manifest_bytes(verified.digest) == verified.signed.raw
    assert store.image_path(verified.manifest.sha256) == entry.image_path
    out = tmp_path / "exported.fwpkg"
    store.export_package(verified.digest, out)
    # Exported bytes are the original package: same manifest envelope, same image.
    assert out.read_bytes() == package.read_bytes()


def test_put_is_idempotent_and_never_rewrites_a_stored_image(
        package: Path, verifier: Verifier, tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "store")
    verified, staged = _staged(verifier, package, tmp_path)
    first = store.put(verified, staged, move=False)
    inode = first.image_path.stat().st_ino
    again = store.put(verified, staged, move=False)
    assert again == first and len(store) == 1
    assert first.image_path.stat().st_ino == inode
    assert _files(tmp_path / "store") == sorted(
        [f"images/{verified.manifest.sha256}.bin", f"manifests/{verified.digest}.json"])


def test_two_boards_share_one_image_file(make_package: PackageFactory, verifier: Verifier,
                                         tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "store")
    for name, machine in (("a.fwpkg", "board-a"), ("b.fwpkg", "board-b")):
        verified, staged = _staged(verifier, make_package(name, machines=(machine,)),
                                   tmp_path, machine)
        store.put(verified, staged)
    assert len(store.list()) == 2
    assert len(os.listdir(tmp_path / "store" / "images")) == 1


def test_put_of_an_image_that_does_not_match_stores_nothing(
        package: Path, verifier: Verifier, tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "store")
    verified, staged = _staged(verifier, package, tmp_path)
    staged.write_bytes(b"\0" * verified.manifest.size)
    with pytest.raises(ChunkMismatch):
        store.put(verified, staged, move=False)
    assert _files(tmp_path / "store") == [] and store.list() == []


def test_store_reloads_from_disk_and_reports_junk(package: Path, verifier: Verifier,
                                                  tmp_path: Path) -> None:
    root = tmp_path / "store"
    verified, staged = _staged(verifier, package, tmp_path)
    PackageStore(root).put(verified, staged)
    (root / "manifests" / "notes.txt").write_text("hello")
    (root / "manifests" / ("A" * 64 + ".json")).write_text("{}")
    (root / "manifests" / ("0" * 64 + ".json")).write_bytes(verified.signed.raw)  # wrong name
    (root / "images" / "junk.bin").write_bytes(b"x")
    (root / "manifests" / ("1" * 64 + ".json")).symlink_to("/etc/passwd")
    reloaded = PackageStore(root)
    assert [e.digest for e in reloaded.list()] == [verified.digest]
    junk = {path.name: reason for path, reason in reloaded.junk}
    assert set(junk) == {"notes.txt", "A" * 64 + ".json", "0" * 64 + ".json", "junk.bin",
                         "1" * 64 + ".json"}
    assert "hash" in junk["0" * 64 + ".json"]
    assert "regular" in junk["1" * 64 + ".json"]


def test_manifest_whose_image_is_missing_is_not_listed(package: Path, verifier: Verifier,
                                                       tmp_path: Path) -> None:
    root = tmp_path / "store"
    verified, staged = _staged(verifier, package, tmp_path)
    entry = PackageStore(root).put(verified, staged)
    entry.image_path.unlink()
    reloaded = PackageStore(root)
    assert reloaded.list() == [] and reloaded.get(verified.digest) is None
    assert len(reloaded.junk) == 1


def test_store_with_a_verifier_drops_entries_it_does_not_trust(
        package: Path, verifier: Verifier, tmp_path: Path) -> None:
    root = tmp_path / "store"
    verified, staged = _staged(verifier, package, tmp_path)
    PackageStore(root).put(verified, staged)
    generate_keypair(tmp_path / "other", "other")
    stranger = Verifier(TrustStore.from_files([tmp_path / "other"]),
                        RollbackStore(tmp_path / "f.json"))
    reloaded = PackageStore(root, verifier=stranger)
    assert reloaded.list() == []
    assert "untrusted key" in reloaded.junk[0][1]


def test_lookups_with_malformed_digests_return_none(package: Path, verifier: Verifier,
                                                    tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "store")
    verified, staged = _staged(verifier, package, tmp_path)
    store.put(verified, staged)
    for bad in ("../../etc/passwd", verified.digest.upper(), verified.digest[:-1], ""):
        assert store.get(bad) is None
        assert store.manifest_bytes(bad) is None
        assert store.image_path(bad) is None
    with pytest.raises(StoreError):
        store.export_package("0" * 64, tmp_path / "x.fwpkg")
    assert not (tmp_path / "x.fwpkg").exists()


def test_import_package_verifies_for_donation_and_stores_other_boards(
        make_package: PackageFactory, verifier: Verifier, tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "store")
    package = make_package("c.fwpkg", machines=("board-c",), version="2.0")
    entry = store.import_package(verifier, package)
    assert entry.manifest.machine_names == ("board-c",)
    assert entry.image_path.read_bytes() == b"".join(open_package(package).iter_image())
    assert store.import_package(verifier, package) == entry


def test_import_of_a_tampered_package_stores_nothing(package: Path, verifier: Verifier,
                                                     tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "store")
    data = bytearray(package.read_bytes())
    data[-2000] ^= 0xFF  # inside the image's last chunk
    package.write_bytes(bytes(data))
    with pytest.raises(ChunkMismatch):
        store.import_package(verifier, package)
    assert _files(tmp_path / "store") == [] and store.list() == []


def test_import_of_a_package_from_an_untrusted_key_is_refused(
        make_package: PackageFactory, verifier: Verifier, tmp_path: Path) -> None:
    from fwrescue.trust.keys import SigningKey

    generate_keypair(tmp_path / "rogue", "rogue")
    rogue = make_package("r.fwpkg", key=SigningKey.load(tmp_path / "rogue" / "rogue.key"))
    store = PackageStore(tmp_path / "store")
    with pytest.raises(SignatureError):
        store.import_package(verifier, rogue)
    assert store.list() == []


def test_reader_streaming_an_image_is_unaffected_by_later_puts(
        make_package: PackageFactory, verifier: Verifier, tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "store")
    verified, staged = _staged(verifier, make_package("a.fwpkg"), tmp_path)
    entry = store.put(verified, staged)
    expected = entry.image_path.read_bytes()
    with open(entry.image_path, "rb") as streaming:
        first = streaming.read(1000)
        other = tmp_path / "other.bin"
        other.write_bytes(random.Random(9).randbytes(5000))
        v2, s2 = _staged(verifier, make_package("b.fwpkg", image=other, version="2"), tmp_path)
        store.put(v2, s2)
        rest = streaming.read()
    assert first + rest == expected
    assert len(store.list()) == 2


def test_a_rotten_stored_image_is_replaced_by_a_fresh_verified_copy(tmp_path: Path) -> None:
    from tests.fakes.firmware import Signer

    signer = Signer(tmp_path / "k")
    fw = signer.firmware(size=128 * 1024)
    verified = signer.verifier(tmp_path).verify_signed(fw.signed, target="bios",
                                                       machine_name="board-a")
    store = PackageStore(tmp_path / "store")
    stored = store.put(verified, fw.write_image(tmp_path / "a.bin"), move=False)
    rotten = bytearray(stored.image_path.read_bytes())
    rotten[5] ^= 0xFF
    stored.image_path.write_bytes(bytes(rotten))  # same size, wrong bytes
    again = store.put(verified, fw.write_image(tmp_path / "b.bin"))
    assert again.image_path.read_bytes() == fw.image
