"""Console accounts and sessions (the console's own; not the agents' Redfish accounts).

Passwords are stored as ``hashlib.scrypt`` (n=2^14, r=8, p=1) with a per-account random
salt; sessions are random 32-byte tokens kept only as their SHA-256, expiring after
``ttl_s``. Roles: ``readonly`` (every view) and ``operator`` (also uploads policies and
starts, pauses and resumes rollouts).
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
    def __init__(self, db: Database, *, ttl_s: float = 8 * 3600.0) -> None:
        self._db = db
        self._ttl = ttl_s
        # a dummy hash so an unknown user costs as much as a wrong password
        self._dummy = (secrets.token_bytes(16), _hash("x", b"0" * 16))

    async def create_account(self, username: str, password: str, role: str) -> None:
        if not _USER.match(username):
            raise AccountError("username: 1-32 chars of [A-Za-z0-9._-]")
        if not 8 <= len(password) <= _MAX_PASSWORD:
            raise AccountError(f"password: 8-{_MAX_PASSWORD} characters")
        if role not in ROLES:
            raise AccountError(f"role: one of {', '.join(ROLES)}")
        salt = secrets.token_bytes(16)
        digest = await asyncio.to_thread(_hash, password, salt)

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO accounts (username, role, salt, hash) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT(username) DO UPDATE SET role=excluded.role, "
                         "salt=excluded.salt, hash=excluded.hash",
                         (username, role, salt, digest))

        await self._db.write(insert)

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
