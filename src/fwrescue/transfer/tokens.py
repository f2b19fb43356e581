"""Bearer tokens that open one image and one manifest on a donor, for one lease.

A donor's protocol layer grants a token when it ACKs an ACCEPT (the token travels
in the ACK) and revokes it on RELEASE or DECLINE; otherwise the grant ends at
``expires_at``. :class:`TokenRegistry` is sans-IO: the clock is injected and
:meth:`TokenRegistry.check` may be given ``now`` explicitly.

A grant may name the node it was ACKed to (``recipient_id``). Over mutual TLS the donor
passes the client certificate's node id as ``holder``, and a token presented by any
other node is refused (:class:`TokenHolderMismatch`, 403) without touching the grant:
a token read off the wire is useless to whoever read it.

Tokens are kept only as SHA-256 digests, so the registry never holds (or leaks
through timing of a dict lookup on attacker-chosen keys) a secret it does not need.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fwrescue.errors import ConfigError, LocalError, RemoteError

__all__ = [
    "DEFAULT_MAX_GRANTS",
    "Grant",
    "TokenError",
    "TokenExpired",
    "TokenHolderMismatch",
    "TokenInvalid",
    "TokenMissing",
    "TokenRegistry",
    "TokenRegistryFull",
    "TokenRevoked",
    "TokenScopeError",
    "TokenUnknown",
    "is_digest",
    "validate_token",
]

# A donor with max_uploads of a few holds a handful of live leases; 1024 bounds memory
# against a protocol layer that grants without revoking.
DEFAULT_MAX_GRANTS = 1024
# RFC 6750 b64token charset; 16..256 characters (a 128-bit urlsafe token is 22).
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]{16,256}=*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def is_digest(value: str) -> bool:
    """Whether ``value`` is a content address: exactly 64 lowercase hex digits."""
    return bool(_HEX64.fullmatch(value))


def validate_token(token: str) -> str:
    """Return ``token`` if it is a well-formed bearer token; raise TokenInvalid otherwise."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise TokenInvalid("malformed bearer token")
    return token


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- errors (the requester presented a bad credential: a peer's fault) --------------------


class TokenError(RemoteError):
    """A request's bearer token does not open the requested content."""

    http_status = 401
    message_id = "Base.1.22.NoValidSession"
    retryable = False
    #: RFC 6750 ``error=`` value for the ``WWW-Authenticate`` header.
    bearer_error = "invalid_token"


class TokenMissing(TokenError):
    """No ``Authorization: Bearer`` header."""

    bearer_error = "invalid_request"


class TokenInvalid(TokenError):
    """The token is not a well-formed RFC 6750 b64token."""

    bearer_error = "invalid_request"


class TokenUnknown(TokenError):
    """No grant exists for this token."""


class TokenExpired(TokenError):
    """The grant's lease ended."""


class TokenRevoked(TokenError):
    """The grant was revoked (RELEASE, DECLINE, or the donor withdrew it)."""


class TokenScopeError(TokenError):
    """The token is valid but opens another image or manifest."""

    http_status = 403
    message_id = "Base.1.22.InsufficientPrivilege"
    bearer_error = "insufficient_scope"


class TokenHolderMismatch(TokenError):
    """The token was granted to another node than the TLS client presenting it."""

    http_status = 403
    message_id = "Base.1.22.InsufficientPrivilege"
    bearer_error = "invalid_token"


class TokenRegistryFull(LocalError):
    """Too many live grants; the donor should NAK instead of granting."""

    http_status = 503
    message_id = "Base.1.22.ServiceTemporarilyUnavailable"


# --- registry ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Grant:
    """What one token opens, and until when (in the registry clock's time base)."""

    image_sha256: str
    manifest_digest: str
    expires_at: float
    recipient_id: str | None = None  # the node the ACK went to (None: not bound)

    def __post_init__(self) -> None:
        if not is_digest(self.image_sha256) or not is_digest(self.manifest_digest):
            raise ConfigError("grant digests must be 64 lowercase hex digits")
        if self.expires_at != self.expires_at:  # NaN never expires: refuse it
            raise ConfigError("grant expiry must be a number")

    def opens(self, digest: str) -> bool:
        return digest in (self.image_sha256, self.manifest_digest)


class TokenRegistry:
    """Live grants by token. Not thread-safe; use it from one event loop.

    ``clock`` returns the current time in the same base as ``expires_at``.
    """

    def __init__(self, *, clock: Callable[[], float],
                 max_grants: int = DEFAULT_MAX_GRANTS) -> None:
        if max_grants < 1:
            raise ConfigError("max_grants must be at least 1", max_grants=max_grants)
        self._clock = clock
        self._max = max_grants
        self._grants: dict[str, Grant] = {}
        # Revoked tokens are remembered until their lease would have ended, so a late
        # request gets "revoked" rather than "unknown"; bounded like the grants.
        self._revoked: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._grants)

    def grant(self, token: str, *, image_sha256: str, manifest_digest: str,
              expires_at: float, recipient_id: str | None = None) -> Grant:
        """Grant (or re-grant, extending the lease) ``token``.

        Raises TokenInvalid for a malformed token, ConfigError for malformed digests,
        TokenRegistryFull when ``max_grants`` live grants exist.
        """
        validate_token(token)
        grant = Grant(image_sha256=image_sha256, manifest_digest=manifest_digest,
                      expires_at=expires_at, recipient_id=recipient_id)
        key = _key(token)
        self._purge(self._clock())
        if key not in self._grants and len(self._grants) >= self._max:
            raise TokenRegistryFull("too many live transfer grants", limit=self._max)
        self._revoked.pop(key, None)
        self._grants[key] = grant
        return grant

    def revoke(self, token: str) -> bool:
        """End ``token``'s grant now; return whether it was live."""
        key = _key(token)
        grant = self._grants.pop(key, None)
        if grant is None:
            return False
        self._revoked[key] = grant.expires_at
        while len(self._revoked) > self._max:
            self._revoked.popitem(last=False)
        return True

    def check(self, token: str | None, *, sha256_or_digest: str,
              now: float | None = None, holder: str | None = None) -> Grant:
        """Return the grant if ``token`` opens ``sha256_or_digest`` at ``now``.

        ``holder`` is the authenticated node presenting the token (mutual TLS), None when
        the transport authenticates nobody (plain HTTP): a bound grant then opens only
        for its ``recipient_id``. Raises TokenMissing, TokenInvalid, TokenUnknown,
        TokenRevoked, TokenExpired (all HTTP 401), TokenHolderMismatch or
        TokenScopeError (403). A refusal never changes the grant.
        """
        if token is None or token == "":
            raise TokenMissing("bearer token required")
        validate_token(token)
        when = self._clock() if now is None else now
        key = _key(token)
        grant = self._grants.get(key)
        if grant is None:
            if key in self._revoked:
                raise TokenRevoked("transfer token was revoked")
            raise TokenUnknown("transfer token is not known to this donor")
        if when >= grant.expires_at:
            raise TokenExpired("transfer token lease has ended", expires_at=grant.expires_at)
        if holder is not None and grant.recipient_id is not None \
                and holder != grant.recipient_id:
            raise TokenHolderMismatch("transfer token was granted to another node",
                                      presented_by=holder[:64])
        if not grant.opens(sha256_or_digest):
            raise TokenScopeError("transfer token does not open this content")
        return grant

    def _purge(self, now: float) -> None:
        for key in [k for k, g in self._grants.items() if now >= g.expires_at]:
            del self._grants[key]
        for key in [k for k, exp in self._revoked.items() if now >= exp]:
            del self._revoked[key]
