"""OpenBMC BIOS tarball import (gen-bios-tar layout, RSA PKCS#1 v1.5 over SHA-256)."""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fwrescue.errors import ManifestError, PackageError, SignatureError
from fwrescue.image.openbmc import HOST_PURPOSE, import_openbmc, parse_openbmc_manifest
from fwrescue.image.package import PackageTooLarge, open_package, stage_package
from fwrescue.trust.keys import SigningKey
from fwrescue.trust.verifier import Verifier

IMAGE = random.Random(3).randbytes(100_000)
MANIFEST = (f"purpose={HOST_PURPOSE}\nversion=2.7.1\nExtendedVersion=\"build 42\"\n"
            "KeyType=OpenBMC\nHashType=RSA-SHA256\nMachineName=board-a\n"
            "CompatibleName=com.example.Board.A\nCompatibleName=com.example.Board.A2\n").encode()


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return (rsa.generate_private_key(public_exponent=65537, key_size=2048),
            rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _sign(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _tarball(path: Path, files: dict[str, bytes], *, gz: bool = True,
             extra: list[tarfile.TarInfo] | None = None) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return path


def _signed_files(signer: rsa.RSAPrivateKey, *, manifest: bytes = MANIFEST,
                  image: bytes = IMAGE) -> dict[str, bytes]:
    files = {"MANIFEST": manifest, "image-bios": image, "publickey": _pem(signer)}
    for name in list(files):
        files[f"{name}.sig"] = _sign(signer, files[name])
    return files


@pytest.fixture
def trusted_pem(tmp_path: Path, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> Path:
    path = tmp_path / "openbmc.pem"
    path.write_bytes(_pem(rsa_keys[0]))
    return path


def _import(tar: Path, out: Path, key: SigningKey, trusted: Path | None) -> object:
    return import_openbmc(tar, out, key=key, security_version=5,
                          trusted_rsa_keys={"OpenBMC": trusted} if trusted else None)


def test_signed_tarball_becomes_a_package_that_stages(
        tmp_path: Path, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
        trusted_pem: Path, signing_key: SigningKey, verifier: Verifier) -> None:
    tar = _tarball(tmp_path / "obmc-bios.tar.gz", _signed_files(rsa_keys[0]))
    out = tmp_path / "bios.fwpkg"
    signed = import_openbmc(tar, out, key=signing_key, security_version=5,
                            trusted_rsa_keys={"OpenBMC": trusted_pem})
    manifest = signed.manifest
    assert manifest.machine_names == ("board-a", "com.example.Board.A", "com.example.Board.A2")
    assert manifest.version == "2.7.1" and manifest.security_version == 5
    assert manifest.target == "bios"
    assert manifest.extra["openbmc.ExtendedVersion"] == "build 42"
    assert manifest.extra["openbmc.signature"] == "verified"
    _, staged = stage_package(verifier, out, target="bios", machine_name="com.example.Board.A",
                              staging_dir=tmp_path / "stage")
    assert staged.read_bytes() == IMAGE


def test_tampered_signature_is_refused_and_nothing_is_written(
        tmp_path: Path, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
        trusted_pem: Path, signing_key: SigningKey) -> None:
    files = _signed_files(rsa_keys[0])
    sig = bytearray(files["image-bios.sig"])
    sig[10] ^= 1
    files["image-bios.sig"] = bytes(sig)
    tar = _tarball(tmp_path / "t.tar.gz", files)
    with pytest.raises(SignatureError, match="does not verify") as caught:
        _import(tar, tmp_path / "out.fwpkg", signing_key, trusted_pem)
    assert caught.value.fields["name"] == "image-bios"
    assert not (tmp_path / "out.fwpkg").exists()


def test_tampered_image_with_its_old_signature_is_refused(
        tmp_path: Path, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
        trusted_pem: Path, signing_key: SigningKey) -> None:
    files = _signed_files(rsa_keys[0])
    files["image-bios"] = IMAGE[:-1] + b"\0"
    with pytest.raises(SignatureError):
        _import(_tarball(tmp_path / "t.tar.gz", files), tmp_path / "o.fwpkg", signing_key,
                trusted_pem)


def test_package_publickey_other_than_the_trusted_one_is_refused(
        tmp_path: Path, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
        trusted_pem: Path, signing_key: SigningKey) -> None:
    # Self-consistent, but signed by a key the BMC does not hold for KeyType=OpenBMC.
    tar = _tarball(tmp_path / "t.tar.gz", _signed_files(rsa_keys[1]))
    with pytest.raises(SignatureError, match="publickey is not the trusted key"):
        _import(tar, tmp_path / "o.fwpkg", signing_key, trusted_pem)


def test_unknown_keytype_is_refused(tmp_path: Path, signing_key: SigningKey,
                                    rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
                                    trusted_pem: Path) -> None:
    tar = _tarball(tmp_path / "t.tar.gz", _signed_files(rsa_keys[0]))
    with pytest.raises(SignatureError, match="no trusted key"):
        import_openbmc(tar, tmp_path / "o.fwpkg", key=signing_key, security_version=1,
                       trusted_rsa_keys={"Other": trusted_pem})


def test_missing_signature_file_is_refused(
        tmp_path: Path, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
        trusted_pem: Path, signing_key: SigningKey) -> None:
    files = _signed_files(rsa_keys[0])
    del files["MANIFEST.sig"]
    with pytest.raises(SignatureError, match="no signature"):
        _import(_tarball(tmp_path / "t.tar.gz", files), tmp_path / "o.fwpkg", signing_key,
                trusted_pem)


def test_unsigned_tarball_is_refused_when_signatures_are_required(
        tmp_path: Path, trusted_pem: Path, signing_key: SigningKey) -> None:
    tar = _tarball(tmp_path / "t.tar", {"MANIFEST": MANIFEST, "image-bios": IMAGE}, gz=False)
    with pytest.raises(SignatureError, match="not signed"):
        _import(tar, tmp_path / "o.fwpkg", signing_key, trusted_pem)


def test_unsigned_plain_tar_imports_when_the_caller_vouches(
        tmp_path: Path, signing_key: SigningKey) -> None:
    tar = _tarball(tmp_path / "t.tar", {"MANIFEST": MANIFEST, "image-bios": IMAGE}, gz=False)
    signed = _import(tar, tmp_path / "o.fwpkg", signing_key, None)
    reader = open_package(tmp_path / "o.fwpkg")
    assert reader.signed == signed
    assert reader.manifest.extra["openbmc.signature"] == "not-checked"


@pytest.mark.parametrize(("files", "extra", "error", "match"), [
    ({"image-bios": IMAGE}, [], PackageError, "no MANIFEST"),
    ({"MANIFEST": MANIFEST}, [], PackageError, "no image"),
    ({"MANIFEST": MANIFEST, "a": IMAGE, "b": IMAGE}, [], PackageError, "more than one image"),
    ({"MANIFEST": MANIFEST.replace(b".Host", b".BMC"), "i": IMAGE}, [], PackageError,
     "not a host"),
    ({"MANIFEST": b"version=1\nMachineName=x\n", "i": IMAGE}, [], PackageError,
     "lacks a field"),
    ({"MANIFEST": MANIFEST + b"garbage line\n", "i": IMAGE}, [], PackageError, "key=value"),
    ({"MANIFEST": MANIFEST.replace(b"board-a", b"bad board"), "i": IMAGE}, [], ManifestError,
     "machine name"),
    ({"MANIFEST": MANIFEST, "../image-bios": IMAGE}, [], PackageError, "name not allowed"),
    ({"MANIFEST": MANIFEST, "MANIFEST.sig": bytes(5000), "i": IMAGE}, [], PackageTooLarge,
     "too large"),
    ({"MANIFEST": MANIFEST, "i": IMAGE}, ["symlink"], PackageError, "not a regular file"),
    ({f"f{n}.sig": b"" for n in range(20)}, [], PackageError, "too many members"),
])
def test_malformed_tarball_is_refused_with_a_specific_error(
        tmp_path: Path, signing_key: SigningKey, files: dict[str, bytes], extra: list[str],
        error: type[Exception], match: str) -> None:
    members = []
    if "symlink" in extra:
        link = tarfile.TarInfo("publickey")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/shadow"
        members.append(link)
    tar = _tarball(tmp_path / "t.tar.gz", files, extra=members)
    with pytest.raises(error, match=match):
        _import(tar, tmp_path / "o.fwpkg", signing_key, None)
    assert not (tmp_path / "o.fwpkg").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".obmc-")] == []


def test_image_larger_than_the_limit_is_refused_before_extraction(
        tmp_path: Path, signing_key: SigningKey) -> None:
    tar = _tarball(tmp_path / "t.tar.gz", {"MANIFEST": MANIFEST, "image-bios": IMAGE})
    with pytest.raises(PackageTooLarge, match="image too large"):
        import_openbmc(tar, tmp_path / "o.fwpkg", key=signing_key, security_version=1,
                       max_image_size=50_000)


def test_gzip_bomb_is_stopped_at_the_decompressed_bound(
        tmp_path: Path, signing_key: SigningKey) -> None:
    # A pax header is read whole by tarfile before a member is returned: the bound on
    # decompressed bytes is what stops it.
    bomb = tarfile.TarInfo("MANIFEST")
    bomb.pax_headers = {"comment": "A" * 3_000_000}
    bomb.size = 0
    with tarfile.open(tmp_path / "bomb.tar.gz", "w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(bomb, io.BytesIO(b""))
    with pytest.raises(PackageTooLarge, match="decompresses"):
        import_openbmc(tmp_path / "bomb.tar.gz", tmp_path / "o.fwpkg", key=signing_key,
                       security_version=1, max_image_size=100_000)


def test_corrupt_gzip_is_a_package_error(tmp_path: Path, signing_key: SigningKey) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + bytes(100))
    with pytest.raises(PackageError, match="not a readable"):
        _import(bad, tmp_path / "o.fwpkg", signing_key, None)


def test_manifest_parser_keeps_repeated_compatible_names_in_order() -> None:
    parsed = parse_openbmc_manifest(MANIFEST)
    assert parsed.compatible_names == ("com.example.Board.A", "com.example.Board.A2")
    assert parsed.key_type == "OpenBMC" and parsed.hash_type == "RSA-SHA256"
    with pytest.raises(PackageError, match="repeats"):
        parse_openbmc_manifest(MANIFEST + b"version=3\n")


def test_tarball_signed_by_real_openssl_and_gnu_tar_imports(
        tmp_path: Path, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
        trusted_pem: Path, signing_key: SigningKey) -> None:
    openssl, tar_tool = shutil.which("openssl"), shutil.which("tar")
    if not openssl or not tar_tool:
        pytest.fail("this test needs the real openssl and GNU tar (Debian: openssl, tar)")
    work = tmp_path / "gen"
    work.mkdir()
    key_pem = work / "private.pem"
    key_pem.write_bytes(rsa_keys[0].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (work / "MANIFEST").write_bytes(MANIFEST)
    (work / "image-bios").write_bytes(IMAGE)
    (work / "publickey").write_bytes(_pem(rsa_keys[0]))
    for name in ("MANIFEST", "image-bios", "publickey"):
        subprocess.run([openssl, "dgst", "-sha256", "-sign", str(key_pem), "-out",
                        f"{name}.sig", name], cwd=work, check=True, capture_output=True)
    subprocess.run([tar_tool, "-czf", str(tmp_path / "obmc-bios.tar.gz"), "MANIFEST",
                    "image-bios", "publickey", "MANIFEST.sig", "image-bios.sig",
                    "publickey.sig"], cwd=work, check=True, capture_output=True)
    signed = _import(tmp_path / "obmc-bios.tar.gz", tmp_path / "o.fwpkg", signing_key,
                     trusted_pem)
    assert open_package(tmp_path / "o.fwpkg").signed == signed


def test_import_from_a_stream_is_the_file_import(
        tmp_path: Path, signing_key: SigningKey, trusted_pem: Path,
        rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> None:
    from fwrescue.image.openbmc import import_openbmc_stream

    tar = _tarball(tmp_path / "bios.tar.gz", _signed_files(rsa_keys[0]))
    from_file = import_openbmc(tar, tmp_path / "a.fwpkg", key=signing_key, security_version=5,
                               trusted_rsa_keys={"OpenBMC": trusted_pem})
    from_memory = import_openbmc_stream(
        io.BytesIO(tar.read_bytes()), tar.name, tmp_path / "b.fwpkg", key=signing_key,
        security_version=5, trusted_rsa_keys={"OpenBMC": trusted_pem})
    assert from_memory.manifest == from_file.manifest
    assert (tmp_path / "a.fwpkg").read_bytes() == (tmp_path / "b.fwpkg").read_bytes()
    bad = tar.read_bytes()[:-40]
    with pytest.raises(PackageError):
        import_openbmc_stream(io.BytesIO(bad), "bad.tar.gz", tmp_path / "c.fwpkg",
                              key=signing_key, security_version=5)
    assert not (tmp_path / "c.fwpkg").exists()
