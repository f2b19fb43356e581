"""Accounts, roles, privileges and sessions. Sans-IO: time comes in as ``now`` (seconds).

Passwords are kept only as salted PBKDF2-SHA256 digests and compared in constant time.
Session tokens are 256-bit random values; a session expires after ``session_timeout_s`` of
inactivity. Every refusal raises :class:`~fwrescue.redfish.messages.RequestError` with the
Base registry MessageId and status a Redfish client expects.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace

from fwrescue.redfish.messages import RequestError
from fwrescue.redfish.settings import ROLES, AccountSpec, RedfishServiceSettings

__all__ = [
    "ROLE_PRIVILEGES",
    "Account",
    "AuthStore",
    "Principal",
    "Session",
]

#: Redfish standard roles and their privileges (DSP0266 "Roles", Redfish privilege registry).
ROLE_PRIVILEGES: dict[str, frozenset[str]] = {
    "Administrator": frozenset(
        {"Login", "ConfigureManager", "ConfigureUsers", "ConfigureSelf", "ConfigureComponents"}
    ),
    "Operator": frozenset({"Login", "ConfigureSelf", "ConfigureComponents"}),
    "ReadOnly": frozenset({"Login", "ConfigureSelf"}),
}

# PBKDF2 work factor: high enough to slow offline guessing, low enough for Basic auth on
# every request of a validator run (a few ms per check on a BMC-class CPU).
_PBKDF2_ITERATIONS = 20_000
_MIN_PASSWORD = 8
_MAX_PASSWORD = 128


def _digest(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _PBKDF2_ITERATIONS)


@dataclass(frozen=True)
class Account:
    """A local account; ``id`` equals ``username`` (both URI-safe)."""

    username: str
    role: str
    enabled: bool
    salt: bytes
    digest: bytes

    @property
    def id(self) -> str:
        return self.username


@dataclass(frozen=True)
class Session:
    id: str
    token: str
    username: str
    created: float
    last_used: float


@dataclass(frozen=True)
class Principal:
    """Who made a request, and through which session (``None`` for Basic auth)."""

    username: str
    role: str
    session_id: str | None

    @property
    def privileges(self) -> frozenset[str]:
        return ROLE_PRIVILEGES[self.role]


def _unauthorized() -> RequestError:
    return RequestError(
        401,
        "Base.1.22.NoValidSession",
        headers={"WWW-Authenticate": 'Basic realm="fwrescue"'},
    )


class AuthStore:
    """Accounts and sessions in memory (the agent recreates accounts from settings)."""

    def __init__(
        self,
        settings: RedfishServiceSettings,
        token_factory: Callable[[], str] = lambda: secrets.token_urlsafe(32),
    ) -> None:
        self._settings = settings
        #: SessionService.SessionTimeout; PATCHable (30..86400 s)
        self.session_timeout = settings.session_timeout_s
        self._token_factory = token_factory
        self._accounts: dict[str, Account] = {}
        self._sessions: dict[str, Session] = {}
        self._by_token: dict[str, str] = {}
        self._next_session = 1
        for spec in settings.accounts:
            self._accounts[spec.username] = self._make(spec)
        # Verify an unknown user against a dummy digest so timing does not reveal names.
        self._dummy = self._make(AccountSpec(username="nobody", password="x" * _MIN_PASSWORD))

    @staticmethod
    def _make(spec: AccountSpec, enabled: bool = True) -> Account:
        salt = secrets.token_bytes(16)
        return Account(spec.username, spec.role, enabled, salt, _digest(spec.password, salt))

    # --- accounts ----------------------------------------------------------------------

    def accounts(self) -> list[Account]:
        return sorted(self._accounts.values(), key=lambda a: a.username)

    def account(self, username: str) -> Account | None:
        return self._accounts.get(username)

    def create_account(self, username: str, password: str, role: str, enabled: bool) -> Account:
        """Add an account; raises ``RequestError`` (400/409) on a bad or duplicate one."""
        if username in self._accounts:
            raise RequestError(
                409, "Base.1.22.ResourceAlreadyExists", "ManagerAccount", "UserName", username
            )
        self._check_password(password)
        if role not in ROLES:
            raise RequestError(400, "Base.1.22.PropertyValueNotInList", role, "RoleId")
        try:
            spec = AccountSpec(username=username, password=password, role=role)
        except Exception as e:
            raise RequestError(400, "Base.1.22.PropertyValueError", "UserName") from e
        account = self._make(spec, enabled)
        self._accounts[username] = account
        return account

    def update_account(
        self,
        username: str,
        *,
        password: str | None = None,
        role: str | None = None,
        enabled: bool | None = None,
    ) -> Account:
        """Change an account; validates everything before changing anything."""
        current = self._accounts.get(username)
        if current is None:
            raise RequestError(404, "Base.1.22.ResourceNotFound", "ManagerAccount", username)
        if password is not None:
            self._check_password(password)
        if role is not None and role not in ROLES:
            raise RequestError(400, "Base.1.22.PropertyValueNotInList", role, "RoleId")
        updated = current
        if password is not None:
            salt = secrets.token_bytes(16)
            updated = replace(updated, salt=salt, digest=_digest(password, salt))
        if role is not None:
            updated = replace(updated, role=role)
        if enabled is not None:
            updated = replace(updated, enabled=enabled)
        self._would_leave_no_admin({username: updated})
        self._accounts[username] = updated
        if enabled is False or password is not None:
            self._drop_sessions_of(username)
        return updated

    def delete_account(self, username: str) -> None:
        if username not in self._accounts:
            raise RequestError(404, "Base.1.22.ResourceNotFound", "ManagerAccount", username)
        self._would_leave_no_admin({username: None})
        del self._accounts[username]
        self._drop_sessions_of(username)

    def _would_leave_no_admin(self, change: dict[str, Account | None]) -> None:
        after = {**self._accounts, **change}
        if not any(a and a.enabled and a.role == "Administrator" for a in after.values()):
            # Locking every administrator out would make the BMC unmanageable.
            raise RequestError(400, "Base.1.22.ResourceInUse")

    @staticmethod
    def _check_password(password: str) -> None:
        if not _MIN_PASSWORD <= len(password) <= _MAX_PASSWORD:
            raise RequestError(400, "Base.1.22.PasswordIncorrectLength")

    def _drop_sessions_of(self, username: str) -> None:
        for sid in [s.id for s in self._sessions.values() if s.username == username]:
            self.logout(sid)

    # --- authentication ------------------------------------------------------------------

    def verify(self, username: str, password: str) -> Account | None:
        """The enabled account for these credentials, or ``None``. Constant-time compare."""
        if len(password) > _MAX_PASSWORD or len(username) > 64:
            return None
        account = self._accounts.get(username)
        probe = account or self._dummy
        ok = hmac.compare_digest(_digest(password, probe.salt), probe.digest)
        if account is None or not ok or not account.enabled:
            return None
        return account

    def basic(self, username: str, password: str) -> Principal:
        """Authenticate HTTP Basic credentials; raises 401 ``RequestError``."""
        account = self.verify(username, password)
        if account is None:
            raise _unauthorized()
        return Principal(account.username, account.role, None)

    def login(self, username: str, password: str, now: float) -> Session:
        """Create a session; raises 401 on bad credentials, 503 when at the session limit."""
        self.expire(now)
        account = self.verify(username, password)
        if account is None:
            raise _unauthorized()
        if len(self._sessions) >= self._settings.max_sessions:
            raise RequestError(503, "Base.1.22.SessionLimitExceeded")
        sid = str(self._next_session)
        self._next_session += 1
        session = Session(sid, self._token_factory(), account.username, now, now)
        self._sessions[sid] = session
        self._by_token[session.token] = sid
        return session

    def by_token(self, token: str, now: float) -> Principal:
        """The principal behind an X-Auth-Token; refreshes its idle timer; raises 401."""
        self.expire(now)
        sid = self._by_token.get(token)
        if sid is None:
            raise _unauthorized()
        session = self._sessions[sid]
        account = self._accounts.get(session.username)
        if account is None or not account.enabled:
            self.logout(sid)
            raise _unauthorized()
        self._sessions[sid] = replace(session, last_used=now)
        return Principal(account.username, account.role, sid)

    def sessions(self, now: float) -> list[Session]:
        self.expire(now)
        return sorted(self._sessions.values(), key=lambda s: int(s.id))

    def session(self, sid: str, now: float) -> Session | None:
        self.expire(now)
        return self._sessions.get(sid)

    def logout(self, sid: str) -> bool:
        session = self._sessions.pop(sid, None)
        if session is None:
            return False
        self._by_token.pop(session.token, None)
        return True

    def expire(self, now: float) -> None:
        timeout = self.session_timeout
        for sid in [s.id for s in self._sessions.values() if now - s.last_used > timeout]:
            self.logout(sid)
