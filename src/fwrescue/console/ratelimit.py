"""Login rate limiting for the dashboard (sans-IO: every call takes ``now``).

Failed logins are counted per user name and per source address over a sliding ``window_s``.
Once either key has ``max_failures`` failures in the window, further attempts for it are
refused *before* the password is checked (no scrypt work for an attacker), until its oldest
failure leaves the window. A successful login clears its user's failures (not its source's:
a valid account does not launder an address that guesses others).

Memory is bounded: each key keeps at most ``max_failures`` timestamps, and each of the two
tables at most ``max_keys`` keys (the least recently failed is forgotten first), so a flood
of invented user names or addresses cannot grow it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

__all__ = ["LoginLimiter", "LoginLimits"]


@dataclass(frozen=True)
class LoginLimits:
    max_failures: int = 5
    window_s: float = 300.0
    max_keys: int = 10_000

    def __post_init__(self) -> None:
        if self.max_failures < 1 or self.window_s <= 0 or self.max_keys < 1:
            raise ValueError("login limits: max_failures >= 1, window_s > 0, max_keys >= 1")


class _FailureTable:
    def __init__(self, limits: LoginLimits) -> None:
        self._limits = limits
        self._keys: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._keys.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self._limits.window_s:
            times.popleft()
        if not times:
            del self._keys[key]
            return None
        return times

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        times = self._recent(key, now)
        if times is None or len(times) < self._limits.max_failures:
            return 0.0
        return max(0.0, times[0] + self._limits.window_s - now)

    def fail(self, key: str, now: float) -> None:
        times = self._recent(key, now)
        if times is None:
            times = self._keys[key] = deque(maxlen=self._limits.max_failures)
        times.append(now)
        self._keys.move_to_end(key)
        while len(self._keys) > self._limits.max_keys:
            self._keys.popitem(last=False)

    def clear(self, key: str) -> None:
        self._keys.pop(key, None)


class LoginLimiter:
    def __init__(self, limits: LoginLimits | None = None) -> None:
        self.limits = limits or LoginLimits()
        self._users = _FailureTable(self.limits)
        self._sources = _FailureTable(self.limits)

    def retry_after(self, username: str, source: str, now: float) -> float:
        """Seconds until a login for ``username`` from ``source`` is allowed (0: now)."""
        return max(self._users.retry_after(username, now),
                   self._sources.retry_after(source, now))

    def failed(self, username: str, source: str, now: float) -> None:
        self._users.fail(username, now)
        self._sources.fail(source, now)

    def succeeded(self, username: str) -> None:
        self._users.clear(username)

    @property
    def size(self) -> tuple[int, int]:
        """(user keys, source keys) currently held."""
        return len(self._users), len(self._sources)
