"""The console on loopback beside real agents: a corrupted node's recovery shows up in the
database and on the dashboard while it runs and after (donor, transcript); /metrics moves;
agents that answer garbage or nothing are marked unreachable and change nothing else."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from fwrescue.console import records
from fwrescue.console.inventory import AgentEndpoint
from fwrescue.sim.fleet import corrupt_node
from tests.integration.console_kit import (
    OPERATOR,
    all_reachable,
    fleet_rows,
    plan_fleet,
    running_fleet,
    wait_for,
)


async def _login(http: aiohttp.ClientSession, url: str, user: str, password: str) -> None:
    async with http.post(f"{url}/login", data={"username": user, "password": password},
                         allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/"


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def _garbage_agent() -> tuple[web.AppRunner, str]:
    """A 'BMC' whose Redfish answers nonsense on loopback."""
    async def session(_: web.Request) -> web.Response:
        return web.Response(status=201, headers={"X-Auth-Token": "t"}, text="{}")

    async def junk(_: web.Request) -> web.Response:
        return web.Response(text='{"Members": "not a list"}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/redfish/v1/SessionService/Sessions", session)
    app.router.add_get("/{tail:.*}", junk)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_recovery_appears_in_db_and_dashboard_during_and_after(tmp_path: Path) -> None:
    plan = plan_fleet(tmp_path / "fleet", nodes=3)
    victim = plan.nodes[0]
    corrupt_node(victim)
    garbage, garbage_url = await _garbage_agent()
    try:
        async with running_fleet(plan) as fleet, aiohttp.ClientSession(
                cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await wait_for(lambda: all_reachable(fleet), 20, "every agent in the inventory")
            fleet.console.inventory.add(AgentEndpoint(garbage_url, "x", "y"))
            fleet.console.inventory.add(AgentEndpoint(
                f"http://127.0.0.1:{_closed_port()}", "x", "y"))
            await _login(http, fleet.url, OPERATOR[0], OPERATOR[1])
            async with http.get(f"{fleet.url}/metrics") as resp:
                before = _metrics(await resp.text())

            seen_running: list[dict[str, Any]] = []

            async def watch() -> None:  # what the dashboard API shows while it runs
                while True:
                    async with http.get(f"{fleet.url}/api/fleet") as resp:
                        data = await resp.json()
                    for node in data["nodes"]:
                        if node["id"] == victim.node_id and node["healing"]:
                            seen_running.append({**node, "seen_at": time.time()})
                    await asyncio.sleep(0.03)

            watcher = asyncio.create_task(watch())
            result = await asyncio.wait_for(
                fleet.agents[victim.node_id].recover("bios", "test: corrupted"), 60)
            assert result.ok, result.reason

            async def finished() -> Any:
                detail = await fleet.console.db.read(
                    lambda c: records.node_detail(c, victim.node_id))
                ops = [o for o in detail["operations"] if o["op_id"] == result.op_id]
                return ops[0] if ops and ops[0]["state"] == "Completed" else None

            op = await wait_for(finished, 10, "the finished recovery in the database")
            watcher.cancel()
            assert seen_running, "the dashboard never showed the recovery while it ran"
            assert seen_running[0]["state"] == "healing"
            assert seen_running[0]["healing"]["op_id"] == result.op_id
            transcript0 = fleet.agents[victim.node_id].engine("bios").transcript()[0]["t"]
            lag = seen_running[0]["seen_at"] - transcript0
            print(f"dashboard showed the recovery {lag:.3f} s after it started; it ran "
                  f"{result.seconds:.3f} s")
            assert op["donor"] == result.donor_id and op["donor"] != victim.node_id
            assert op["kind"] == "recovery"

            async with http.get(f"{fleet.url}/api/nodes/{victim.node_id}/operations/"
                                f"{result.op_id}") as resp:
                entries = (await resp.json())["entries"]
            events = [e["event"] for e in entries]
            for expected in ("start", "SolicitSent", "OfferReceived", "DonorAcked",
                             "transferred", "flashed", "read-back verified", "boot check",
                             "done"):
                assert expected in events, (expected, events)

            rows = await wait_for(lambda: _two_unreachable(fleet), 15, "bad agents flagged")
            assert all(r["reachable"] for k, r in rows.items() if not k.startswith("url:"))
            errors = {r["last_error"] for k, r in rows.items() if k.startswith("url:")}
            assert any("Members" in e for e in errors), errors

            async def moved() -> dict[Any, float] | None:
                async with http.get(f"{fleet.url}/metrics") as resp:
                    now = _metrics(await resp.text())
                key = ("fwrescue_recoveries_total", (("kind", "recovery"), ("outcome", "ok")))
                return now if now.get(key, 0) >= before.get(key, 0) + 1 else None

            after = await wait_for(moved, 10, "the recovery counter")
            by = result.donor_kind
            key = ("fwrescue_bytes_served_total", (("by", by),))
            assert after[key] - before.get(key, 0) == victim.release.signed.manifest.size
            assert after[("fwrescue_agents", (("state", "reachable"),))] == 3
            assert after[("fwrescue_agents", (("state", "unreachable"),))] == 2
            assert after[("fwrescue_time_to_recover_seconds_count", ())] >= 1
    finally:
        await garbage.cleanup()


async def _two_unreachable(fleet: Any) -> dict[str, Any] | None:
    rows = await fleet_rows(fleet)
    bad = [r for k, r in rows.items() if k.startswith("url:") and not r["reachable"]]
    return rows if len(bad) == 2 else None
