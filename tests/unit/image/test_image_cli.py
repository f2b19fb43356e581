"""The keys/image CLI commands, run through a parser built with register_image_commands."""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fwrescue.image.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNTRUSTED, register_image_commands
from fwrescue.image.openbmc import HOST_PURPOSE
from fwrescue.image.package import open_package


def run(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser(prog="fwrescue")
    register_image_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    result: int = args.func(args)
    return result


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    assert run("keys", "generate", "--out", tmp_path / "keys", "--name", "rel") == EXIT_OK
    return tmp_path / "keys"


@pytest.fixture
def built(tmp_path: Path, keys: Path, image_file: Path) -> Path:
    out = tmp_path / "bios.fwpkg"
    assert run("image", "build", image_file, "--key", keys / "rel.key", "--target", "bios",
               "--machine", "board-a", "--machine", "board-b", "--version", "1.2.0",
               "--security-version", "3", "--chunk-size", "65536", "-o", out) == EXIT_OK
    return out


def test_keys_generate_writes_a_private_key_only_its_owner_reads(
        keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (keys / "rel.key").stat().st_mode & 0o777 == 0o600
    assert (keys / "rel.pub").exists()
    assert run("keys", "generate", "--out", keys, "--name", "rel") == EXIT_BAD_INPUT
    assert "already exist" in capsys.readouterr().err


def test_build_then_inspect_json_shows_the_manifest_without_chunks(
        built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run("image", "inspect", built, "--json") == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["digest"] == open_package(built).signed.digest
    assert info["machine_names"] == ["board-a", "board-b"]
    assert info["chunk_count"] == 4 and "chunks" not in info


def test_inspect_table_lists_the_fields(built: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run("image", "inspect", built) == EXIT_OK
    out = capsys.readouterr().out
    assert "board-a, board-b" in out and "security_version" in out


def test_verify_exits_zero_for_a_trusted_package(built: Path, keys: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run("image", "verify", built, "--trust", keys, "--target", "bios",
               "--machine", "board-b", "--floor", "3") == EXIT_OK
    assert "trusted" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "reason"), [
    (["--machine", "board-z"], "another board"),
    (["--machine", "board-a", "--target", "cpld"], "another component"),
    (["--machine", "board-a", "--floor", "4"], "anti-rollback floor"),
])
def test_verify_exits_one_with_the_specific_reason(
        built: Path, keys: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
        reason: str) -> None:
    assert run("image", "verify", built, "--trust", keys / "rel.pub", *extra) == EXIT_UNTRUSTED
    err = capsys.readouterr().err
    assert err.startswith("error: ") and reason in err and "Traceback" not in err


def test_verify_of_a_tampered_package_names_the_chunk(
        built: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reader = open_package(built)
    data = bytearray(built.read_bytes())
    data[reader.image_offset + 65536 + 3] ^= 0x80
    built.write_bytes(bytes(data))
    assert run("image", "verify", built, "--trust", keys, "--machine", "board-a") \
        == EXIT_UNTRUSTED
    err = capsys.readouterr().err
    assert "ChunkMismatch" in err and "index=1" in err


def test_verify_with_another_trust_store_fails_on_the_signature(
        built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("keys", "generate", "--out", tmp_path / "other", "--name", "x") == EXIT_OK
    assert run("image", "verify", built, "--trust", tmp_path / "other",
               "--machine", "board-a") == EXIT_UNTRUSTED
    assert "SignatureError" in capsys.readouterr().err


def test_bad_input_gives_exit_two_and_no_traceback(
        tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.fwpkg"
    junk.write_bytes(b"not a tar" * 100)
    assert run("image", "inspect", junk) == EXIT_BAD_INPUT
    assert "error: " in capsys.readouterr().err
    assert run("image", "build", tmp_path / "missing.bin", "--key", keys / "rel.key",
               "--machine", "b", "--version", "1", "--security-version", "0",
               "-o", tmp_path / "x.fwpkg") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.bin" in err
    assert run("image", "build", tmp_path / "missing.bin", "--key", keys / "rel.pub",
               "--machine", "b", "--version", "1", "--security-version", "0",
               "-o", tmp_path / "x.fwpkg") == EXIT_BAD_INPUT
    assert "private key" in capsys.readouterr().err
    assert run("image", "verify", junk, "--trust", tmp_path / "nowhere",
               "--machine", "b") == EXIT_BAD_INPUT
    assert "cannot read key file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run("image", "verify", junk, "--trust", tmp_path / "empty",
               "--machine", "b") == EXIT_BAD_INPUT
    assert "no trusted public keys" in capsys.readouterr().err


def test_import_openbmc_with_a_trusted_rsa_key(
        tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = signer.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "obmc.pem").write_bytes(pem)
    files = {"MANIFEST": f"purpose={HOST_PURPOSE}\nversion=3.1\nMachineName=board-a\n"
                         "KeyType=OpenBMC\nHashType=RSA-SHA256\n".encode(),
             "image-bios": bytes(range(256)) * 64, "publickey": pem}
    for name in list(files):
        files[name + ".sig"] = signer.sign(files[name], padding.PKCS1v15(), hashes.SHA256())
    with tarfile.open(tmp_path / "obmc.tar.gz", "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "obmc.fwpkg"
    assert run("image", "import-openbmc", tmp_path / "obmc.tar.gz", "--key", keys / "rel.key",
               "--security-version", "2", "--trusted-rsa", f"OpenBMC={tmp_path / 'obmc.pem'}",
               "-o", out) == EXIT_OK
    assert run("image", "verify", out, "--trust", keys, "--machine", "board-a") == EXIT_OK
    assert run("image", "import-openbmc", tmp_path / "obmc.tar.gz", "--key", keys / "rel.key",
               "--security-version", "2", "--trusted-rsa", f"Other={tmp_path / 'obmc.pem'}",
               "-o", tmp_path / "no.fwpkg") == EXIT_BAD_INPUT
    assert "no trusted key for this KeyType" in capsys.readouterr().err
    assert not (tmp_path / "no.fwpkg").exists()


def test_malformed_arguments_are_rejected_by_the_parser(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        run("image", "build", "x", "--key", "k", "--machine", "b", "--version", "1",
            "--security-version", "-1", "-o", "y")
    assert caught.value.code == 2
    with pytest.raises(SystemExit):
        run("image", "import-openbmc", "t", "--key", "k", "--security-version", "1",
            "--trusted-rsa", "no-equals-sign", "-o", "y")
