"""The digest and MAC comparisons every trust decision rests on — pure, no I/O.

Whoever holds bytes (a staging file, a flash read-back, a datagram, a stored manifest)
computes their digest at the edge; *whether those bytes are the ones named* is decided
here, in constant time, so that no module outside :mod:`fwrescue.trust` compares a digest
itself (``tests/unit/test_trust_boundary.py`` proves it over ``src/``).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["addressed", "digests_match", "image_hasher", "sha256_hex"]


def digests_match(actual: str | bytes, expected: str | bytes) -> bool:
    """Whether two digests (or MAC tags) are equal, in constant time.

    Both must be of one type; text digests must be ASCII (a non-ASCII text digest never
    matches: :func:`hmac.compare_digest` would raise on it). Anything else is False."""
    if isinstance(actual, str) and isinstance(expected, str):
        if not (actual.isascii() and expected.isascii()):
            return False
        return hmac.compare_digest(actual, expected)
    if isinstance(actual, bytes) and isinstance(expected, bytes):
        return hmac.compare_digest(actual, expected)
    return False


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``: the name a manifest envelope is addressed by."""
    return hashlib.sha256(data).hexdigest()


def addressed(raw: bytes, digest: str) -> bool:
    """Whether ``raw`` hashes to ``digest`` — the content address it was fetched or stored
    under. True means the carrier delivered exactly the named bytes (so a failing check of
    those bytes is the *content's* fault, not the carrier's)."""
    return digests_match(sha256_hex(raw), digest)


def image_hasher() -> hashlib._Hash:
    """A fresh running digest of the kind a manifest's ``sha256`` names, for callers that
    accumulate it over staged bytes and hand it to ``Verifier.verify_image_digest``."""
    return hashlib.sha256()
