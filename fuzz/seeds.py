"""Regenerate the seed corpus: ``python -m fuzz.seeds`` writes ``fuzz/corpus/<target>/``.

Seeds are small valid (and near-valid) inputs of each parser, so the fuzzer starts from
the accepted shapes instead of discovering the tar header or the datagram magic by
chance. The files are committed; rerun this only when a format changes.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "corpus"
NOW = 1_700_000_000.0
HEX64 = "ab" * 32


def _write(target: str, seeds: dict[str, bytes]) -> None:
    folder = ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (folder / f"seed-{name}").write_bytes(data)


def codec_seeds() -> dict[str, bytes]:
    from fwrescue.protocol.codec import Codec
    from fwrescue.protocol.messages import Accept, DonorKind, Message, Offer, Solicit

    codec = Codec(None)
    messages: dict[str, Message] = {
        "solicit": Solicit(xid=7, recipient_id="node-01", target="bios", machine_name="board-a",
                           installed_version="1.0.0", security_version=1,
                           min_security_version=1, topology="rack-1", declined=(HEX64,)),
        "offer": Offer(xid=7, recipient_id="node-01", donor_id="node-02",
                       donor_kind=DonorKind.PEER, target="bios", manifest_digest=HEX64,
                       version="1.1.0", security_version=2, size=1 << 20, load=0, capacity=4,
                       transfer_url="http://127.0.0.1:8080/images", lease_s=30.0,
                       topology="rack-1"),
        "accept": Accept(xid=7, recipient_id="node-01", donor_id="node-02",
                         manifest_digest=HEX64),
    }
    return {name: codec.encode(msg, NOW) for name, msg in messages.items()}


def _signed(tmp: Path) -> tuple[bytes, bytes]:
    """(a package file, its manifest envelope) for a 4 KiB image."""
    from fwrescue.image.package import build_package
    from fwrescue.trust.keys import SigningKey, generate_keypair

    private, _ = generate_keypair(tmp / "keys", "seed")
    image = tmp / "image.bin"
    image.write_bytes(bytes(range(256)) * 16)
    out = tmp / "seed.fwpkg"
    signed = build_package(image, out, key=SigningKey.load(private), target="bios",
                           machine_names=["board-a"], version="1.0.0", security_version=1,
                           chunk_size=4096)
    return out.read_bytes(), signed.raw


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


OBMC_MANIFEST = (b"purpose=xyz.openbmc_project.Software.Version.VersionPurpose.Host\n"
                 b"version=2.7.1\nExtendedVersion=\"build 42\"\nKeyType=OpenBMC\n"
                 b"HashType=RSA-SHA256\nMachineName=board-a\nCompatibleName=vendor.board-a\n")


def openbmc_seeds() -> dict[str, bytes]:
    """A selector byte, then the input: ``M`` + MANIFEST text, ``T`` + a tarball."""
    return {
        "manifest": b"M" + OBMC_MANIFEST,
        "unsigned-tar": b"T" + _tar({"MANIFEST": OBMC_MANIFEST, "image-bios": b"\xff" * 4096}),
        "signed-shape": b"T" + _tar({
            "MANIFEST": OBMC_MANIFEST, "image-bios": b"\x00" * 1024,
            "publickey": b"-----BEGIN PUBLIC KEY-----\n",
            "MANIFEST.sig": b"\x00" * 256, "image-bios.sig": b"\x01" * 256}),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        package, manifest = _signed(tmp)
    _write("codec", codec_seeds())
    _write("package", {"valid": package, "truncated": package[:1536]})
    doc = json.loads(manifest)
    _write("manifest", {"valid": manifest,
                        "nested": json.dumps({"signed": {"a": [[[1]]]}, "signature": {}}).encode(),
                        "deep": b'{"signed": ' + b"[" * 3000,
                        "wrong-key": json.dumps({**doc, "signature": {
                            "keyid": "0" * 16, "sig": doc["signature"]["sig"]}}).encode()})
    _write("openbmc", openbmc_seeds())
    example = (Path(__file__).resolve().parent.parent / "examples" / "agent.toml").read_bytes()
    _write("config", {"example": example,
                      "minimal": b'[agent]\nnode_id = "n1"\nmachine_name = "board-a"\n'
                                 b'[[targets]]\nname = "bios"\n'
                                 b'flash = { kind = "file", path = "bios.img" }\n',
                      "deep": b"a = " + b"[" * 3000})
    _write("redfish", {
        "update": b"U" + json.dumps({"ImageURI": "http://127.0.0.1/pkg.fwpkg",
                                     "TransferProtocol": "HTTP", "Targets": [
                                         "/redfish/v1/UpdateService/FirmwareInventory/bios"],
                                     "@Redfish.OperationApplyTime": "OnReset",
                                     "ForceUpdate": True}).encode(),
        "patch": b"P" + json.dumps({"AssetTag": "rack-7", "@odata.etag": "x"}).encode(),
        "deep": b"U" + b"[" * 3000,
        "subscription": b"D" + json.dumps({"Destination": "https://127.0.0.1:8443/events",
                                           "Protocol": "Redfish"}).encode(),
    })
    _write("range", {name: (1 << 20).to_bytes(4, "big") + value for name, value in {
        "first-last": b"bytes=0-1023", "open": b"bytes=4096-", "suffix": b"bytes=-512",
        "multi": b"bytes=0-1,4-5", "unit": b"items=0-1"}.items()})


if __name__ == "__main__":
    main()
