"""End to end on loopback: whole agents recover over real multicast negotiation, real
HTTP transfers and real signatures — a two-board fleet, and a recipient surrounded by
rogue donors that answer first."""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path
from typing import Any

from fwrescue.agent import Agent
from fwrescue.config import TimerSettings
from fwrescue.host.base import PowerState
from fwrescue.host.virtual import VirtualHost
from fwrescue.image.package import open_package
from fwrescue.sim.demo import DemoOptions, run_demo
from fwrescue.sim.fleet import FleetPlan, build_fleet, corrupt_node
from fwrescue.trust.verifier import sha256_file
from tests.fakes.rogue import (
    RogueDonor,
    corrupted_carrier,
    isolated_network,
    other_board,
    record_flash_writes,
    rogue_signed,
    rolled_back,
)

# --- 1. a two-board fleet -------------------------------------------------------------------


def _signed_images(workdir: Path) -> dict[str, tuple[str, ...]]:
    """image sha256 -> the boards its genuinely built package was signed for."""
    found: dict[str, tuple[str, ...]] = {}
    for package in sorted((workdir / "releases").glob("*.fwpkg")):
        manifest = open_package(package).signed.manifest
        found[manifest.sha256] = manifest.machine_names
    return found


async def test_two_board_fleet_each_recipient_gets_its_own_boards_image(
        tmp_path: Path) -> None:
    workdir = tmp_path / "fleet"
    report = await run_demo(DemoOptions(nodes=8, corrupt=4, boards=2, workdir=workdir,
                                        live=False, timeout=120.0,
                                        seed=random.randrange(1 << 30)))
    nodes = report["nodes"]
    corrupted = [n for n in nodes if n["corrupted"]]
    boards = {n["board"] for n in corrupted}
    assert boards == {"board-a", "board-b"}
    assert all(sum(n["board"] == b for n in corrupted) >= 2 for b in boards)
    assert report["ok"] is True
    signed_for = _signed_images(workdir)
    assert len(signed_for) == 4  # two releases per board, all distinct bytes
    for node in corrupted:
        assert node["recovered"] and node["booted"], node
        flash = workdir / "nodes" / node["id"] / "flash.bin"
        release = workdir / "releases" / f"{node['board']}-{node['version_after']}.bin"
        size = release.stat().st_size
        digest = sha256_file(flash, size)
        assert signed_for.get(digest) == (node["board"],), (
            f"{node['id']} ({node['board']}) holds an image signed for {signed_for.get(digest)}")
        assert flash.read_bytes()[:size] == release.read_bytes()
        other = "board-b" if node["board"] == "board-a" else "board-a"
        for version in ("1.0.0", "1.1.0"):
            assert flash.read_bytes()[:size] != (
                workdir / "releases" / f"{other}-{version}.bin").read_bytes()


# --- 2. rogue donors --------------------------------------------------------------------------

# In an 8-node, 2-board fleet node-03 and node-07 are board-a nodes on 1.1.0 (floor 2):
# node-03 is the recipient, node-07 the honest peer. The other nodes are not started.
RECIPIENT, HONEST = 2, 6


def _fleet(root: Path, *, max_solicits: int = 8) -> FleetPlan:
    timers = TimerSettings(startup_jitter=0.1, offer_window=0.3, backoff_initial=0.5,
                           backoff_max=1.0, max_solicits=max_solicits, accept_timeout=1.0)
    return build_fleet(root, nodes=8, boards=2, image_size=512 * 1024,
                       network=isolated_network(), timers=timers)


def _rogues(plan: FleetPlan, root: Path) -> list[RogueDonor]:
    net = plan.network
    old, new = plan.releases["board-a"]
    evil = root / "evil.bin"
    evil.write_bytes(random.Random(666).randbytes(512 * 1024))
    board_b = plan.releases["board-b"][-1]
    return [
        rolled_back(root / "rogue-rollback", donor_id="rogue-rollback", network=net,
                    signed=old.signed, image=old.image),
        rogue_signed(root / "rogue-key", donor_id="rogue-key", network=net, board="board-a",
                     image=evil),
        other_board(root / "rogue-board", donor_id="rogue-board", network=net,
                    signed=board_b.signed, image=board_b.image, claimed_boards=["board-a"]),
        corrupted_carrier(root / "rogue-chunks", donor_id="rogue-chunks", network=net,
                          signed=new.signed, image=new.image),
    ]




def _entries(transcript: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in transcript if e["event"] == event]


async def _start_all(donors: list[RogueDonor], agents: list[Agent]) -> None:
    for donor in donors:
        await donor.start()
    for agent in agents:
        await agent.start()


