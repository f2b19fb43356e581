"""A dual-bank BIOS flash: recovery writes the inactive bank, verifies it and switches the
marker last, so the corrupt bank stays as evidence (NIST SP 800-193) and a power cut
before the switch would have left the old bank active."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from fwrescue.agent import Agent
from fwrescue.config import TimerSettings
from fwrescue.donor.repository import ConsoleDonor
from fwrescue.sim.fleet import build_fleet, corrupt_node, isolated_network

MIB = 1024 * 1024


async def test_recovery_writes_the_inactive_bank_and_switches_last(tmp_path: Path) -> None:
    network = isolated_network()
    plan = build_fleet(tmp_path / "fleet", nodes=1, boards=1, image_size=MIB,
                       chip_size=4 * MIB, network=network,
                       timers=TimerSettings(startup_jitter=0.05, offer_window=0.2))
    node = plan.nodes[0]
    corrupt_node(node)
    corrupt_bank_a = node.flash_path.read_bytes()[:MIB]
    flash = replace(node.config.targets[0].flash, region_size=MIB, bank_b_offset=MIB,
                    marker_offset=2 * MIB)
    config = replace(node.config, targets=(replace(node.config.targets[0], flash=flash),))
    assert plan.console_repo is not None
    console = ConsoleDonor(repo=plan.console_repo, trust=plan.root / "trust",
                           state_dir=tmp_path / "console", network=plan.network)
    await console.start()
    agent = Agent(config)
    try:
        await agent.start()
        await asyncio.wait_for(agent.wait_idle(), 60)
        result = agent.results["bios"]
        assert result.ok and result.donor_kind == "console" and agent.booted["bios"]
    finally:
        await agent.stop()
        await console.stop()
    chip = node.flash_path.read_bytes()
    assert chip[MIB:2 * MIB] == plan.newest(node.board).image.read_bytes()
    assert chip[:MIB] == corrupt_bank_a  # the corrupt bank is kept, untouched
    restarted = Agent(config)  # the marker now selects bank B: the flash verifies
    await restarted.start(run_startup_checks=False)
    try:
        assert (await restarted.engine("bios").check_integrity()).ok
    finally:
        await restarted.stop()
