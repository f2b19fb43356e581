"""TokenRegistry: a token opens only what it was granted for, only while its lease lasts."""

from __future__ import annotations

import pytest

from fwrescue.errors import ConfigError
from fwrescue.transfer.tokens import (
    TokenExpired,
    TokenInvalid,
    TokenMissing,
    TokenRegistry,
    TokenRegistryFull,
    TokenRevoked,
    TokenScopeError,
    TokenUnknown,
    is_digest,
)
from tests.unit.transfer.testkit import OTHER_TOKEN, TOKEN, FakeClock

IMG = "a" * 64
MAN = "b" * 64
ELSE = "c" * 64


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


@pytest.fixture
def registry(clock: FakeClock) -> TokenRegistry:
    reg = TokenRegistry(clock=clock, max_grants=3)
    reg.grant(TOKEN, image_sha256=IMG, manifest_digest=MAN, expires_at=160.0)
    return reg


def test_granted_token_opens_its_image_and_its_manifest(registry: TokenRegistry) -> None:
    assert registry.check(TOKEN, sha256_or_digest=IMG).image_sha256 == IMG
    assert registry.check(TOKEN, sha256_or_digest=MAN).manifest_digest == MAN


def test_token_for_another_image_is_refused_with_403(registry: TokenRegistry) -> None:
    with pytest.raises(TokenScopeError) as err:
        registry.check(TOKEN, sha256_or_digest=ELSE)
    assert err.value.http_status == 403


def test_missing_malformed_and_unknown_tokens_are_refused_with_401(
        registry: TokenRegistry) -> None:
    for token, error in [(None, TokenMissing), ("", TokenMissing), ("short", TokenInvalid),
                         ("x" * 20 + "\r\nEvil: 1", TokenInvalid), (OTHER_TOKEN, TokenUnknown)]:
        with pytest.raises(error) as err:
            registry.check(token, sha256_or_digest=IMG)
        assert err.value.http_status == 401


def test_token_stops_working_when_its_lease_ends(registry: TokenRegistry,
                                                 clock: FakeClock) -> None:
    clock.now = 159.9
    registry.check(TOKEN, sha256_or_digest=IMG)
    clock.now = 160.0
    with pytest.raises(TokenExpired):
        registry.check(TOKEN, sha256_or_digest=IMG)
    with pytest.raises(TokenExpired):
        registry.check(TOKEN, sha256_or_digest=IMG, now=200.0)


def test_revoked_token_is_refused_and_says_revoked(registry: TokenRegistry) -> None:
    assert registry.revoke(TOKEN) is True
    assert registry.revoke(TOKEN) is False
    with pytest.raises(TokenRevoked):
        registry.check(TOKEN, sha256_or_digest=IMG)


def test_regrant_after_revoke_reopens_and_extends(registry: TokenRegistry,
                                                  clock: FakeClock) -> None:
    registry.revoke(TOKEN)
    registry.grant(TOKEN, image_sha256=IMG, manifest_digest=MAN, expires_at=500.0)
    clock.now = 400.0
    assert registry.check(TOKEN, sha256_or_digest=IMG).expires_at == 500.0


def test_registry_is_bounded_but_expired_grants_free_their_slot(registry: TokenRegistry,
                                                                clock: FakeClock) -> None:
    registry.grant("t" * 20, image_sha256=IMG, manifest_digest=MAN, expires_at=120.0)
    registry.grant("u" * 20, image_sha256=IMG, manifest_digest=MAN, expires_at=300.0)
    with pytest.raises(TokenRegistryFull):
        registry.grant("v" * 20, image_sha256=IMG, manifest_digest=MAN, expires_at=300.0)
    assert len(registry) == 3
    clock.now = 130.0  # "t…" expired
    registry.grant("v" * 20, image_sha256=IMG, manifest_digest=MAN, expires_at=300.0)
    assert len(registry) == 3


def test_grant_refuses_malformed_digests_and_changes_nothing(registry: TokenRegistry) -> None:
    with pytest.raises(ConfigError):
        registry.grant(OTHER_TOKEN, image_sha256="A" * 64, manifest_digest=MAN, expires_at=1e9)
    with pytest.raises(ConfigError):
        registry.grant(OTHER_TOKEN, image_sha256=IMG, manifest_digest=MAN,
                       expires_at=float("nan"))
    with pytest.raises(TokenUnknown):
        registry.check(OTHER_TOKEN, sha256_or_digest=IMG)


def test_digest_shape_is_exactly_64_lowercase_hex() -> None:
    assert is_digest("0" * 64)
    assert not is_digest("0" * 63)
    assert not is_digest("0" * 64 + "\n")
    assert not is_digest("F" * 64)
    assert not is_digest("../" + "0" * 61)