async def _stop_all(donors: list[RogueDonor], agents: list[Agent]) -> None:
    for agent in agents:
        await agent.stop()
    for donor in donors:
        await donor.stop()


async def test_rogue_donors_cause_no_bad_flash_and_an_honest_donor_heals(
        tmp_path: Path) -> None:
    plan = _fleet(tmp_path / "fleet")
    recipient_spec, honest_spec = plan.nodes[RECIPIENT], plan.nodes[HONEST]
    genuine = plan.newest("board-a")
    assert recipient_spec.release == genuine and honest_spec.release == genuine
    corrupt_node(recipient_spec)
    rogues = _rogues(plan, tmp_path)
    honest = Agent(honest_spec.config)
    recipient = Agent(recipient_spec.config)
    try:
        await _start_all(rogues, [honest])
        await recipient.start(run_startup_checks=False)
        writes = record_flash_writes(recipient)
        result = await asyncio.wait_for(recipient.recover("bios", "e2e: corrupted"), 60)
        transcript = recipient.engine("bios").transcript()
    finally:
        await _stop_all(rogues, [honest, recipient])

    assert result.ok, result.reason
    assert result.donor_id == honest_spec.node_id
    image = genuine.image.read_bytes()
    assert recipient_spec.flash_path.read_bytes()[:len(image)] == image
    assert writes == [genuine.signed.manifest.sha256]
    assert len(_entries(transcript, "flashed")) == 1
    assert len(_entries(transcript, "read-back verified")) == 1
    declined = {e["donor"]: e["reason"] for e in _entries(transcript, "declined")}
    blame = {e["donor"]: e["blame"] for e in _entries(transcript, "declined")}
    # A bad carrier of the genuine manifest is blamed alone; the digest stays acceptable.
    expected_blame = {"rogue-rollback": "manifest", "rogue-key": "manifest",
                      "rogue-board": "manifest", "rogue-chunks": "donor"}
    expected = {"rogue-rollback": "anti-rollback floor",
                "rogue-key": "untrusted key",
                "rogue-board": "another board",
                "rogue-chunks": "chunk digest does not match"}
    # Every rogue ACKed before the genuine manifest verified is declined for the right
    # reason; once it verified, offers of other digests are refused unseen (swarming
    # commits to one image), so which manifest-rogues were tried depends on the ranking.
    assert set(declined) <= set(expected), declined
    for donor, why in declined.items():
        assert why in expected[donor] or expected[donor] in why, (donor, why)
        assert blame[donor] == expected_blame[donor], donor
    acked = [e["offer"]["donor_id"] for e in _entries(transcript, "DonorAcked")]
    assert honest_spec.node_id in acked
    assert set(acked) <= set(expected) | {honest_spec.node_id}
    assert set(acked) - {honest_spec.node_id} == set(declined)  # each rogue tried was caught
    rogue_acks = [a for a in acked if a != honest_spec.node_id]
    assert len(rogue_acks) == len(set(rogue_acks))  # and never used again
    host = recipient.targets["bios"].host
    assert isinstance(host, VirtualHost)
    assert host.runs == [True]  # the host ran once, on genuine firmware


async def test_only_rogue_donors_recovery_fails_and_the_flash_is_never_written(
        tmp_path: Path) -> None:
    plan = _fleet(tmp_path / "fleet", max_solicits=3)
    recipient_spec = plan.nodes[RECIPIENT]
    corrupt_node(recipient_spec)
    before = recipient_spec.flash_path.read_bytes()
    rogues = _rogues(plan, tmp_path)
    recipient = Agent(recipient_spec.config)
    try:
        await _start_all(rogues, [])
        await recipient.start(run_startup_checks=False)
        writes = record_flash_writes(recipient)
        result = await asyncio.wait_for(recipient.recover("bios", "e2e: corrupted"), 60)
        transcript = recipient.engine("bios").transcript()
    finally:
        await _stop_all(rogues, [recipient])

    assert not result.ok
    assert "no donor delivered a verified image" in result.reason
    assert writes == []
    assert _entries(transcript, "flashed") == []
    assert recipient_spec.flash_path.read_bytes() == before
    declined = {e["donor"] for e in _entries(transcript, "declined")}
    acked = {e["offer"]["donor_id"] for e in _entries(transcript, "DonorAcked")}
    assert declined and declined == acked  # every rogue that was ACKed was caught
    assert declined <= {"rogue-rollback", "rogue-key", "rogue-board", "rogue-chunks"}
    host = recipient.targets["bios"].host
    assert isinstance(host, VirtualHost)
    assert host.state is PowerState.OFF and host.runs == []
    assert hashlib.sha256(before).hexdigest() != plan.newest("board-a").signed.manifest.sha256
