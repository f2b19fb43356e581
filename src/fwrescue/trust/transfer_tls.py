"""The transfer plane's TLS files: check them at start, build the ``ssl`` contexts.

:func:`check_identity` reads a node's fleet-CA files and raises a specific ConfigError
for the first problem (unreadable, does not parse, certificate and key differ, not
issued by the fleet CA, does not name this node), so an agent never starts with an
identity its peers would refuse. The contexts are mutual: a donor's server demands a
client certificate chained to the fleet CA (the node id in it is read per request); a
recipient's client demands the same of the donor and checks the donor's node id in the
handshake through the derived host name it asks for (``server_hostname``, see
:func:`~fwrescue.trust.transfer_identity.transfer_hostname`).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fwrescue.errors import ConfigError
from fwrescue.trust.transfer_identity import cert_names_node, cert_node_ids, check_issued_by

__all__ = ["MAX_PEM_BYTES", "check_identity", "client_context", "read_pem", "server_context"]

#: A PEM certificate or key is a few KiB; a larger file is refused before it is parsed.
MAX_PEM_BYTES = 64 * 1024


def read_pem(path: Path) -> bytes:
    """A PEM file's bytes, at most :data:`MAX_PEM_BYTES`: OSError if unreadable,
    ValueError if larger (refused before anything parses it)."""
    with open(path, "rb") as f:
        raw = f.read(MAX_PEM_BYTES + 1)
    if len(raw) > MAX_PEM_BYTES:
        raise ValueError(f"larger than a PEM file can be ({MAX_PEM_BYTES} bytes)")
    return raw


def _read(path: Path, what: str) -> bytes:
    try:
        return read_pem(path)
    except OSError as e:
        raise ConfigError(f"tls.{what} is not readable", path=str(path),
                          detail=e.strerror or str(e)) from e
    except ValueError as e:
        raise ConfigError(f"tls.{what} is larger than a PEM file can be", path=str(path),
                          limit=MAX_PEM_BYTES) from e


def check_identity(ca: Path, cert: Path, key: Path, node_id: str) -> None:
    """Raise ConfigError unless ``cert``/``key`` are a pair the fleet CA ``ca`` issued
    for ``node_id``."""
    raw_ca, raw_cert, raw_key = _read(ca, "ca"), _read(cert, "cert"), _read(key, "key")
    try:
        ca_cert = x509.load_pem_x509_certificate(raw_ca)
    except ValueError as e:
        raise ConfigError("tls.ca is not a PEM certificate", path=str(ca)) from e
    try:
        node_cert = x509.load_pem_x509_certificate(raw_cert)
    except ValueError as e:
        raise ConfigError("tls.cert is not a PEM certificate", path=str(cert)) from e
    try:
        private = serialization.load_pem_private_key(raw_key, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError("tls.key is not an unencrypted PEM private key",
                          path=str(key)) from e
    if node_cert.public_key() != private.public_key():
        raise ConfigError("tls.cert does not match tls.key", cert=str(cert), key=str(key))
    if not check_issued_by(node_cert, ca_cert):
        raise ConfigError("tls.cert is not issued by the fleet CA in tls.ca",
                          cert=str(cert), ca=str(ca))
    if not cert_names_node(node_cert, node_id):
        raise ConfigError("tls.cert does not name this node", node_id=node_id,
                          names=list(cert_node_ids(node_cert)) or None)


def _context(purpose: int, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("cannot load the transfer TLS files", detail=str(e)) from e
    return ctx


def server_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A donor's context: its certificate; clients must present one the CA issued."""
    return _context(ssl.PROTOCOL_TLS_SERVER, ca, cert, key)


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A recipient's context: its certificate; the donor's must chain to the CA and
    carry the host name of the node id asked for (``server_hostname``)."""
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, ca, cert, key)
    ctx.check_hostname = True
    return ctx
