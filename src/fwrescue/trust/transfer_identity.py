"""Transfer-plane identity: which fleet node a certificate names.

A fleet-CA end-entity certificate names exactly one node through the SAN URI
``urn:fwrescue:node:<node id>`` (:func:`node_uri`), and carries the DNS name
:func:`transfer_hostname` derived from it, so a recipient can let ``ssl``'s own host-name
check (``server_hostname``) verify a donor's identity in the handshake: node ids are case
sensitive and may hold ``_`` or 64 characters, which DNS names cannot, hence a digest.
Views of the same rule:

* :func:`cert_node_ids` on a parsed ``cryptography`` certificate (configuration checks,
  the CA tooling);
* :func:`peercert_node_ids` on the dictionary ``ssl`` hands out for a peer certificate it
  has already verified against the fleet CA (``SSLObject.getpeercert()``, asyncio's
  ``transport.get_extra_info("peercert")``): the per-request check, no parsing.

Whether a chain reaches the fleet CA is the ``ssl`` handshake's job (and
:func:`check_issued_by` for files at configuration time); this module only answers
"does this (verified) certificate name this node id". Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature

__all__ = ["HOSTNAME_SUFFIX", "NODE_URI_PREFIX", "cert_names_node", "cert_node_ids",
           "check_issued_by", "names_node", "node_uri", "peercert_node_ids",
           "transfer_hostname"]

NODE_URI_PREFIX = "urn:fwrescue:node:"
#: RFC 2606 reserves .invalid: these names never resolve, they only label certificates.
HOSTNAME_SUFFIX = ".node.fwrescue.invalid"


def node_uri(node_id: str) -> str:
    """The SAN URI a certificate for ``node_id`` carries."""
    return NODE_URI_PREFIX + node_id


def transfer_hostname(node_id: str) -> str:
    """The DNS SAN (and TLS ``server_hostname``) for ``node_id``: 128 bits of its
    SHA-256 in hex, under :data:`HOSTNAME_SUFFIX`."""
    return hashlib.sha256(node_id.encode()).hexdigest()[:32] + HOSTNAME_SUFFIX


def _ids(uris: list[str]) -> tuple[str, ...]:
    return tuple(u[len(NODE_URI_PREFIX):] for u in uris
                 if u.startswith(NODE_URI_PREFIX) and len(u) > len(NODE_URI_PREFIX))


def cert_node_ids(cert: x509.Certificate) -> tuple[str, ...]:
    """The node ids ``cert``'s SAN URIs name (empty: none, or no SAN extension)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return _ids(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def peercert_node_ids(peercert: Mapping[str, object] | None) -> tuple[str, ...]:
    """The node ids in an ``ssl`` peer-certificate dictionary (empty for None/{}: no
    verified certificate)."""
    if not peercert:
        return ()
    san = peercert.get("subjectAltName", ())
    if not isinstance(san, tuple | list):
        return ()
    return _ids([v for k, v in (tuple(e) for e in san if len(e) == 2)
                 if k == "URI" and isinstance(v, str)])


def names_node(ids: tuple[str, ...], node_id: str) -> bool:
    """True when ``ids`` is exactly ``(node_id,)``: a certificate naming several nodes
    is nobody's."""
    return ids == (node_id,)


def cert_names_node(cert: x509.Certificate, node_id: str) -> bool:
    """Whether ``cert`` names exactly ``node_id`` (URI) and carries its host name."""
    if not names_node(cert_node_ids(cert), node_id):
        return False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return transfer_hostname(node_id) in san.value.get_values_for_type(x509.DNSName)


def check_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert`` (signature and issuer name; validity dates are the
    handshake's concern)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
