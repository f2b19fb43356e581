"""``fwrescue demo --hold`` as a user runs it, watched in Debian's Chromium: the printed
dashboard shows the recovered nodes (donor and kind) and each one's transcript.

``python -m tests.integration.test_demo_dashboard OUT.png`` runs a real demo and saves the
screenshot used in docs/console.md (docs/img/dashboard.png)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.console_kit import browser_page
from tests.integration.test_e2e_cli import FWRESCUE, _wait_for_report


def _start_demo(workdir: Path, *args: str) -> tuple[subprocess.Popen[Any], Path]:
    report_path = workdir / "report.json"
    proc = subprocess.Popen(
        [str(FWRESCUE), "demo", "--hold", *args, "--json", str(report_path),
         "--workdir", str(workdir / "fleet")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, report_path


async def check_dashboard(report: dict[str, Any], screenshot: Path) -> dict[str, str]:
    """Log in as the report's console user; return what the fleet view says per recovered
    node, after checking each one's transcript. Saves a screenshot of the fleet view."""
    from playwright.async_api import async_playwright, expect

    console = report["console"]
    url = console["url"].rstrip("/")
    corrupted = sorted(n["id"] for n in report["nodes"] if n["corrupted"])
    async with async_playwright() as pw:
        browser, page = await browser_page(pw, url, console["user"], console["password"])
        try:
            await page.set_viewport_size({"width": 1100, "height": 760})
            recovered = page.locator("#recovered li")
            await expect(recovered).to_have_count(len(corrupted), timeout=20_000)
            shown = {await li.get_attribute("data-node") or "": await li.inner_text()
                     for li in await recovered.all()}
            await expect(page.locator("#nodes tbody tr")).to_have_count(len(report["nodes"]))
            await page.screenshot(path=str(screenshot))
            for node_id in corrupted:
                await page.click(f"#recovered li[data-node='{node_id}'] a")
                transcript = page.locator("ol.transcript").first
                await expect(transcript).to_contain_text("chose donor")
                await expect(transcript).to_contain_text("boot check: booted")
                await page.goto(f"{url}/#/")
        finally:
            await browser.close()
    return shown


async def test_demo_hold_dashboard_shows_recovered_nodes_and_transcripts(
        tmp_path: Path) -> None:
    proc, report_path = _start_demo(tmp_path, "--nodes", "4", "--boards", "2",
                                    "--corrupt", "2")
    try:
        report = await asyncio.to_thread(_wait_for_report, report_path, proc)
        assert report["ok"] is True
        shown = await check_dashboard(report, tmp_path / "dashboard.png")
        for node in report["nodes"]:
            if node["corrupted"]:
                assert f"recovered from {node['donor']} ({node['donor_kind']})" in shown[
                    node["id"]], shown
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
        assert proc.poll() is None  # still holding
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        # the URL was printed before the fleet started healing, and again at the end
        printed = [line for line in out.splitlines() if line.startswith("console dashboard")]
        assert len(printed) == 2 and all(report["console"]["url"] in p for p in printed), out
        assert out.index("console dashboard (live)") < out.index("recovery summary")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def main(out: Path) -> None:
    """Run a real ``make demo``-sized demo and save its dashboard screenshot to ``out``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        proc, report_path = _start_demo(Path(tmp), "--nodes", "8", "--boards", "2",
                                        "--corrupt", "3")
        try:
            report = _wait_for_report(report_path, proc)
            print(asyncio.run(check_dashboard(report, out)))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
