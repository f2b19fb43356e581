"""Settings of the Redfish service: accounts, limits and where files go. Validated once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fwrescue.errors import ConfigError

__all__ = ["ROLES", "AccountSpec", "RedfishServiceSettings"]

#: the three standard Redfish roles, strongest first
ROLES: tuple[str, ...] = ("Administrator", "Operator", "ReadOnly")

# Bounds on account fields (Redfish AccountService.MinPasswordLength / MaxPasswordLength).
_MIN_PASSWORD = 8
_MAX_PASSWORD = 128
_MAX_USER = 32


@dataclass(frozen=True, kw_only=True)
class AccountSpec:
    """A local account created when the service starts."""

    username: str
    password: str
    role: str = "Administrator"

    def __post_init__(self) -> None:
        if not self.username or len(self.username) > _MAX_USER or not self.username.isascii():
            raise ConfigError("account username must be 1-32 ASCII chars", user=self.username)
        if not all(c.isalnum() or c in "._-" for c in self.username):
            raise ConfigError("account username may hold only [A-Za-z0-9._-]", user=self.username)
        if not _MIN_PASSWORD <= len(self.password) <= _MAX_PASSWORD:
            raise ConfigError(
                f"account password must be {_MIN_PASSWORD}-{_MAX_PASSWORD} chars",
                user=self.username,
            )
        if self.role not in ROLES:
            raise ConfigError(f"account role must be one of {ROLES}", role=self.role)


@dataclass(frozen=True, kw_only=True)
class RedfishServiceSettings:
    """Limits and locations. Every untrusted length has a named limit here.

    ``upload_dir`` receives streamed uploads and downloads (one file per request, deleted on
    failure). ``max_image_size`` bounds both: 64 MiB by default, twice the largest 32 MiB
    BIOS flash named in the design, plus headroom for the package's manifest and signature.
    """

    accounts: tuple[AccountSpec, ...]
    upload_dir: Path
    max_image_size: int = 64 * 1024 * 1024
    #: request bodies other than uploads (JSON): generous for any Redfish payload we accept
    max_json_body: int = 64 * 1024
    session_timeout_s: int = 1800
    max_sessions: int = 64
    #: finished tasks kept for clients to read; the oldest finished ones are dropped first
    max_tasks: int = 256
    max_transcript_entries: int = 512
    max_subscriptions: int = 16
    event_retry_attempts: int = 3
    event_retry_interval_s: float = 1.0
    event_timeout_s: float = 5.0
    #: bounded queue per SSE client; a client that falls this far behind is dropped
    sse_queue_len: int = 256
    max_sse_clients: int = 16
    #: ImageURI download: total time allowed and per-read stall time
    download_timeout_s: float = 600.0
    download_stall_s: float = 30.0
    #: seconds clients are told to wait between task-monitor polls
    retry_after_s: int = 1
    service_uuid: str = "6d3b2f1e-9a0c-4c1e-8f7b-2a3c4d5e6f70"

    def __post_init__(self) -> None:
        if not self.accounts:
            raise ConfigError("the Redfish service needs at least one account")
        names = [a.username for a in self.accounts]
        if len(set(names)) != len(names):
            raise ConfigError("duplicate Redfish account names", accounts=names)
        positive = {
            "max_image_size": self.max_image_size,
            "max_json_body": self.max_json_body,
            "session_timeout_s": self.session_timeout_s,
            "max_sessions": self.max_sessions,
            "max_tasks": self.max_tasks,
            "max_transcript_entries": self.max_transcript_entries,
            "max_subscriptions": self.max_subscriptions,
            "event_retry_attempts": self.event_retry_attempts,
            "sse_queue_len": self.sse_queue_len,
            "max_sse_clients": self.max_sse_clients,
            "retry_after_s": self.retry_after_s,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be > 0", value=value)
        for name, fvalue in {
            "event_retry_interval_s": self.event_retry_interval_s,
            "event_timeout_s": self.event_timeout_s,
            "download_timeout_s": self.download_timeout_s,
            "download_stall_s": self.download_stall_s,
        }.items():
            if fvalue <= 0:
                raise ConfigError(f"{name} must be > 0", value=fvalue)
        # SessionService.SessionTimeout allows 30..86400 seconds.
        if not 30 <= self.session_timeout_s <= 86400:
            raise ConfigError("session_timeout_s must be 30..86400", value=self.session_timeout_s)
