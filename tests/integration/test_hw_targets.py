"""One agent, two firmware targets: the host BIOS (with a host) and a CPLD served by proxy
(no host, its own flash file). A console donor holds a package of each for the board;
both targets recover, each with its own image, and recovering one never touches the
other's flash or host.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

from fwrescue.agent import Agent
from fwrescue.config import (
    FlashSettings,
    HostSettings,
    TargetConfig,
    TimerSettings,
)
from fwrescue.donor.repository import ConsoleDonor
from fwrescue.host.virtual import VirtualHost
from fwrescue.image.package import build_package
from fwrescue.sim.fleet import build_fleet, corrupt_node, isolated_network

BIOS = 512 * 1024
CPLD = 128 * 1024
TIMEOUT = 60.0
FAST = TimerSettings(startup_jitter=0.05, offer_window=0.2, accept_timeout=1.0,
                     backoff_initial=0.5, backoff_max=2.0)


async def test_two_targets_on_one_agent_recover_independently(tmp_path: Path) -> None:
    plan = build_fleet(tmp_path / "fleet", nodes=1, boards=1, image_size=BIOS,
                       network=isolated_network(), timers=FAST)
    node = plan.nodes[0]
    bios_release = plan.newest(node.board)
    rng = random.Random(7)
    cpld_image = tmp_path / "cpld-2.0.0.bin"
    cpld_image.write_bytes(rng.randbytes(CPLD))
    assert plan.console_repo is not None
    build_package(cpld_image, plan.console_repo / "cpld-2.0.0.fwpkg", key=plan.signing_key,
                  target="cpld", machine_names=[node.board], version="2.0.0",
                  security_version=1)
    cpld_flash = node.root / "cpld.bin"
    cpld_flash.write_bytes(rng.randbytes(CPLD))  # unknown contents: must be replaced
    cpld = TargetConfig(name="cpld", flash=FlashSettings(kind="file", path=cpld_flash),
                        host=HostSettings(kind="none"))
    config = replace(node.config, targets=(node.config.targets[0], cpld))
    corrupt_node(node)

    console = ConsoleDonor(repo=plan.console_repo, trust=plan.root / "trust",
                           state_dir=tmp_path / "console", network=plan.network)
    agent = Agent(config)
    try:
        await console.start()
        assert console.image_count == 2 and console.rejected == {}  # bios 1.1.0, cpld 2.0.0
        await agent.start()
        await asyncio.wait_for(agent.wait_idle(), TIMEOUT)

        bios, cp = agent.results["bios"], agent.results["cpld"]
        assert bios.ok and cp.ok, (bios.reason, cp.reason)
        assert bios.donor_kind == cp.donor_kind == "console"
        assert (bios.version_after, cp.version_after) == (bios_release.version, "2.0.0")
        assert bios.booted is True and cp.booted is None  # a CPLD has no host to boot
        assert node.flash_path.read_bytes()[:BIOS] == bios_release.image.read_bytes()
        assert cpld_flash.read_bytes() == cpld_image.read_bytes()
        assert agent.targets["cpld"].host is None
        bios_host = agent.targets["bios"].host
        assert isinstance(bios_host, VirtualHost) and bios_host.runs == [True]

        # Damage only the CPLD: its recovery leaves the BIOS flash and host alone.
        bios_before = node.flash_path.read_bytes()
        bios_mtime = node.flash_path.stat().st_mtime_ns
        data = bytearray(cpld_flash.read_bytes())
        data[-4096:] = rng.randbytes(4096)
        cpld_flash.write_bytes(bytes(data))
        assert not (await agent.engine("cpld").check_integrity()).ok
        assert (await agent.engine("bios").check_integrity()).ok
        again = await asyncio.wait_for(agent.recover("cpld", "operator request"), TIMEOUT)
        assert again.ok, again.reason
        assert cpld_flash.read_bytes() == cpld_image.read_bytes()
        assert node.flash_path.read_bytes() == bios_before
        assert node.flash_path.stat().st_mtime_ns == bios_mtime
        assert bios_host.runs == [True]  # the host was not cycled
        assert agent.engine("bios").installed_version == bios_release.version
        assert agent.engine("cpld").installed_version == "2.0.0"
        # Each target's journal and transcripts live apart.
        state = config.state_dir / "targets"
        assert len(list((state / "cpld" / "transcripts").iterdir())) == 2
        assert len(list((state / "bios" / "transcripts").iterdir())) == 1
    finally:
        await agent.stop()
        await console.stop()


async def test_bios_region_at_an_offset_in_a_larger_chip_is_written_at_that_offset(
        tmp_path: Path) -> None:
    plan = build_fleet(tmp_path / "fleet", nodes=1, boards=1, image_size=BIOS,
                       network=isolated_network(), timers=FAST)
    node = plan.nodes[0]
    corrupt_node(node)  # no copy in the BMC's own store: the USB package must be used
    newest = plan.newest(node.board)
    chip, offset = node.root / "chip.bin", 1024 * 1024
    chip.write_bytes(b"\xff" * (4 * offset))
    assert plan.console_repo is not None
    bios = replace(node.config.targets[0], network=False,
                   flash=FlashSettings(kind="file", path=chip, region_offset=offset,
                                       region_size=BIOS),
                   sources=({"kind": "usb", "path": str(plan.console_repo)},))
    agent = Agent(replace(node.config, targets=(bios,)))
    try:
        await agent.start()
        await asyncio.wait_for(agent.wait_idle(), TIMEOUT)
    finally:
        await agent.stop()
    result = agent.results["bios"]
    assert result.ok, result.reason
    data = chip.read_bytes()
    assert data[offset:offset + BIOS] == newest.image.read_bytes()
    assert data[:offset] == b"\xff" * offset and data[2 * offset:] == b"\xff" * (2 * offset)
