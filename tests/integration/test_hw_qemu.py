"""End to end on a real host: QEMU booting OVMF from the agent's flash file (the firmware
hub). One agent's hub is corrupted in its last 64 KiB (OVMF's reset vector and SEC); a
QEMU started on a copy of it stays dark, the agent recovers the hub from its peer with
the host powered off (DC-off) or held in reset (DC-on), and the host boots to the UEFI
shell.

QEMU boots are the cost here (about 4 s each under TCG): the dark copy runs alongside
the recovery, and the donor's own host is never started.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from fwrescue.agent import Agent
from fwrescue.config import TimerSettings
from fwrescue.host.qemu import QemuHost, find_ovmf
from fwrescue.sim.fleet import CORRUPT_BYTES, NodeSpec, build_fleet, corrupt_node, isolated_network

pytestmark = pytest.mark.slow

QEMU = "qemu-system-x86_64"
TIMEOUT = 180.0
SHELL = "UEFI Interactive Shell"
FAST = TimerSettings(startup_jitter=0.05, offer_window=0.2, accept_timeout=1.0,
                     backoff_initial=0.5, backoff_max=2.0)
#: The dark host gets at least the recovered host's boot time plus this before judging.
DARK_MARGIN = 2.0


def with_flash_mode(node: NodeSpec, mode: str) -> NodeSpec:
    target = node.config.targets[0]
    target = replace(target, host=replace(target.host, flash_mode=mode))
    return replace(node, config=replace(node.config, targets=(target,)))


def two_qemu_nodes(tmp_path: Path, mode: str) -> tuple[NodeSpec, NodeSpec]:
    """node-01 (flash mode ``mode``, hub corrupted) and its healthy peer node-02."""
    if shutil.which(QEMU) is None:
        pytest.fail(f"{QEMU} is not installed (Debian package qemu-system-x86)")
    code = find_ovmf()[0]
    plan = build_fleet(tmp_path / "fleet", nodes=2, boards=1, base_image=code.read_bytes(),
                       image_size=code.stat().st_size, host_kind="qemu",
                       network=isolated_network(), timers=FAST)
    sick, peer = with_flash_mode(plan.nodes[0], mode), plan.nodes[1]
    assert sick.config.targets[0].host.flash_mode == mode
    corrupt_node(sick)
    return sick, peer


def dark_copy(hub: Path, workdir: Path) -> QemuHost:
    """A QEMU host on a copy of ``hub`` as it is now (same firmware, own files)."""
    workdir.mkdir()
    (workdir / "code.fd").write_bytes(hub.read_bytes())
    shutil.copy(find_ovmf()[1], workdir / "vars.fd")
    return QemuHost(code_path=workdir / "code.fd", vars_path=workdir / "vars.fd",
                    workdir=workdir, accel="tcg")


async def run_case(tmp_path: Path, mode: str) -> None:
    code = find_ovmf()[0].read_bytes()
    sick, peer = two_qemu_nodes(tmp_path, mode)
    hub = sick.flash_path.read_bytes()
    assert hub[:-CORRUPT_BYTES] == code[:-CORRUPT_BYTES]
    assert hub[-CORRUPT_BYTES:] != code[-CORRUPT_BYTES:]
    loop = asyncio.get_running_loop()
    dark = dark_copy(sick.flash_path, tmp_path / "dark")
    donor, agent = Agent(peer.config), Agent(sick.config)
    try:
        await dark.power_on()  # the corrupted hub runs alongside the recovery
        dark_since = loop.time()
        await donor.start(run_startup_checks=False)  # its own host is never started
        await agent.start()
        await asyncio.wait_for(agent.wait_idle(), TIMEOUT)
        result = agent.results["bios"]
        assert result.ok, result.reason
        assert result.origin == "peer:node-02" and result.booted
        runtime = agent.targets["bios"]
        assert isinstance(runtime.host, QemuHost)
        assert sick.flash_path.read_bytes() == code

        events = agent.engine().transcript()
        held = next(e for e in events if e["event"] == "host held")
        assert held["mode"] == mode
        boot = next(e for e in events if e["event"] == "boot check")
        assert boot["booted"] is True
        log = agent.boot_logs["bios"]
        assert SHELL in log.read_text(errors="replace")
        if mode == "dc-off":
            # QEMU never ran on the corrupted hub: its first start was the good boot.
            assert runtime.host.boots == 1 and log.name == "boot-0001.log"
        else:
            # Started held in reset (-S: no instruction ran, no output), then released.
            assert runtime.host.boots == 2 and log.name == "boot-0002.log"
            assert (log.parent / "boot-0001.log").read_bytes() == b""

        # The corrupted hub, given at least as long as the recovered one took: no shell.
        left = boot["seconds"] + DARK_MARGIN - (loop.time() - dark_since)
        dark_result = await dark.wait_boot(max(0.5, left))
        assert not dark_result.booted, dark_result.detail
        assert dark_result.log_path is not None
        assert SHELL not in dark_result.log_path.read_text(errors="replace")
    finally:
        await dark.close()
        await agent.stop()
        await donor.stop()


async def test_qemu_ovmf_corrupted_hub_does_not_boot_recovers_from_peer_and_boots_dc_off(
        tmp_path: Path) -> None:
    await run_case(tmp_path, "dc-off")


async def test_qemu_ovmf_corrupted_hub_does_not_boot_recovers_from_peer_and_boots_dc_on(
        tmp_path: Path) -> None:
    await run_case(tmp_path, "dc-on")
