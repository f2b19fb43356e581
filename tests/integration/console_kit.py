"""Shared set-up for the console tests: a fleet of real agents (Redfish on loopback, plain
HTTP) and a real console watching them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fwrescue.agent import Agent
from fwrescue.config import RedfishSettings, TimerSettings
from fwrescue.console.app import Console, ConsoleSettings, start_console
from fwrescue.console.inventory import AgentEndpoint, InventorySettings
from fwrescue.sim.fleet import FleetPlan, build_fleet, isolated_network

AGENT_PASSWORD = "agent-pass-1"
OPERATOR = ("op", "operator-pass", "operator")
VIEWER = ("viewer", "viewer-pass", "readonly")


@dataclass
class Fleet:
    plan: FleetPlan
    agents: dict[str, Agent]
    console: Console
    url: str
    runner: Any = None
    extra: list[Any] = field(default_factory=list)


def plan_fleet(root: Path, *, nodes: int, boards: int = 1, image_size: int = 256 * 1024,
               ssdp: tuple[str, int] | None = None) -> FleetPlan:
    return build_fleet(
        root, nodes=nodes, boards=boards, image_size=image_size, network=isolated_network(),
        timers=TimerSettings(startup_jitter=0.2, offer_window=0.3, accept_timeout=1.0,
                             backoff_initial=0.5, backoff_max=1.0, max_solicits=6),
        redfish=RedfishSettings(enabled=True, tls=False,
                                users=(("admin", AGENT_PASSWORD, "Administrator"),),
                                ssdp_group=ssdp[0] if ssdp else None,
                                ssdp_port=ssdp[1] if ssdp else 1900, ssdp_interval_s=1.0))


@contextlib.asynccontextmanager
async def running_fleet(plan: FleetPlan, *, start_checks: bool = False,
                        before_start: Callable[[Agent], None] | None = None,
                        poll_s: float = 5.0, configured: bool = True,
                        discovery: Any = None,
                        watch: Callable[[str], bool] = lambda node_id: True,
                        ) -> AsyncIterator[Fleet]:
    """Start every agent (start-up checks off unless asked) and a console watching them
    (configured: those whose node id ``watch`` accepts)."""
    agents: dict[str, Agent] = {}
    runner = None
    try:
        for spec in plan.nodes:
            agent = Agent(spec.config)
            agents[spec.node_id] = agent
            await agent.start(run_startup_checks=start_checks)
            if before_start is not None:
                before_start(agent)
        assert plan.console_repo is not None
        settings = ConsoleSettings(
            repo=plan.console_repo, state_dir=plan.root / "console-state",
            trust=(plan.root / "trust",), network=plan.network,
            agents=tuple(AgentEndpoint(str(a.redfish_url), "admin", AGENT_PASSWORD)
                         for n, a in agents.items() if watch(n)) if configured else (),
            discovery=discovery,
            inventory=InventorySettings(poll_s=poll_s, retry_s=0.5),
            accounts=(OPERATOR, VIEWER), rollout_tick_s=0.2)
        runner, url, console = await start_console(settings)
        yield Fleet(plan, agents, console, url, runner)
    finally:
        if runner is not None:
            await runner.cleanup()
        for agent in agents.values():
            await agent.stop()


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
                   interval: float = 0.05) -> Any:
    """Poll an async or sync predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def fleet_rows(fleet: Fleet) -> dict[str, dict[str, Any]]:
    from fwrescue.console import records

    data = await fleet.console.db.read(records.fleet)
    return {n["id"]: n for n in data["nodes"]}


async def all_reachable(fleet: Fleet) -> bool:
    rows = await fleet_rows(fleet)
    return set(rows) == set(fleet.agents) and all(r["reachable"] for r in rows.values())


CHROMIUM = Path("/usr/bin/chromium")


async def browser_page(pw: Any, url: str, user: str, password: str) -> tuple[Any, Any]:
    """Launch Debian's Chromium headless and log in to the console at ``url``; return
    (browser, page)."""
    assert CHROMIUM.exists(), "Debian's chromium package is needed (make test installs it)"
    browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                       args=["--no-sandbox"])
    page = await browser.new_page()
    await page.goto(f"{url}/login")
    await page.fill("#username", user)
    await page.fill("#password", password)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{url}/")
    return browser, page
