"""``fwrescue fleet-ca``: the release tooling's fleet CA for the transfer plane.

``fleet-ca init DIR`` writes ``DIR/ca.key`` (0600) and ``DIR/ca.pem``; it refuses a
folder that already holds a CA. ``fleet-ca issue DIR --node ID --out PREFIX`` writes
``PREFIX.key`` (0600) and ``PREFIX.pem``, a certificate naming ``ID``, and checks the
result as an agent would at start; ``fleet-ca verify DIR PREFIX --node ID`` runs that
check alone. Writes are atomic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fwrescue.atomicfile import atomic_write
from fwrescue.config import TlsSettings, parse_tls
from fwrescue.errors import ConfigError
from fwrescue.trust.fleet_ca import NODE_DAYS, IssuedPair, issue, load_ca, new_ca
from fwrescue.trust.transfer_tls import check_identity, read_pem

__all__ = ["CA_CERT", "CA_KEY", "add_transfer_tls_arguments", "init_ca", "issue_node",
           "register_fleet_ca_commands", "transfer_tls_from_args"]

CA_KEY = "ca.key"
CA_CERT = "ca.pem"


def _write_pair(key_path: Path, cert_path: Path, pair: IssuedPair) -> None:
    try:
        key_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(key_path, pair.key_pem, mode=0o600)
        atomic_write(cert_path, pair.cert_pem)
    except OSError as e:
        raise ConfigError("cannot write the certificate files", path=str(key_path),
                          detail=str(e)) from e


def init_ca(directory: Path) -> Path:
    """Create a fleet CA in ``directory``; return the CA certificate's path."""
    key_path, cert_path = directory / CA_KEY, directory / CA_CERT
    if key_path.exists() or cert_path.exists():
        raise ConfigError("a fleet CA already exists here; refusing to replace it",
                          path=str(directory))
    _write_pair(key_path, cert_path, new_ca())
    return cert_path


def issue_node(directory: Path, node_id: str, out: Path, *,
               days: int = NODE_DAYS) -> tuple[Path, Path]:
    """Issue ``out.key``/``out.pem`` for ``node_id`` from the CA in ``directory``."""
    try:
        raw_key, raw_cert = read_pem(directory / CA_KEY), read_pem(directory / CA_CERT)
    except (OSError, ValueError) as e:
        raise ConfigError("cannot read the fleet CA", path=str(directory),
                          detail=str(e)) from e
    ca_key, ca_cert = load_ca(raw_key, raw_cert)
    pair = issue(ca_key, ca_cert, node_id, days=days)
    key_path, cert_path = out.with_name(out.name + ".key"), out.with_name(out.name + ".pem")
    _write_pair(key_path, cert_path, pair)
    check_identity(directory / CA_CERT, cert_path, key_path, node_id)
    return cert_path, key_path


def add_transfer_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls-ca/--tls-cert/--tls-key`` or ``--plain-http``: a donor command's transfer
    plane, the flags' form of an agent's ``[tls]`` / ``[transfer] plain_http``."""
    parser.add_argument("--tls-ca", type=Path, help="the fleet CA certificate (mutual TLS)")
    parser.add_argument("--tls-cert", type=Path, help="this donor's fleet-CA certificate")
    parser.add_argument("--tls-key", type=Path, help="its private key")
    parser.add_argument("--plain-http", action="store_true",
                        help="transfer in the clear (the whole fleet must)")


def transfer_tls_from_args(args: argparse.Namespace, node_id: str) -> TlsSettings | None:
    """The checked identity the flags name for ``node_id`` (ConfigError as ``[tls]``)."""
    given = {k: str(v) for k, v in (("ca", args.tls_ca), ("cert", args.tls_cert),
                                    ("key", args.tls_key)) if v is not None}
    return parse_tls(given or None, {"plain_http": bool(args.plain_http)}, Path.cwd(),
                     node_id)


def _init(args: argparse.Namespace) -> int:
    print(init_ca(args.dir))
    return 0


def _issue(args: argparse.Namespace) -> int:
    cert, key = issue_node(args.dir, args.node, args.out, days=args.days)
    print(cert)
    print(key)
    return 0


def _verify(args: argparse.Namespace) -> int:
    prefix: Path = args.prefix
    check_identity(args.dir / CA_CERT, prefix.with_name(prefix.name + ".pem"),
                   prefix.with_name(prefix.name + ".key"), args.node)
    print(f"ok: {prefix} names {args.node} and chains to {args.dir / CA_CERT}")
    return 0


def register_fleet_ca_commands(subparsers: argparse._SubParsersAction[
        argparse.ArgumentParser]) -> None:
    ca = subparsers.add_parser("fleet-ca", help="the transfer plane's fleet CA")
    sub = ca.add_subparsers(dest="fleet_ca_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("init", help="create a fleet CA (ca.key, ca.pem) in DIR")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=_init)
    p = sub.add_parser("issue", help="issue a node certificate (PREFIX.pem, PREFIX.key)")
    p.add_argument("dir", type=Path, help="the fleet CA's folder")
    p.add_argument("--node", required=True, help="the node's protocol id")
    p.add_argument("--out", required=True, type=Path, help="output path prefix")
    p.add_argument("--days", type=int, default=NODE_DAYS, help="validity in days")
    p.set_defaults(func=_issue)
    p = sub.add_parser("verify", help="check PREFIX.pem/.key as an agent does at start")
    p.add_argument("dir", type=Path, help="the fleet CA's folder")
    p.add_argument("prefix", type=Path)
    p.add_argument("--node", required=True, help="the node id the certificate must name")
    p.set_defaults(func=_verify)
