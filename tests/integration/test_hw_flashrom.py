"""End to end on the real flashrom path: a whole 16 MiB W25Q128FV chip emulated by
flashrom's dummy programmer is the BIOS flash of an agent, corrupted and recovered from a
peer; then the engine rewrites it erase-aware (identical image: no erase; one changed
sector: one erase), every write going through the flashrom binary.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from fwrescue.agent import Agent
from fwrescue.config import TimerSettings
from fwrescue.flash.flashrom import FlashromFlash
from fwrescue.image.package import build_package
from fwrescue.sim.fleet import build_fleet, corrupt_node, isolated_network

pytestmark = pytest.mark.slow

CHIP = 16 * 1024 * 1024
SECTOR = 4096
TIMEOUT = 180.0


FAST = TimerSettings(startup_jitter=0.05, offer_window=0.2, accept_timeout=1.0,
                     backoff_initial=0.5, backoff_max=2.0)


def flashed(agent: Agent, target: str = "bios") -> dict[str, Any]:
    entries = [e for e in agent.engine(target).transcript() if e["event"] == "flashed"]
    assert len(entries) == 1, entries
    return entries[0]


async def test_flashrom_dummy_corrupted_16mib_chip_is_recovered_to_the_signed_image(
        tmp_path: Path) -> None:
    if shutil.which("flashrom") is None:
        pytest.fail("flashrom is not installed (Debian package flashrom)")
    plan = build_fleet(tmp_path / "fleet", nodes=2, boards=1, image_size=CHIP,
                       chip_size=CHIP, flash_kind="flashrom", host_kind="virtual",
                       network=isolated_network(), timers=FAST)
    sick, peer = plan.nodes
    target = sick.config.targets[0]
    assert target.flash.programmer == f"dummy:emulate=W25Q128FV,image={sick.flash_path}"
    assert sick.release.signed.manifest.size == CHIP == sick.flash_path.stat().st_size
    newest = plan.newest(sick.board)
    assert peer.release == newest and sick.release != newest
    corrupt_node(sick)
    corrupted = sick.flash_path.read_bytes()
    assert corrupted != sick.release.image.read_bytes()

    donor, agent = Agent(peer.config), Agent(sick.config)
    try:
        await donor.start(run_startup_checks=False)
        await agent.start()
        assert isinstance(agent.targets["bios"].flash, FlashromFlash)
        await asyncio.wait_for(agent.wait_idle(), TIMEOUT)

        result = agent.results["bios"]
        assert result.ok, result.reason
        assert (result.donor_id, result.donor_kind) == ("node-02", "peer")
        assert result.booted and result.version_after == newest.version
        assert sick.flash_path.read_bytes() == newest.image.read_bytes()
        first = flashed(agent)
        assert first["erased"] > 0 and first["programmed"] > 0

        # The same signed image again through the engine: flashrom finds nothing to erase.
        again = await asyncio.wait_for(agent.install("bios", newest.package), TIMEOUT)
        assert again.ok, again.reason
        assert flashed(agent)["erased"] == 0 and flashed(agent)["programmed"] == 0
        assert sick.flash_path.read_bytes() == newest.image.read_bytes()

        # A release that differs in one 4 KiB sector (bits going 0 -> 1: needs an erase).
        image = bytearray(newest.image.read_bytes())
        at = 5 * 1024 * 1024 + 3 * SECTOR + 100
        image[at:at + 16] = bytes(b ^ 0xFF for b in image[at:at + 16])
        patched = tmp_path / "patched.bin"
        patched.write_bytes(bytes(image))
        package = tmp_path / "patched.fwpkg"
        build_package(patched, package, key=plan.signing_key, target="bios",
                      machine_names=[sick.board], version="1.2.0", security_version=3)
        one = await asyncio.wait_for(agent.install("bios", package), TIMEOUT)
        assert one.ok, one.reason
        assert one.version_after == "1.2.0"
        assert flashed(agent)["erased"] == 1
        assert flashed(agent)["programmed"] == SECTOR
        assert sick.flash_path.read_bytes() == bytes(image)
        assert agent.booted == {"bios": True}
    finally:
        await agent.stop()
        await donor.stop()


def test_the_fleet_flash_settings_drive_the_real_chip_file(tmp_path: Path) -> None:
    """The config the agent gets names the chip file flashrom emulates, whole-chip region."""
    plan = build_fleet(tmp_path / "fleet", nodes=1, boards=1, image_size=1024 * 1024,
                       chip_size=CHIP, flash_kind="flashrom", network=isolated_network())
    node = plan.nodes[0]
    flash = node.config.targets[0].flash
    assert flash.kind == "flashrom" and flash.path == node.flash_path
    assert (flash.region_offset, flash.region_size) == (0, 1024 * 1024)
    assert node.flash_path.stat().st_size == CHIP
