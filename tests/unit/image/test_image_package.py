"""Package format: build, strict reading, staging through the Verifier."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwrescue.errors import (
    ChunkMismatch,
    CompatibilityError,
    ManifestError,
    PackageError,
    RollbackError,
    SignatureError,
    SizeLimitExceeded,
    TrustError,
)
from fwrescue.image.package import (
    IMAGE_MEMBER,
    MANIFEST_MEMBER,
    PackageTooLarge,
    build_package,
    describe,
    extract_verified,
    open_package,
    stage_package,
)
from fwrescue.trust.keys import SigningKey, TrustStore, generate_keypair
from fwrescue.trust.rollback import RollbackStore
from fwrescue.trust.verifier import VerifiedManifest, Verifier

PackageFactory = Callable[..., Path]
IMAGE_SIZE = 3 * 64 * 1024 + 1234  # as built by the conftest fixture


def _stage(verifier: Verifier, path: Path, staging: Path, machine: str = "board-a",
           target: str = "bios") -> tuple[VerifiedManifest, Path]:
    return stage_package(verifier, path, target=target, machine_name=machine,
                         staging_dir=staging)


def _write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]],
               fmt: int = tarfile.USTAR_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


def _parts(package: Path) -> tuple[bytes, bytes]:
    reader = open_package(package)
    return reader.manifest_raw, b"".join(reader.iter_image())


# --- round trip ----------------------------------------------------------------------------


def test_build_inspect_stage_round_trip_reproduces_the_image(
        package: Path, image_file: Path, verifier: Verifier, tmp_path: Path) -> None:
    reader = open_package(package)
    info = describe(reader.signed)
    assert info["digest"] == reader.signed.digest
    assert info["chunk_count"] == 4 and "chunks" not in info
    assert info["machine_names"] == ["board-a"] and info["security_version"] == 3
    assert reader.image_size == IMAGE_SIZE
    verified, staged = _stage(verifier, package, tmp_path / "stage")
    assert verified.digest == reader.signed.digest
    assert staged.read_bytes() == image_file.read_bytes()
    assert staged.name == f"{hashlib.sha256(image_file.read_bytes()).hexdigest()}.bin"
    assert os.listdir(tmp_path / "stage") == [staged.name]


def test_package_is_a_plain_tar_that_standard_tools_read(package: Path,
                                                         image_file: Path) -> None:
    with tarfile.open(package) as tar:
        assert tar.getnames() == [MANIFEST_MEMBER, IMAGE_MEMBER]
        member = tar.extractfile(IMAGE_MEMBER)
        assert member is not None and member.read() == image_file.read_bytes()


def test_image_is_served_from_its_offset_for_byte_ranges(package: Path,
                                                         image_file: Path) -> None:
    reader = open_package(package)
    with open(package, "rb") as f:
        f.seek(reader.image_offset + 70000)
        assert f.read(100) == image_file.read_bytes()[70000:70100]


def test_same_inputs_give_byte_identical_packages(make_package: PackageFactory) -> None:
    assert make_package("a.fwpkg").read_bytes() == make_package("b.fwpkg").read_bytes()


def test_build_refuses_an_empty_image_and_writes_nothing(
        tmp_path: Path, signing_key: SigningKey) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(Exception, match="empty"):
        build_package(empty, tmp_path / "x.fwpkg", key=signing_key, target="bios",
                      machine_names=["board-a"], version="1", security_version=0)
    assert not (tmp_path / "x.fwpkg").exists()


def test_build_refuses_a_chunk_size_the_manifest_forbids(
        tmp_path: Path, image_file: Path, signing_key: SigningKey) -> None:
    with pytest.raises(ManifestError, match="chunk_size"):
        build_package(image_file, tmp_path / "x.fwpkg", key=signing_key, target="bios",
                      machine_names=["board-a"], version="1", security_version=0,
                      chunk_size=3000)
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".fwpkg" or ".tmp" in p.name] \
        == []


# --- trust failures --------------------------------------------------------------------------


def _flip_image_byte(package: Path, at: int) -> None:
    reader = open_package(package)
    data = bytearray(package.read_bytes())
    data[reader.image_offset + at] ^= 0x01
    package.write_bytes(bytes(data))


def test_tampered_image_byte_fails_with_chunk_mismatch_and_leaves_nothing_staged(
        package: Path, verifier: Verifier, tmp_path: Path) -> None:
    _flip_image_byte(package, 2 * 64 * 1024 + 5)  # third chunk
    with pytest.raises(ChunkMismatch) as caught:
        _stage(verifier, package, tmp_path / "stage")
    assert caught.value.fields["index"] == 2
    assert os.listdir(tmp_path / "stage") == []


def test_package_signed_by_an_untrusted_key_fails_with_signature_error(
        make_package: PackageFactory, verifier: Verifier, tmp_path: Path) -> None:
    generate_keypair(tmp_path / "rogue", "rogue")
    rogue = SigningKey.load(tmp_path / "rogue" / "rogue.key")
    with pytest.raises(SignatureError, match="untrusted key"):
        _stage(verifier, make_package("rogue.fwpkg", key=rogue), tmp_path / "stage")
    assert not (tmp_path / "stage").exists()


def test_manifest_edited_after_signing_fails_with_signature_error(
        package: Path, verifier: Verifier, tmp_path: Path) -> None:
    data = package.read_bytes()
    forged = data.replace(b'"security_version":3', b'"security_version":9', 1)
    assert forged != data
    # Fix the tar header checksum so only the signature can catch it.
    header = bytearray(forged[:512])
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    package.write_bytes(bytes(header) + forged[512:])
    with pytest.raises(SignatureError, match="does not verify"):
        _stage(verifier, package, tmp_path / "stage")


def test_package_for_another_board_fails_with_compatibility_error(
        package: Path, verifier: Verifier, tmp_path: Path) -> None:
    with pytest.raises(CompatibilityError, match="another board"):
        _stage(verifier, package, tmp_path / "stage", machine="board-b")


def test_package_for_another_component_fails_with_compatibility_error(
        package: Path, verifier: Verifier, tmp_path: Path) -> None:
    with pytest.raises(CompatibilityError, match="another component"):
        _stage(verifier, package, tmp_path / "stage", target="cpld")


def test_rolled_back_package_fails_with_rollback_error(
        package: Path, keys_dir: Path, tmp_path: Path) -> None:
    floors = RollbackStore(tmp_path / "floors.json")
    floors.raise_floor("bios", 4)
    verifier = Verifier(TrustStore.from_files([keys_dir]), floors)
    with pytest.raises(RollbackError):
        _stage(verifier, package, tmp_path / "stage")
    assert floors.floor("bios") == 4


def test_verifier_image_limit_refuses_before_copying(
        package: Path, keys_dir: Path, tmp_path: Path) -> None:
    verifier = Verifier(TrustStore.from_files([keys_dir]),
                        RollbackStore(tmp_path / "floors.json"), max_image_size=64 * 1024)
    with pytest.raises(SizeLimitExceeded):
        _stage(verifier, package, tmp_path / "stage")
    assert not (tmp_path / "stage").exists()


# --- malformed archives ----------------------------------------------------------------------


def _malformed(kind: str, package: Path, tmp_path: Path) -> Path:
    manifest, image = _parts(package)
    out = tmp_path / f"{kind}.fwpkg"
    if kind == "extra-member":
        return _write_tar(out, [(_member(MANIFEST_MEMBER), manifest),
                                (_member(IMAGE_MEMBER), image), (_member("extra"), b"x")])
    if kind == "symlink-member":
        link = _member(IMAGE_MEMBER, tarfile.SYMTYPE)
        link.linkname = "/dev/mtd0"
        return _write_tar(out, [(_member(MANIFEST_MEMBER), manifest), (link, None)])
    if kind == "dotdot-name":
        return _write_tar(out, [(_member(MANIFEST_MEMBER), manifest),
                                (_member("../" + IMAGE_MEMBER), image)])
    if kind == "absolute-name":
        return _write_tar(out, [(_member("/" + MANIFEST_MEMBER), manifest),
                                (_member(IMAGE_MEMBER), image)])
    if kind == "swapped-order":
        return _write_tar(out, [(_member(IMAGE_MEMBER), image),
                                (_member(MANIFEST_MEMBER), manifest)])
    if kind == "directory-member":
        return _write_tar(out, [(_member("d", tarfile.DIRTYPE), None),
                                (_member(MANIFEST_MEMBER), manifest),
                                (_member(IMAGE_MEMBER), image)])
    if kind == "pax-header":
        long_name = _member(MANIFEST_MEMBER)
        long_name.pax_headers = {"comment": "x" * 300}
        return _write_tar(out, [(long_name, manifest), (_member(IMAGE_MEMBER), image)],
                          fmt=tarfile.PAX_FORMAT)
    if kind == "missing-image":
        return _write_tar(out, [(_member(MANIFEST_MEMBER), manifest)])
    if kind == "short-image-member":
        return _write_tar(out, [(_member(MANIFEST_MEMBER), manifest),
                                (_member(IMAGE_MEMBER), image[:-1])])
    data = package.read_bytes()
    reader = open_package(package)
    if kind == "truncated-image":
        out.write_bytes(data[: reader.image_offset + 1000])
    elif kind == "truncated-trailer":
        out.write_bytes(data[:-700])
    elif kind == "trailing-garbage":
        out.write_bytes(data + b"junk")
    elif kind == "bad-checksum":
        out.write_bytes(data[:148] + b"0000000\0" + data[156:])
    elif kind == "not-a-tar":
        out.write_bytes(b"\x7fELF" + bytes(2000))
    elif kind == "empty-file":
        out.write_bytes(b"")
    else:  # pragma: no cover
        raise AssertionError(kind)
    return out


MALFORMED = ["extra-member", "symlink-member", "dotdot-name", "absolute-name", "swapped-order",
             "directory-member", "pax-header", "missing-image", "short-image-member",
             "truncated-image", "truncated-trailer", "trailing-garbage", "bad-checksum",
             "not-a-tar", "empty-file"]


@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_archive_is_a_package_error_and_stages_nothing(
        kind: str, package: Path, verifier: Verifier, tmp_path: Path) -> None:
    bad = _malformed(kind, package, tmp_path)
    with pytest.raises(PackageError):
        open_package(bad)
    staging = tmp_path / "stage"
    staging.mkdir()
    with pytest.raises(PackageError):
        _stage(verifier, bad, staging)
    assert os.listdir(staging) == []


def test_symlink_member_error_names_the_member_type(package: Path, tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="symbolic link"):
        open_package(_malformed("symlink-member", package, tmp_path))


def test_oversize_manifest_is_refused_before_it_is_read(package: Path) -> None:
    with pytest.raises(PackageTooLarge) as caught:
        open_package(package, max_manifest_bytes=100)
    assert isinstance(caught.value, PackageError)
    assert isinstance(caught.value, SizeLimitExceeded)
    assert caught.value.http_status == 413


def test_oversize_image_member_is_refused_before_it_is_read(package: Path) -> None:
    with pytest.raises(PackageTooLarge, match="image too large"):
        open_package(package, max_image_size=IMAGE_SIZE - 1)


def test_image_changed_after_open_is_caught_while_staging(
        package: Path, verifier: Verifier, tmp_path: Path) -> None:
    reader = open_package(package)
    _flip_image_byte(package, 10)
    verified = verifier.verify_signed(reader.signed, target="bios", machine_name="board-a")
    dest = tmp_path / "out.bin"
    with pytest.raises(ChunkMismatch):
        extract_verified(reader, verified, dest)
    assert not dest.exists()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.floats(min_value=0, max_value=1, exclude_max=True),
       bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_a_trust_error_or_harmless(
        package: Path, image_file: Path, verifier: Verifier, tmp_path: Path,
        position: float, bit: int) -> None:
    data = bytearray(package.read_bytes())
    index = int(position * len(data))
    data[index] ^= 1 << bit
    bad = tmp_path / "flipped.fwpkg"
    bad.write_bytes(bytes(data))
    staging = tmp_path / "flip-stage"
    try:
        _, staged = _stage(verifier, bad, staging)
    except TrustError:
        assert not staging.exists() or not [
            p for p in os.listdir(staging) if p.endswith(".partial")]
        return
    # Only bits the format ignores (header padding, unused header fields) may pass,
    # and then the staged image is exactly the signed one.
    assert staged.read_bytes() == image_file.read_bytes()


def test_a_fifo_named_like_a_package_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "trap.fwpkg"
    os.mkfifo(fifo)
    with pytest.raises(PackageError, match="not a regular file"):
        open_package(fifo)


def test_layout_read_from_memory_matches_open_package(package: Path) -> None:
    from fwrescue.image.package import read_package_layout

    data = package.read_bytes()
    reader = open_package(package)
    layout = read_package_layout(io.BytesIO(data), len(data))
    assert (layout.manifest_raw, layout.image_offset, layout.image_size) == (
        reader.manifest_raw, reader.image_offset, reader.image_size)
    assert data[layout.image_offset:layout.image_offset + layout.image_size] == b"".join(
        reader.iter_image())
    with pytest.raises(PackageError, match="truncated"):  # the same checks, from memory
        read_package_layout(io.BytesIO(data[:-1024]), len(data) - 1024)


def test_header_with_a_signed_char_checksum_is_accepted_and_a_wrong_one_is_not(
        package: Path) -> None:
    from fwrescue.image.package import read_package_layout

    data = bytearray(package.read_bytes())
    data[99] = 0xE9  # a high byte in the (NUL-padded) name field: signed and unsigned differ
    rest = data[:148] + data[156:512]
    signed = sum(b - 256 if b > 127 else b for b in rest) + 8 * 0x20
    data[148:156] = b"%06o\0 " % signed
    layout = read_package_layout(io.BytesIO(bytes(data)), len(data))
    assert layout.image_size == open_package(package).image_size
    data[148:156] = b"%06o\0 " % (signed + 1)
    with pytest.raises(PackageError, match="checksum"):
        read_package_layout(io.BytesIO(bytes(data)), len(data))
