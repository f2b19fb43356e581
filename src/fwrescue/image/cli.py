"""The ``fwrescue keys`` and ``fwrescue image`` commands (argparse).

:func:`register_image_commands` adds both command groups to the ``fwrescue``
sub-parsers; each handler is ``_cmd_x(args) -> int`` set with ``set_defaults(func=…)``.

Exit status: 0 success; 1 ``image verify`` found the package untrusted (any
TrustError); 2 bad input (a malformed argument, unreadable file, any other
FwRescueError). Errors print ``error: <message>`` on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fwrescue.errors import ConfigError, FwRescueError, TrustError
from fwrescue.image.openbmc import import_openbmc
from fwrescue.image.package import build_package, describe, open_package, stage_package
from fwrescue.trust.keys import SigningKey, TrustStore, generate_keypair
from fwrescue.trust.rollback import RollbackStore
from fwrescue.trust.verifier import Verifier

__all__ = ["EXIT_BAD_INPUT", "EXIT_OK", "EXIT_UNTRUSTED", "register_image_commands"]

EXIT_OK = 0
EXIT_UNTRUSTED = 1
EXIT_BAD_INPUT = 2

Handler = Callable[[argparse.Namespace], int]


def _guarded(handler: Handler) -> Handler:
    """Turn expected failures into ``error: …`` on stderr and an exit status."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except TrustError as e:
            print(f"error: {e} [{type(e).__name__}]", file=sys.stderr)
            return EXIT_UNTRUSTED if getattr(args, "untrusted_exit", False) else EXIT_BAD_INPUT
        except FwRescueError as e:
            print(f"error: {e} [{type(e).__name__}]", file=sys.stderr)
            return EXIT_BAD_INPUT
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            print(f"error: {e.strerror or e}{where}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return run


def _positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from e
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _keytype_pem(text: str) -> tuple[str, Path]:
    keytype, sep, pem = text.partition("=")
    if not sep or not keytype or not pem:
        raise argparse.ArgumentTypeError(f"expected KEYTYPE=PEM, got {text!r}")
    return keytype, Path(pem)


# --- handlers ------------------------------------------------------------------------------


@_guarded
def _cmd_keys_generate(args: argparse.Namespace) -> int:
    private, public = generate_keypair(args.out, args.name)
    key = SigningKey.load(private)
    print(f"private key: {private}")
    print(f"public key:  {public}")
    print(f"key id:      {key.key_id}")
    return EXIT_OK


@_guarded
def _cmd_image_build(args: argparse.Namespace) -> int:
    key = SigningKey.load(args.key)
    signed = build_package(
        args.image, args.output, key=key, target=args.target, machine_names=args.machine,
        version=args.version, security_version=args.security_version,
        chunk_size=args.chunk_size, description=args.description,
    )
    print(f"wrote {args.output}")
    print(f"digest {signed.digest}")
    return EXIT_OK


def _print_table(info: dict[str, Any], title: str) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in info.items():
        if isinstance(value, list | tuple):
            value = ", ".join(map(str, value))
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
        table.add_row(name, str(value))
    Console(file=sys.stdout, soft_wrap=True).print(table)


@_guarded
def _cmd_image_inspect(args: argparse.Namespace) -> int:
    reader = open_package(args.package)
    info = describe(reader.signed)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        _print_table(info, str(args.package))
    return EXIT_OK


@_guarded
def _cmd_image_verify(args: argparse.Namespace) -> int:
    trust = TrustStore.from_files(args.trust)
    if not trust.key_ids:
        raise ConfigError("no trusted public keys found", paths=[str(p) for p in args.trust])
    floor: int = args.floor
    with tempfile.TemporaryDirectory(prefix="fwrescue-verify-") as tmp:
        # A throwaway floor store: verify never raises a persisted floor.
        verifier = Verifier(trust, RollbackStore(Path(tmp) / "floors.json"),
                            fleet_floor=lambda _target: floor)
        verified, _ = stage_package(verifier, args.package, target=args.target,
                                    machine_name=args.machine, staging_dir=Path(tmp) / "stage")
    manifest = verified.manifest
    print(f"trusted: {args.package}")
    print(f"digest {verified.digest} version {manifest.version} "
          f"security_version {manifest.security_version} key {manifest.key_id}")
    return EXIT_OK


@_guarded
def _cmd_image_import_openbmc(args: argparse.Namespace) -> int:
    key = SigningKey.load(args.key)
    trusted = dict(args.trusted_rsa) if args.trusted_rsa else None
    if trusted is None:
        print("warning: OpenBMC signatures not checked (no --trusted-rsa)", file=sys.stderr)
    signed = import_openbmc(
        args.tarball, args.output, key=key, security_version=args.security_version,
        trusted_rsa_keys=trusted, target=args.target, chunk_size=args.chunk_size,
    )
    print(f"wrote {args.output}")
    print(f"digest {signed.digest}")
    return EXIT_OK


# --- registration --------------------------------------------------------------------------


def register_image_commands(subparsers: Any) -> None:
    """Add ``keys`` and ``image`` to an ``ArgumentParser.add_subparsers()`` object."""
    keys = subparsers.add_parser("keys", help="manage Ed25519 signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="create NAME.key (0600) and NAME.pub")
    gen.add_argument("--out", type=Path, required=True, help="directory for the key files")
    gen.add_argument("--name", required=True, help="base name of the key files")
    gen.set_defaults(func=_cmd_keys_generate)

    image = subparsers.add_parser("image", help="build, inspect and verify image packages")
    image_sub = image.add_subparsers(dest="image_command", required=True)

    build = image_sub.add_parser("build", help="sign an image into a .fwpkg package")
    build.add_argument("image", type=Path)
    build.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    build.add_argument("--target", default="bios", help="component (default: bios)")
    build.add_argument("--machine", action="append", required=True,
                       help="compatible board name (repeat for several)")
    build.add_argument("--version", required=True)
    build.add_argument("--security-version", type=_positive_int, required=True)
    build.add_argument("--chunk-size", type=_positive_int, default=64 * 1024)
    build.add_argument("--description", default="")
    build.add_argument("-o", "--output", type=Path, required=True)
    build.set_defaults(func=_cmd_image_build)

    inspect = image_sub.add_parser("inspect", help="show a package's manifest")
    inspect.add_argument("package", type=Path)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(func=_cmd_image_inspect)

    verify = image_sub.add_parser(
        "verify", help="run every trust check; exit 0 when trusted, 1 when not")
    verify.add_argument("package", type=Path)
    verify.add_argument("--trust", type=Path, nargs="+", required=True,
                        help="trusted public keys (*.pub files or directories)")
    verify.add_argument("--target", default="bios")
    verify.add_argument("--machine", required=True)
    verify.add_argument("--floor", type=_positive_int, default=0,
                        help="anti-rollback floor (minimum security version)")
    verify.set_defaults(func=_cmd_image_verify, untrusted_exit=True)

    obmc = image_sub.add_parser("import-openbmc",
                                help="convert an OpenBMC BIOS tarball into a .fwpkg")
    obmc.add_argument("tarball", type=Path)
    obmc.add_argument("--key", type=Path, required=True)
    obmc.add_argument("--security-version", type=_positive_int, required=True)
    obmc.add_argument("--trusted-rsa", type=_keytype_pem, action="append",
                      metavar="KEYTYPE=PEM",
                      help="require OpenBMC signatures by this RSA key (repeatable)")
    obmc.add_argument("--target", default="bios")
    obmc.add_argument("--chunk-size", type=_positive_int, default=64 * 1024)
    obmc.add_argument("-o", "--output", type=Path, required=True)
    obmc.set_defaults(func=_cmd_image_import_openbmc)
