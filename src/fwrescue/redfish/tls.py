"""The service's TLS identity: a self-signed certificate kept in the agent's state dir.

Created on first start (EC P-256, valid ten years, SAN = the bind host, ``localhost`` and
``127.0.0.1``) and reused afterwards, so clients can pin it. Files are written atomically
(temp file, fsync, rename); the key is readable by the owner only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fwrescue.atomicfile import atomic_write
from fwrescue.errors import ConfigError

__all__ = ["CERT_FILE", "KEY_FILE", "ensure_certificate", "server_ssl_context"]

CERT_FILE = "redfish-cert.pem"
KEY_FILE = "redfish-key.pem"


def ensure_certificate(state_dir: Path, host: str) -> tuple[Path, Path]:
    """Return (cert, key) paths in ``state_dir``, creating a self-signed pair if absent.

    Raises ``ConfigError`` when existing files cannot be loaded (they are never replaced
    silently: an operator may have pinned or installed them).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = state_dir / CERT_FILE, state_dir / KEY_FILE
    if cert_path.exists() and key_path.exists():
        try:
            x509.load_pem_x509_certificate(cert_path.read_bytes())
            serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError) as e:
            raise ConfigError("unreadable Redfish TLS certificate/key", path=str(cert_path)) from e
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fwrescue Redfish service")])
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    try:
        sans.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        if host:
            sans.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(sans))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    atomic_write(key_path, key_pem, mode=0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context for the pair."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx
