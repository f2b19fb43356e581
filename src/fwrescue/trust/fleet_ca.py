"""The fleet CA: issue transfer-plane certificates that bind a key to a node id.

:func:`new_ca` makes an EC P-256 CA (self-signed, ``keyCertSign`` only, path length 0);
:func:`issue` makes an end-entity certificate whose only identity is the SAN URI
``urn:fwrescue:node:<id>`` and the DNS name derived from it
(:mod:`fwrescue.trust.transfer_identity`), for both
``serverAuth`` and ``clientAuth`` (a node is a donor and a recipient), valid for a
bounded time. Sans-IO: keys and certificates in, PEM bytes out; :mod:`fleet_ca_cli`
does the files.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fwrescue.errors import ConfigError
from fwrescue.trust.transfer_identity import node_uri, transfer_hostname

__all__ = ["CA_DAYS", "MAX_NODE_DAYS", "NODE_DAYS", "IssuedPair", "issue", "key_pem",
           "load_ca", "new_ca"]

CA_DAYS = 3650
NODE_DAYS = 397  # the CA/Browser Forum's bound for a leaf; re-issue yearly
MAX_NODE_DAYS = 825
# The protocol's node id (fwrescue.protocol.messages / config: 1-64 of [A-Za-z0-9._-]).
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_BACKDATE = dt.timedelta(minutes=5)  # clock skew between the CA host and the fleet


@dataclass(frozen=True)
class IssuedPair:
    """A private key and its certificate, PEM-encoded."""

    key_pem: bytes
    cert_pem: bytes


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the file is 0600; a BMC has no one to type a passphrase)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_ca(name: str = "fwrescue fleet CA", *,
           now: dt.datetime | None = None) -> IssuedPair:
    """A fresh CA key and self-signed certificate valid :data:`CA_DAYS` days."""
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return IssuedPair(key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def load_ca(key_bytes: bytes, cert_bytes: bytes) -> tuple[ec.EllipticCurvePrivateKey,
                                                          x509.Certificate]:
    """Parse a CA pair; ConfigError unless it is an EC key, a CA certificate, and they
    belong together."""
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
        cert = x509.load_pem_x509_certificate(cert_bytes)
    except (ValueError, TypeError) as e:
        raise ConfigError("fleet CA key or certificate does not parse", detail=str(e)) from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("fleet CA key is not an EC key")
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is None or not basic.ca:
        raise ConfigError("fleet CA certificate is not a CA certificate")
    if cert.public_key() != key.public_key():
        raise ConfigError("fleet CA key does not match its certificate")
    return key, cert


def issue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, node_id: str, *,
          days: int = NODE_DAYS, now: dt.datetime | None = None) -> IssuedPair:
    """A new key and a certificate naming ``node_id`` for ``days`` days (1..MAX_NODE_DAYS),
    never past the CA's own expiry. ConfigError for a malformed id or validity."""
    if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
        raise ConfigError("node id must be 1-64 of [A-Za-z0-9._-]", node_id=str(node_id)[:80])
    if not isinstance(days, int) or not 1 <= days <= MAX_NODE_DAYS:
        raise ConfigError(f"validity must be 1..{MAX_NODE_DAYS} days", days=days)
    now = now or dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP256R1())
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(node_uri(node_id)),
             x509.DNSName(transfer_hostname(node_id))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return IssuedPair(key_pem(key), cert.public_bytes(serialization.Encoding.PEM))
