"""End to end through predetermined locations: an agent whose BIOS target lists a USB
directory or an HTTP URL (served by aiohttp on 127.0.0.1) recovers its corrupted flash
from the package there, with no donor on its multicast group. A tampered package in the
same place is refused with its reason, and when it is the only one the recovery fails
with the flash untouched and the host held off.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fwrescue.agent import Agent
from fwrescue.config import TimerSettings
from fwrescue.host.base import PowerState
from fwrescue.host.virtual import VirtualHost
from fwrescue.sim.fleet import FleetPlan, NodeSpec, build_fleet, corrupt_node, isolated_network

IMAGE = 256 * 1024
TIMEOUT = 60.0
FAST = TimerSettings(startup_jitter=0.05, offer_window=0.2, accept_timeout=1.0,
                     backoff_initial=0.5, backoff_max=2.0, max_solicits=2)


class PackageSite:
    """An aiohttp server on 127.0.0.1 serving ``root/<target>/<machine>.fwpkg``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        self.url = ""

    async def _get(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        path = self.root / request.match_info["target"] / f"{request.match_info['machine']}"
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    def template(self) -> str:
        return f"{self.url}/fw/{{target}}/{{machine}}.fwpkg"


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[PackageSite]:
    server = PackageSite(tmp_path / "www")
    app = web.Application()
    app.router.add_get("/fw/{target}/{machine}", server._get)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


def one_node(tmp_path: Path) -> tuple[FleetPlan, NodeSpec]:
    plan = build_fleet(tmp_path / "fleet", nodes=1, boards=1, image_size=IMAGE,
                       network=isolated_network(), timers=FAST)
    node = plan.nodes[0]
    corrupt_node(node)  # flash damaged, BMC's own copy gone
    return plan, node


def with_sources(node: NodeSpec, sources: list[Mapping[str, Any]], *,
                 network: bool) -> NodeSpec:
    target = replace(node.config.targets[0], sources=tuple(sources), network=network)
    return replace(node, config=replace(node.config, targets=(target,)))


def tamper(package: Path) -> None:
    """Flip one byte inside the image member (the package ends with 1 KiB of zeros)."""
    data = bytearray(package.read_bytes())
    data[len(data) - 1024 - IMAGE // 2] ^= 0x01
    package.write_bytes(bytes(data))


async def recover(node: NodeSpec) -> tuple[Agent, list[dict[str, Any]], PowerState | None]:
    """Start the agent, let its start-up checks run; (agent, transcript, host power state
    at the end, seen before the agent stops)."""
    agent = Agent(node.config)
    try:
        await agent.start()
        await asyncio.wait_for(agent.wait_idle(), TIMEOUT)
        host = agent.targets["bios"].host
        state = await host.power_state() if host is not None else None
        return agent, agent.engine().transcript(), state
    finally:
        await agent.stop()


def events(transcript: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in transcript if e["event"] == name]


async def test_usb_package_is_used_when_no_donor_answers(tmp_path: Path) -> None:
    plan, node = one_node(tmp_path)
    usb = tmp_path / "media" / "usb0"
    usb.mkdir(parents=True)
    newest = plan.newest(node.board)
    shutil.copy(newest.package, usb / newest.package.name)
    node = with_sources(node, [{"kind": "usb", "path": str(usb)}], network=True)

    agent, transcript, state = await recover(node)
    assert state is PowerState.ON
    result = agent.results["bios"]
    assert result.ok and result.booted, result.reason
    assert result.origin == f"usb:{usb}/{newest.package.name}"
    assert result.donor_id is None and result.version_after == newest.version
    assert node.flash_path.read_bytes()[:IMAGE] == newest.image.read_bytes()
    assert events(transcript, "candidate_accepted")
    assert not events(transcript, "SolicitSent")  # the network was never needed
    assert (usb / newest.package.name).read_bytes() == newest.package.read_bytes()


async def test_http_package_is_used_when_no_donor_answers(tmp_path: Path,
                                                          site: PackageSite) -> None:
    plan, node = one_node(tmp_path)
    newest = plan.newest(node.board)
    (site.root / "bios").mkdir(parents=True)
    shutil.copy(newest.package, site.root / "bios" / f"{node.board}.fwpkg")
    node = with_sources(node, [{"kind": "http", "url": site.template(), "timeout": 30.0}],
                        network=True)

    agent, transcript, state = await recover(node)
    assert state is PowerState.ON
    result = agent.results["bios"]
    assert result.ok and result.booted, result.reason
    assert result.origin is not None and result.origin.startswith("http:")
    assert site.requests == [f"/fw/bios/{node.board}.fwpkg"]
    assert node.flash_path.read_bytes()[:IMAGE] == newest.image.read_bytes()
    assert not events(transcript, "SolicitSent")


async def test_usb_is_tried_before_http_and_a_tampered_usb_package_falls_through(
        tmp_path: Path, site: PackageSite) -> None:
    plan, node = one_node(tmp_path)
    newest = plan.newest(node.board)
    usb = tmp_path / "usb"
    usb.mkdir()
    shutil.copy(newest.package, usb / "bios.fwpkg")
    tamper(usb / "bios.fwpkg")
    (site.root / "bios").mkdir(parents=True)
    shutil.copy(newest.package, site.root / "bios" / f"{node.board}.fwpkg")
    node = with_sources(node, [{"kind": "usb", "path": str(usb)},
                               {"kind": "http", "url": site.template()}], network=False)

    agent, transcript, _ = await recover(node)
    result = agent.results["bios"]
    assert result.ok, result.reason
    assert result.origin is not None and result.origin.startswith("http:")
    rejected = events(transcript, "candidate_rejected")
    assert [r["error"] for r in rejected] == ["ChunkMismatch"]
    assert node.flash_path.read_bytes()[:IMAGE] == newest.image.read_bytes()


def _usb(tmp_path: Path, site: PackageSite, node: NodeSpec, package: Path) -> dict[str, Any]:
    usb = tmp_path / "usb"
    usb.mkdir()
    shutil.copy(package, usb / package.name)
    tamper(usb / package.name)
    return {"kind": "usb", "path": str(usb)}


def _http(tmp_path: Path, site: PackageSite, node: NodeSpec, package: Path) -> dict[str, Any]:
    (site.root / "bios").mkdir(parents=True)
    served = site.root / "bios" / f"{node.board}.fwpkg"
    shutil.copy(package, served)
    tamper(served)
    return {"kind": "http", "url": site.template()}


@pytest.mark.parametrize("place", [_usb, _http], ids=["usb", "http"])
async def test_tampered_package_as_the_only_source_is_refused_flash_untouched_host_held(
        tmp_path: Path, site: PackageSite,
        place: Callable[[Path, PackageSite, NodeSpec, Path], dict[str, Any]]) -> None:
    plan, node = one_node(tmp_path)
    spec = place(tmp_path, site, node, plan.newest(node.board).package)
    node = with_sources(node, [spec], network=False)
    before = node.flash_path.read_bytes()

    agent, transcript, state = await recover(node)
    result = agent.results["bios"]
    assert not result.ok
    assert "no predetermined location holds a verified image" in result.reason
    rejected = events(transcript, "candidate_rejected")
    assert len(rejected) == 1 and rejected[0]["error"] == "ChunkMismatch"
    assert "chunk digest does not match" in rejected[0]["reason"]
    assert not events(transcript, "flashed") and not events(transcript, "host held")
    assert node.flash_path.read_bytes() == before  # not one byte written
    host = agent.targets["bios"].host
    assert isinstance(host, VirtualHost)
    assert state is PowerState.OFF and host.runs == []  # never ran on that flash
    assert agent.engine().installed_version == node.release.version  # record unchanged
