"""A staged rollout whose new board-b image fails to boot halts after the configured number
of failures: the rest of the fleet keeps its old version and never receives the policy."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fwrescue.agent import Agent
from fwrescue.console import records
from fwrescue.image.package import build_package
from fwrescue.sim.fleet import FleetPlan
from tests.integration.console_kit import (
    OPERATOR,
    Fleet,
    all_reachable,
    browser_page,
    plan_fleet,
    running_fleet,
    wait_for,
)
from tests.integration.test_console_policy import policy, roll_out, rollout_state


def _release_that_does_not_boot(plan: FleetPlan) -> str:
    """A genuinely signed board-b 1.2.0 in the console's repository; returns its sha256."""
    assert plan.console_repo is not None
    image = plan.root / "releases" / "board-b-1.2.0.bin"
    data = bytearray(plan.newest("board-b").image.read_bytes())
    data[:32] = b"fwrescue board-b 1.2.0 (bad)    "
    image.write_bytes(bytes(data))
    signed = build_package(image, plan.console_repo / "board-b-1.2.0.fwpkg",
                           key=plan.signing_key, target="bios", machine_names=["board-b"],
                           version="1.2.0", security_version=3)
    return signed.manifest.sha256


def _fails_to_boot(bad_sha: str, size: int) -> Any:
    """Model hardware on which ``bad_sha`` (signed, verified) does not boot."""
    def install(agent: Agent) -> None:
        if agent.config.machine_name != "board-b":
            return
        host = agent.targets["bios"].host
        flash = agent.targets["bios"].config.flash.path
        assert host is not None and flash is not None
        genuine = host._firmware_ok  # type: ignore[attr-defined]

        def firmware_ok() -> bool:
            with open(flash, "rb") as f:
                digest = hashlib.sha256(f.read(size)).hexdigest()
            return bool(genuine()) and digest != bad_sha

        setattr(host, "_firmware_ok", firmware_ok)  # noqa: B010 - the model's boot rule
    return install


async def test_rollout_halts_after_failed_boots_and_the_rest_keeps_its_version(
        tmp_path: Path) -> None:
    plan = plan_fleet(tmp_path / "fleet", nodes=6, boards=2)
    bad = _release_that_does_not_boot(plan)
    size = plan.newest("board-b").signed.manifest.size
    before = {n.node_id: n.release.version for n in plan.nodes}
    async with running_fleet(plan, before_start=_fails_to_boot(bad, size)) as fleet:
        await wait_for(lambda: all_reachable(fleet), 20, "every agent in the inventory")
        rollout = await roll_out(fleet, policy(plan, 1, floor=0, baseline="1.2.0",
                                               board="board-b"),
                                 fraction=0.5, halt_after=2)
        state = await wait_for(lambda: _halted(fleet, rollout), 60, "the rollout to halt")
        assert state["reason"].startswith("halted: 2 failed update(s)")
        stages = {d["node_id"]: (d["stage"], d["state"]) for d in state["deliveries"]}
        assert stages == {"node-02": (1, "failed"), "node-04": (1, "failed"),
                          "node-06": (2, "pending")}
        for node_id in ("node-02", "node-04"):
            result = fleet.agents[node_id].results["bios"]
            assert not result.ok and "did not boot" in result.reason
        rows = {n["id"]: n for n in (await fleet.console.db.read(records.fleet))["nodes"]}
        for node_id, agent in fleet.agents.items():
            if node_id in ("node-02", "node-04"):
                continue
            assert agent.engine("bios").installed_version == before[node_id], node_id
            assert agent.fleet_policy.version == 0, node_id
            assert rows[node_id]["targets"][0]["version"] == before[node_id]

        # visible and resumable on the dashboard: an operator resumes, then pauses again
        from playwright.async_api import async_playwright, expect

        async with async_playwright() as pw:
            browser, page = await browser_page(pw, fleet.url, OPERATOR[0], OPERATOR[1])
            try:
                await page.click("a[href='#/policy']")
                row = page.locator(f"tr[data-rollout='{rollout}']")
                await expect(row).to_contain_text("halted: 2 failed update(s)")
                await expect(row).to_contain_text("node-06: pending")
                await row.locator("button", has_text="Resume").click()
                await expect(row.locator(".rollout-state")).to_have_text("running")
                await row.locator("button", has_text="Pause").click()
                await expect(row.locator(".rollout-state")).to_have_text("paused")
            finally:
                await browser.close()
        assert (await rollout_state(fleet, rollout))["state"] == "paused"


async def _halted(fleet: Fleet, rollout_id: int) -> dict[str, Any] | None:
    state = await rollout_state(fleet, rollout_id)
    return state if state["state"] == "halted" else None
