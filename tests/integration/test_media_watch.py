"""Removable media is watched: a recovery that found nothing runs again, and succeeds, as
soon as a signed package is copied onto the "USB stick" — while a junk file there changes
nothing."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

from fwrescue.agent import Agent
from fwrescue.config import TimerSettings
from fwrescue.sim.fleet import build_fleet, corrupt_node, isolated_network


async def test_package_copied_onto_watched_usb_media_triggers_recovery(tmp_path: Path) -> None:
    network = isolated_network()
    plan = build_fleet(tmp_path / "fleet", nodes=1, boards=1, image_size=128 * 1024,
                       network=network, timers=TimerSettings(startup_jitter=0.05))
    node = plan.nodes[0]
    corrupt_node(node)
    usb = tmp_path / "usb"
    usb.mkdir()
    target = replace(node.config.targets[0], network=False,
                     sources=({"kind": "usb", "path": str(usb)},))
    agent = Agent(replace(node.config, targets=(target,)))
    await agent.start()
    try:
        await asyncio.wait_for(agent.wait_idle(), 30)
        first = agent.results["bios"]
        assert not first.ok and "no predetermined location" in first.reason
        (usb / "notes.fwpkg").write_bytes(b"not a package")  # junk: refused, flash untouched
        shutil.copy(plan.newest(node.board).package, usb / "bios.fwpkg")
        for _ in range(200):  # bounded: 20 s
            result = agent.results["bios"]
            if result is not first and result.ok:
                break
            await asyncio.sleep(0.1)
        result = agent.results["bios"]
        assert result.ok and result.origin is not None and result.origin.startswith("usb:")
        assert node.flash_path.read_bytes()[:128 * 1024] == \
            plan.newest(node.board).image.read_bytes()
        assert agent.booted["bios"]
    finally:
        await agent.stop()
