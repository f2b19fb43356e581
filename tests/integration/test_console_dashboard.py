"""The dashboard's access rules and server-side validation (a real console on loopback):
every bad request gets a clear error and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from fwrescue.console.app import ConsoleSettings, start_console
from fwrescue.trust.keys import SigningKey, generate_keypair
from fwrescue.trust.policy import TargetPolicy, sign_policy
from tests.integration.console_kit import OPERATOR, VIEWER


async def _session(url: str, user: str, password: str) -> aiohttp.ClientSession:
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.post(f"{url}/login", data={"username": user, "password": password},
                         allow_redirects=False) as resp:
        assert resp.headers["Location"] == "/"
    return http


async def _post(http: aiohttp.ClientSession, url: str, body: Any,
                content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(url, data=data, headers={"Content-Type": content_type}) as resp:
        return resp.status, await resp.json()


async def test_access_rules_and_validation(tmp_path: Path) -> None:
    private, _ = generate_keypair(tmp_path / "keys", "release")
    key = SigningKey.load(private)
    rogue = SigningKey.load(generate_keypair(tmp_path / "rogue", "rogue")[0])
    repo = tmp_path / "repo"
    repo.mkdir()
    settings = ConsoleSettings(repo=repo, state_dir=tmp_path / "state",
                               trust=(tmp_path / "keys" / "release.pub",),
                               accounts=(OPERATOR, VIEWER), donate=False)
    runner, url, console = await start_console(settings)
    try:
        async with aiohttp.ClientSession() as anonymous:
            async with anonymous.get(f"{url}/api/fleet") as resp:
                assert resp.status == 401
            async with anonymous.get(f"{url}/", allow_redirects=False) as resp:
                assert (resp.status, resp.headers["Location"]) == (303, "/login")
            async with anonymous.post(f"{url}/login", data={"username": "op",
                                                            "password": "wrong"},
                                      allow_redirects=False) as resp:
                assert resp.headers["Location"] == "/login?failed=1"
            async with anonymous.get(f"{url}/metrics") as resp:
                assert resp.status == 200
        good = sign_policy(key, board="board-a", version=1, issued_at=1,
                           targets={"bios": TargetPolicy("1.1.0", 2)}).decode()
        viewer = await _session(url, VIEWER[0], VIEWER[1])
        try:
            async with viewer.get(f"{url}/api/fleet") as resp:
                assert resp.status == 200
            status, body = await _post(viewer, f"{url}/api/policies", {"document": good})
            assert status == 403 and "operator" in body["error"]
        finally:
            await viewer.close()
        op = await _session(url, OPERATOR[0], OPERATOR[1])
        try:
            bad_requests = [
                (f"{url}/api/policies", b"document=x", "application/x-www-form-urlencoded",
                 "application/json"),
                (f"{url}/api/policies", b"{not json", "application/json", "not JSON"),
                (f"{url}/api/policies", {"document": 7}, "application/json", "document"),
                (f"{url}/api/policies", {"document": "{}"}, "application/json", "malformed"),
                (f"{url}/api/policies", {"document": sign_policy(
                    rogue, board="board-a", version=1, issued_at=1,
                    targets={"bios": TargetPolicy(None, 1)}).decode()}, "application/json",
                 "unknown-key"),
                (f"{url}/api/rollouts", {"board": "board-a", "version": 1},
                 "application/json", "no stored policy v1"),
                (f"{url}/api/rollouts", {"board": "../x", "version": 1}, "application/json",
                 "board"),
                (f"{url}/api/rollouts/1/resume", {}, "application/json", "no rollout 1"),
            ]
            for target, body, ctype, expected in bad_requests:
                status, reply = await _post(op, target, body, ctype)
                assert status == 400 and expected in reply["error"], (target, body, reply)
            assert await console.desk.overview() == {"policies": [], "rollouts": []}
            status, reply = await _post(op, f"{url}/api/policies", {"document": good})
            assert (status, reply) == (200, {"board": "board-a", "version": 1})
            status, reply = await _post(op, f"{url}/api/policies", {"document": good})
            assert status == 400 and "already stored" in reply["error"]
            for fraction, halt_after, expected in ((0, 1, "fraction"), (1.5, 1, "fraction"),
                                                   (0.5, 0, "halt_after"),
                                                   (0.5, "2", "halt_after")):
                status, reply = await _post(op, f"{url}/api/rollouts", {
                    "board": "board-a", "version": 1, "fraction": fraction,
                    "halt_after": halt_after})
                assert status == 400 and expected in reply["error"], reply
            assert (await console.desk.overview())["rollouts"] == []
            status, reply = await _post(op, f"{url}/api/rollouts", {
                "board": "board-a", "version": 1, "fraction": 0.5, "halt_after": 2})
            assert status == 200
            rollout_id = reply["id"]
            status, reply = await _post(op, f"{url}/api/rollouts", {
                "board": "board-a", "version": 1})
            assert status == 400 and "active" in reply["error"]
            status, reply = await _post(op, f"{url}/api/rollouts/{rollout_id}/resume", {})
            assert status == 400 and "running" in reply["error"]
        finally:
            await op.close()
    finally:
        await runner.cleanup()
