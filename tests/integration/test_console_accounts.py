"""Console accounts managed by an operator, and login rate limiting (a real console on
loopback): every bad request is refused with a clear error and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from fwrescue.console.app import ConsoleSettings, start_console
from fwrescue.console.auth import AccountError, Principal
from fwrescue.console.db import DB_FILE
from fwrescue.console.ratelimit import LoginLimits
from fwrescue.trust.keys import generate_keypair
from tests.integration.console_kit import OPERATOR, VIEWER, browser_page


async def _login(http: aiohttp.ClientSession, url: str, user: str,
                 password: str) -> tuple[int, str]:
    async with http.post(f"{url}/login", data={"username": user, "password": password},
                         allow_redirects=False) as resp:
        return resp.status, str(resp.headers.get("Location") or resp.headers.get(
            "Retry-After", ""))


async def _post(http: aiohttp.ClientSession, url: str,
                body: Any) -> tuple[int, dict[str, Any]]:
    async with http.post(url, data=json.dumps(body),
                         headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json()


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def test_operator_manages_accounts_and_logins_are_rate_limited(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "keys", "release")
    (tmp_path / "repo").mkdir()
    settings = ConsoleSettings(repo=tmp_path / "repo", state_dir=tmp_path / "state",
                               trust=(tmp_path / "keys" / "release.pub",),
                               accounts=(OPERATOR, VIEWER), donate=False,
                               login_limits=LoginLimits(max_failures=3, window_s=600.0))
    runner, url, console = await start_console(settings)
    try:
        async with _session() as op, _session() as viewer, _session() as alice:
            assert await _login(op, url, OPERATOR[0], OPERATOR[1]) == (303, "/")
            assert await _login(viewer, url, VIEWER[0], VIEWER[1]) == (303, "/")
            before = await console.auth.accounts()
            assert before == [{"username": "op", "role": "operator"},
                              {"username": "viewer", "role": "readonly"}]

            # a read-only account can neither list nor change accounts
            async with viewer.get(f"{url}/api/accounts") as resp:
                assert resp.status == 403
            status, body = await _post(viewer, f"{url}/api/accounts", {
                "username": "mallory", "password": "long-enough", "role": "operator"})
            assert status == 403 and "operator" in body["error"]

            bad = [({"username": "../x", "password": "long-enough", "role": "readonly"},
                    "username"),
                   ({"username": "alice\n", "password": "long-enough", "role": "readonly"},
                    "username"),
                   ({"username": "a" * 33, "password": "long-enough", "role": "readonly"},
                    "username"),
                   ({"username": 7, "password": "long-enough", "role": "readonly"},
                    "username"),
                   ({"username": "alice", "password": "short", "role": "readonly"},
                    "password"),
                   ({"username": "alice", "password": "x" * 257, "role": "readonly"},
                    "password"),
                   ({"username": "alice", "password": "long-enough", "role": "root"},
                    "role"),
                   ({"username": "viewer", "password": "long-enough", "role": "operator"},
                    "exists already")]
            for request, expected in bad:
                status, body = await _post(op, f"{url}/api/accounts", request)
                assert status == 400 and expected in body["error"], (request, body)
            assert await console.auth.accounts() == before  # nothing changed
            assert await _login(viewer, url, VIEWER[0], VIEWER[1]) == (303, "/")

            status, body = await _post(op, f"{url}/api/accounts", {
                "username": "alice", "password": "alice-password", "role": "readonly"})
            assert (status, body) == (200, {"username": "alice", "role": "readonly"})
            async with op.get(f"{url}/api/accounts") as resp:
                listed = (await resp.json())["accounts"]
            assert {"username": "alice", "role": "readonly"} in listed
            assert all(set(a) == {"username", "role"} for a in listed)  # never a hash
            row = await console.db.read(lambda c: c.execute(
                "SELECT salt, hash FROM accounts WHERE username = 'alice'").fetchone())
            assert len(row["salt"]) == 16 and len(row["hash"]) == 32
            files = list((tmp_path / "state").glob(f"{DB_FILE}*"))
            assert files and b"alice-password" not in b"".join(p.read_bytes() for p in files)
            assert await _login(alice, url, "alice", "alice-password") == (303, "/")
            async with alice.get(f"{url}/api/whoami") as resp:
                assert await resp.json() == {"username": "alice", "role": "readonly"}

            for name, expected in (("op", "your own account"), ("nobody", "no account")):
                status, body = await _post(op, f"{url}/api/accounts/{name}/delete", {})
                assert status == 400 and expected in body["error"], body
            try:  # the last operator is kept even if someone else asked
                await console.auth.delete_account("op", by=Principal("ghost", "operator"))
                raise AssertionError("the last operator was deleted")
            except AccountError as e:
                assert "last operator" in str(e)
            status, body = await _post(op, f"{url}/api/accounts/alice/delete", {})
            assert (status, body) == (200, {"deleted": "alice"})
            async with alice.get(f"{url}/api/whoami") as resp:
                assert resp.status == 401  # her session ended with the account
            assert [a["username"] for a in await console.auth.accounts()] == ["op", "viewer"]

        # rate limiting: three failures for op lock op out (even with the right password),
        # and this source address too (for every user) — without checking the password
        async with _session() as guesser:
            for _ in range(3):
                assert await _login(guesser, url, "op", "wrong") == (303, "/login?failed=1")
            status, retry_after = await _login(guesser, url, OPERATOR[0], OPERATOR[1])
            assert status == 429 and 590 <= int(retry_after) <= 600
            status, _ = await _login(guesser, url, VIEWER[0], VIEWER[1])
            assert status == 429
            async with guesser.get(f"{url}/api/whoami") as resp:
                assert resp.status == 401  # no session was made
        assert console.auth.limiter.size == (1, 1)
    finally:
        await runner.cleanup()


async def test_accounts_page_in_chromium(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    generate_keypair(tmp_path / "keys", "release")
    (tmp_path / "repo").mkdir()
    settings = ConsoleSettings(repo=tmp_path / "repo", state_dir=tmp_path / "state",
                               trust=(tmp_path / "keys" / "release.pub",),
                               accounts=(OPERATOR,), donate=False)
    runner, url, console = await start_console(settings)
    try:
        async with async_playwright() as pw:
            browser, page = await browser_page(pw, url, OPERATOR[0], OPERATOR[1])
            try:
                await page.click("a[href='#/accounts']")
                await expect(page.locator("tr[data-account='op']")).to_contain_text("(you)")
                await page.fill("#account-name", "carol")
                await page.fill("#account-password", "short")
                await page.click("#create-account")
                await expect(page.locator("#account-message")).to_contain_text(
                    "password: 8-256 characters")
                await page.fill("#account-name", "carol")
                await page.fill("#account-password", "carol-password")
                await page.select_option("#account-role", "operator")
                await page.click("#create-account")
                await expect(page.locator("tr[data-account='carol']")).to_contain_text(
                    "operator")
                await page.screenshot(path=str(tmp_path / "accounts.png"))
                await page.locator("tr[data-account='carol'] button").click()
                await expect(page.locator("#account-message")).to_contain_text(
                    "account carol deleted")
                await expect(page.locator("tr[data-account='carol']")).to_have_count(0)
            finally:
                await browser.close()
        assert [a["username"] for a in await console.auth.accounts()] == ["op"]
    finally:
        await runner.cleanup()
