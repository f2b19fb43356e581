"""Console accounts and sessions (the console's own; not the agents' Redfish accounts).

Passwords are stored as ``hashlib.scrypt`` (n=2^14, r=8, p=1) with a per-account random
salt; sessions are random 32-byte tokens kept only as their SHA-256, expiring after
``ttl_s``. Roles: ``readonly`` (every view) and ``operator`` (also uploads policies, starts,
pauses and resumes rollouts, and manages accounts).

Account management (:meth:`ConsoleAuth.add_account`, :meth:`ConsoleAuth.delete_account`)
validates every field here (name ``[A-Za-z0-9._-]{1,32}``, password 8-256 characters, a known
role) and refuses with :class:`AccountError`, changing nothing: an existing name, deleting
oneself, deleting the last operator. Deleting an account ends its sessions. Failed logins
are rate limited by :class:`fwrescue.console.ratelimit.LoginLimiter` (``limiter``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass

from fwrescue.console.db import Database
from fwrescue.console.ratelimit import LoginLimiter, LoginLimits

__all__ = ["ROLES", "AccountError", "ConsoleAuth", "Principal"]

ROLES = ("readonly", "operator")
_USER = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
_MAX_PASSWORD = 256


class AccountError(ValueError):
    """A bad account request (the message says which field and why)."""


@dataclass(frozen=True)
class Principal:
    username: str
    role: str

    @property
    def operator(self) -> bool:
        return self.role == "operator"


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2**14, r=8, p=1, dklen=32)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


class ConsoleAuth:
    def __init__(self, db: Database, *, ttl_s: float = 8 * 3600.0,
                 limits: LoginLimits | None = None) -> None:
        self._db = db
        self._ttl = ttl_s
        self.limiter = LoginLimiter(limits)
        # a dummy hash so an unknown user costs as much as a wrong password
        self._dummy = (secrets.token_bytes(16), _hash("x", b"0" * 16))

    async def create_account(self, username: str, password: str, role: str) -> None:
        """Create or replace an account (settings and first start)."""
        _validate(username, password, role)
        salt = secrets.token_bytes(16)
        digest = await asyncio.to_thread(_hash, password, salt)

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO accounts (username, role, salt, hash) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT(username) DO UPDATE SET role=excluded.role, "
                         "salt=excluded.salt, hash=excluded.hash",
                         (username, role, salt, digest))

        await self._db.write(insert)

    async def add_account(self, username: object, password: object, role: object) -> None:
        """Create a new account (the dashboard's account form); an existing name is refused."""
        _validate(username, password, role)
        assert isinstance(username, str) and isinstance(password, str)
        salt = secrets.token_bytes(16)
        digest = await asyncio.to_thread(_hash, password, salt)

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute("INSERT INTO accounts (username, role, salt, hash) "
                             "VALUES (?, ?, ?, ?)", (username, role, salt, digest))
            except sqlite3.IntegrityError as e:
                raise AccountError(f"username: {username!r} exists already") from e

        await self._db.write(insert)

    async def delete_account(self, username: str, *, by: Principal) -> None:
        """Delete ``username`` and its sessions; not oneself, not the last operator."""
        if username == by.username:
            raise AccountError("you cannot delete your own account")

        def delete(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT role FROM accounts WHERE username = ?",
                               (username,)).fetchone()
            if row is None:
                raise AccountError(f"no account {username!r}")
            operators = conn.execute("SELECT COUNT(*) FROM accounts WHERE role = "
                                     "'operator'").fetchone()[0]
            if row["role"] == "operator" and operators <= 1:
                raise AccountError("the last operator account cannot be deleted")
            conn.execute("DELETE FROM sessions WHERE username = ?", (username,))
            conn.execute("DELETE FROM accounts WHERE username = ?", (username,))

        await self._db.write(delete)

    async def accounts(self) -> list[dict[str, str]]:
        """Every account's name and role (never a hash)."""
        return await self._db.read(lambda c: [
            {"username": r[0], "role": r[1]}
            for r in c.execute("SELECT username, role FROM accounts ORDER BY username")])

    async def has_accounts(self) -> bool:
        return bool(await self._db.read(
            lambda c: c.execute("SELECT COUNT(*) FROM accounts").fetchone()[0]))

    async def login(self, username: str, password: str) -> str | None:
        """A new session token, or None for a wrong user or password."""
        if not isinstance(username, str) or not isinstance(password, str) or len(
                password) > _MAX_PASSWORD or len(username) > 64:
            return None
        row = await self._db.read(lambda c: c.execute(
            "SELECT salt, hash FROM accounts WHERE username = ?", (username,)).fetchone())
        salt, expected = (row[0], row[1]) if row else self._dummy
        digest = await asyncio.to_thread(_hash, password, salt)
        if row is None or not hmac.compare_digest(digest, expected):
            return None
        token = secrets.token_urlsafe(32)
        now = time.time()

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            conn.execute("INSERT INTO sessions (token_hash, username, expires_at) "
                         "VALUES (?, ?, ?)", (_token_hash(token), username, now + self._ttl))

        await self._db.write(insert)
        return token

    async def principal(self, token: str | None) -> Principal | None:
        if not token or len(token) > 128:
            return None
        row = await self._db.read(lambda c: c.execute(
            "SELECT a.username, a.role FROM sessions s JOIN accounts a USING (username) "
            "WHERE s.token_hash = ? AND s.expires_at > ?",
            (_token_hash(token), time.time())).fetchone())
        return Principal(row[0], row[1]) if row else None

    async def logout(self, token: str) -> None:
        await self._db.write(lambda c: c.execute("DELETE FROM sessions WHERE token_hash = ?",
                                                 (_token_hash(token),)))


def _validate(username: object, password: object, role: object) -> None:
    if not isinstance(username, str) or not _USER.fullmatch(username):
        raise AccountError("username: 1-32 chars of [A-Za-z0-9._-]")
    if not isinstance(password, str) or not 8 <= len(password) <= _MAX_PASSWORD:
        raise AccountError(f"password: 8-{_MAX_PASSWORD} characters")
    if role not in ROLES:
        raise AccountError(f"role: one of {', '.join(ROLES)}")
