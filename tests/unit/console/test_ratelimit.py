"""Login rate limiting (sans-IO): per user, per source, sliding window, bounded memory."""

from __future__ import annotations

import pytest

from fwrescue.console.ratelimit import LoginLimiter, LoginLimits


def test_a_user_is_limited_from_any_address_and_freed_by_the_window() -> None:
    limiter = LoginLimiter(LoginLimits(max_failures=3, window_s=60.0))
    for i in range(3):
        assert limiter.retry_after("op", f"10.0.0.{i}", now=100.0 + i) == 0
        limiter.failed("op", f"10.0.0.{i}", now=100.0 + i)
    assert limiter.retry_after("op", "10.0.0.9", now=103.0) == pytest.approx(57.0)
    assert limiter.retry_after("viewer", "10.0.0.9", now=103.0) == 0
    assert limiter.retry_after("op", "10.0.0.9", now=160.5) == 0  # oldest failure expired


def test_a_source_is_limited_for_every_user_and_success_does_not_clear_it() -> None:
    limiter = LoginLimiter(LoginLimits(max_failures=2, window_s=30.0))
    limiter.failed("a", "192.0.2.1", now=0.0)
    limiter.failed("b", "192.0.2.1", now=1.0)
    assert limiter.retry_after("c", "192.0.2.1", now=2.0) == pytest.approx(28.0)
    limiter.succeeded("c")
    assert limiter.retry_after("c", "192.0.2.1", now=2.0) > 0
    assert limiter.retry_after("c", "192.0.2.2", now=2.0) == 0


def test_success_clears_the_user() -> None:
    limiter = LoginLimiter(LoginLimits(max_failures=2, window_s=30.0))
    limiter.failed("op", "s1", now=0.0)
    limiter.succeeded("op")
    limiter.failed("op", "s2", now=1.0)
    assert limiter.retry_after("op", "s3", now=2.0) == 0


def test_memory_is_bounded_under_a_flood_of_names() -> None:
    limiter = LoginLimiter(LoginLimits(max_failures=3, window_s=300.0, max_keys=100))
    for i in range(10_000):
        limiter.failed(f"user{i}", f"198.51.100.{i % 50}", now=float(i) / 100)
    assert limiter.size == (100, 50)
    # the most recent ones are still remembered and limited
    assert limiter.retry_after("x", "198.51.100.49", now=100.0) > 0


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_failures"):
        LoginLimits(max_failures=0)
