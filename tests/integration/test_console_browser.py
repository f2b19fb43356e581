"""A real browser (Debian's Chromium via Playwright, headless) through the dashboard: log in,
the fleet view, a recovered node's transcript, and uploading a signed policy whose baseline
then makes an outdated node update itself; a screenshot goes to the test's tmp folder."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fwrescue.sim.fleet import corrupt_node
from tests.integration.console_kit import OPERATOR, all_reachable, plan_fleet, running_fleet
from tests.integration.console_kit import wait_for as wait_until
from tests.integration.test_console_policy import policy

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.slow


async def test_dashboard_in_chromium(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    assert CHROMIUM.exists(), "Debian's chromium package is needed (make test installs it)"
    plan = plan_fleet(tmp_path / "fleet", nodes=3)
    # node-01 and node-03 run 1.0.0, node-02 1.1.0; node-01 is corrupted and recovers
    corrupt_node(plan.nodes[0])
    signed = tmp_path / "board-a-v1.policy.json"
    signed.write_bytes(policy(plan, 1, floor=0, baseline="1.1.0"))
    async with running_fleet(plan) as fleet, async_playwright() as pw:
        await wait_until(lambda: all_reachable(fleet), 20, "every agent in the inventory")
        result = await asyncio.wait_for(
            fleet.agents["node-01"].recover("bios", "test: corrupted"), 60)
        assert result.ok
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                           args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(f"{fleet.url}/")
            await expect(page).to_have_url(f"{fleet.url}/login")
            await page.fill("#username", OPERATOR[0])
            await page.fill("#password", "wrong password")
            await page.click("button[type=submit]")
            await expect(page.locator("#failed")).to_be_visible()
            await page.fill("#username", OPERATOR[0])
            await page.fill("#password", OPERATOR[1])
            await page.click("button[type=submit]")

            # fleet view: three nodes, counts by board and version
            rows = page.locator("#nodes tbody tr")
            await expect(rows).to_have_count(3)
            await expect(page.locator("#counts")).to_contain_text("board-a")
            await expect(page.locator("#counts")).to_contain_text("bios 1.0.0")
            await expect(page.locator("tr[data-node=node-01]")).to_contain_text("bios 1.1.0")

            # node view: the recovery's transcript, rendered readably, with its donor
            await page.click("a[href='#/node/node-01']")
            transcript = page.locator(f"ol.transcript[data-op={result.op_id}]")
            await expect(transcript).to_contain_text("solicited offers")
            await expect(transcript).to_contain_text(f"chose donor {result.donor_id}")
            await expect(transcript).to_contain_text("read-back verified")
            await expect(transcript).to_contain_text("boot check: booted")
            await expect(page.locator("#operations")).to_contain_text(str(result.donor_id))

            # policy view: a bad request is refused with a clear error, then the real one
            await page.click("a[href='#/policy']")
            await page.fill("#rollout-board", "board-a")
            await page.fill("#rollout-version", "7")
            await page.click("#start-rollout")
            await expect(page.locator("#policy-message")).to_contain_text(
                "no stored policy v7 for board 'board-a'")
            await page.set_input_files("#policy-file", str(signed))
            await page.click("#upload")
            await expect(page.locator("#policy-message")).to_contain_text(
                "stored policy v1 for board-a")
            await page.fill("#rollout-version", "1")
            await page.fill("input[name=fraction]", "1")
            await page.click("#start-rollout")
            await expect(page.locator("#rollouts")).to_contain_text(
                "completed", timeout=60_000)

            # the outdated node updated itself through the negotiation
            await page.click("a[href='#/']")
            await expect(page.locator("tr[data-node=node-03]")).to_contain_text("bios 1.1.0")
            assert fleet.agents["node-03"].engine("bios").installed_version == "1.1.0"
            update = fleet.agents["node-03"].results["bios"]
            assert update.ok and update.donor_kind == "peer", update  # peers first
            await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert (tmp_path / "dashboard.png").stat().st_size > 0
        finally:
            await browser.close()
