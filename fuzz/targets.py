"""The fuzz targets: one per parser of outside input, each with the error types it documents.

A target is ``one_input(data: bytes) -> None``. It feeds ``data`` to the parser the way
the outside world reaches it (a datagram, a file on disk, a request body, a header) and
lets only the documented error types through (:data:`ALLOWED`); anything else escaping
is a crash — :func:`run_one` re-raises it so atheris/libFuzzer records the input.

Inputs are fed from memory (``io.BytesIO``, ``tomllib.loads``) through the same parser
functions the file-based APIs call, so no input costs a file write. Targets must be
deterministic and leave nothing behind: what a parser writes (the OpenBMC importer's
image and package) goes to one scratch folder per process (tmpfs where there is one),
removed at exit.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fwrescue.errors import (
    ConfigError,
    ManifestError,
    PackageError,
    RemoteProtocolError,
    SignatureError,
    SizeLimitExceeded,
    TrustError,
)
from fwrescue.redfish.messages import RequestError

__all__ = ["ALLOWED", "TARGETS", "run_one"]

# what the importer writes goes to a memory-backed folder where there is one
_SCRATCH = Path(tempfile.mkdtemp(prefix="fwrescue-fuzz-", dir="/dev/shm" if os.path.isdir(
    "/dev/shm") and os.access("/dev/shm", os.W_OK) else None))
atexit.register(shutil.rmtree, _SCRATCH, True)
_NOW = 1_700_000_000.0


# --- datagram codec -----------------------------------------------------------------------


def _codec() -> Callable[[bytes], None]:
    from fwrescue.protocol.codec import Codec

    plain = Codec(None, replay_window_s=30.0)

    def one(data: bytes) -> None:
        plain.decode(data, _NOW)

    return one


# --- package (tar) reader -----------------------------------------------------------------


def _package() -> Callable[[bytes], None]:
    from fwrescue.image.package import read_package_layout

    def one(data: bytes) -> None:
        # the parser behind open_package, over the bytes in memory (no file per input)
        layout = read_package_layout(io.BytesIO(data), len(data), max_image_size=1 << 20)
        _ = layout.signed.manifest
        image = data[layout.image_offset:layout.image_offset + layout.image_size]
        assert len(image) == layout.image_size, (layout, len(data))  # the layout holds it

    return one


# --- signed manifest ----------------------------------------------------------------------


def _manifest() -> Callable[[bytes], None]:
    from fwrescue.trust.keys import TrustStore, generate_keypair
    from fwrescue.trust.manifest import SignedManifest
    from fwrescue.trust.rollback import RollbackStore
    from fwrescue.trust.verifier import Verifier

    _private, public = generate_keypair(_SCRATCH / "keys", "fuzz")
    verifier = Verifier(TrustStore.from_files([public]), RollbackStore(_SCRATCH / "floor.json"))

    def one(data: bytes) -> None:
        signed = SignedManifest.parse(data)
        verifier.verify_signed(signed, target=signed.manifest.target, machine_name=(
            signed.manifest.machine_names[0] if signed.manifest.machine_names else "x"))

    return one


# --- OpenBMC importer ---------------------------------------------------------------------


def _openbmc() -> Callable[[bytes], None]:
    from fwrescue.image.openbmc import import_openbmc_stream, parse_openbmc_manifest
    from fwrescue.trust.keys import SigningKey, generate_keypair

    private, _public = generate_keypair(_SCRATCH / "obmc-keys", "fuzz")
    key = SigningKey.load(private)
    work = _SCRATCH / "obmc"
    work.mkdir()
    out = work / "out.fwpkg"

    def one(data: bytes) -> None:
        # a selector byte: "M" the MANIFEST text alone (the line parser), else a tarball
        # (a tar's own first byte would collide: its first member is often "MANIFEST")
        if data[:1] == b"M":
            parse_openbmc_manifest(data[1:])
            return
        try:  # the tarball from memory; the image and the package go to the tmpfs folder
            import_openbmc_stream(io.BytesIO(data[1:]), "in.tar", out, key=key,
                                  security_version=1, max_image_size=1 << 20, workdir=work)
        finally:
            out.unlink(missing_ok=True)

    return one


# --- agent config loader ------------------------------------------------------------------


def _config() -> Callable[[bytes], None]:
    import tomllib

    from fwrescue.config import parse_config

    base = _SCRATCH / "config"  # relative paths in the config resolve here (made once)
    base.mkdir()

    def one(data: bytes) -> None:
        # load_config is tomllib.load + parse_config(data, folder); it turns exactly these
        # three into ConfigError("not valid TOML") (tests/unit/test_fuzz_regressions.py)
        try:
            parsed = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
            return
        parse_config(parsed, base)

    return one


# --- Redfish request bodies ---------------------------------------------------------------


def _redfish() -> Callable[[bytes], None]:
    from aiohttp.test_utils import make_mocked_request

    from fwrescue.redfish.events import validate_destination
    from fwrescue.redfish.http import apply_patch, decode_json_body
    from fwrescue.redfish.messages import Registries, RequestError, error_body
    from fwrescue.redfish.upload import check_image_uri, parse_update_parameters

    registries = Registries()
    request = make_mocked_request("PATCH", "/redfish/v1/Systems/s1")
    current: dict[str, Any] = {"@odata.id": "/redfish/v1/Systems/s1", "AssetTag": "",
                               "Name": "system"}
    writable = {"AssetTag": lambda v: isinstance(v, str) and len(v) <= 64}

    def checked(call: Callable[[], object]) -> None:
        try:
            call()
        except RequestError as e:
            # every refusal must render as a Redfish error body (registry args match)
            body = error_body(registries, e)
            json.dumps(body)
            raise

    def one(data: bytes) -> None:
        selector, raw = data[:1], data[1:]
        body: dict[str, Any] = {}
        checked(lambda: body.update(decode_json_body(raw)))
        if selector == b"P":
            checked(lambda: apply_patch(request, current, body, writable))
        elif selector == b"D":
            checked(lambda: validate_destination(body.get("Destination")))
        else:
            def update() -> None:
                _req, rest = parse_update_parameters(
                    body, action="UpdateService.SimpleUpdate", allow_image_uri=True)
                check_image_uri(rest.get("ImageURI"), rest.get("TransferProtocol"))
            checked(update)

    return one


# --- HTTP Range header --------------------------------------------------------------------


def _range() -> Callable[[bytes], None]:
    from fwrescue.transfer.server import parse_range

    def one(data: bytes) -> None:
        size = int.from_bytes(data[:4], "big")
        header = data[4:].decode("latin-1")  # what an HTTP header value decodes as
        got = parse_range(header, size)
        if got is not None:  # a satisfiable range lies inside the image
            first, last = got
            assert 0 <= first <= last < size, (header, size, got)

    return one


#: target name -> factory returning its one-input function (built once per process)
TARGETS: dict[str, Callable[[], Callable[[bytes], None]]] = {
    "codec": _codec,
    "package": _package,
    "manifest": _manifest,
    "openbmc": _openbmc,
    "config": _config,
    "redfish": _redfish,
    "range": _range,
}

#: the error types each parser documents; anything else is a crash
ALLOWED: dict[str, tuple[type[BaseException], ...]] = {
    "codec": (RemoteProtocolError,),
    "package": (PackageError, ManifestError, SizeLimitExceeded),
    "manifest": (ManifestError, SizeLimitExceeded, TrustError),
    "openbmc": (PackageError, SizeLimitExceeded, SignatureError, ManifestError, ConfigError),
    "config": (ConfigError,),
    "redfish": (RequestError,),  # each also checked to render as an error body above
    "range": (ValueError,),
}


def run_one(name: str, one: Callable[[bytes], None], data: bytes) -> None:
    """Feed ``data``; swallow the documented errors of ``name``, re-raise anything else."""
    try:
        one(data)
    except ALLOWED[name]:
        pass
