"""End to end on loopback with real processes killed at the worst moment: a donor process
half-way through a transfer, and an agent process half-way through writing the flash."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fwrescue.agent import Agent
from fwrescue.config import NetworkSettings, TimerSettings
from fwrescue.donor.repository import ConsoleDonor
from fwrescue.recovery.ports import OperationEvent
from fwrescue.sim.fleet import FleetPlan, NodeSpec, build_fleet, corrupt_node, tls_toml
from tests.fakes.rogue import isolated_network

FWRESCUE = Path(sys.executable).with_name("fwrescue")
POLL = 0.02  # seconds between looks at files another process writes

# A console donor in a process of its own, its uploads paced to ``rate`` bytes/s.
DONOR = """
import asyncio, signal, sys
from pathlib import Path
from fwrescue.config import DonorSettings, NetworkSettings, TlsSettings
from fwrescue.donor.repository import ConsoleDonor

repo, trust, state, donor_id, group, port, rate = sys.argv[1:8]
tls = TlsSettings(*map(Path, sys.argv[8:11])) if len(sys.argv) > 8 else None

async def main():
    donor = ConsoleDonor(repo=Path(repo), trust=Path(trust), state_dir=Path(state),
                         network=NetworkSettings(group=group, port=int(port), tls=tls),
                         donor_id=donor_id,
                         settings=DonorSettings(max_uploads=4, rate_limit_bps=int(rate)))
    await donor.start()
    print(donor.transfer_url, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), 120)
    finally:
        await donor.stop()

asyncio.run(main())
"""


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen[Any]]]:
    """Every process started in the block is killed (by its pid) when the block ends."""
    procs: list[subprocess.Popen[Any]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def _start_donor(procs: list[subprocess.Popen[Any]], plan: FleetPlan, root: Path, donor_id: str,
                 rate: int) -> subprocess.Popen[Any]:
    assert plan.console_repo is not None
    tls = plan.tls_for(donor_id)
    tls_args = [str(tls.ca), str(tls.cert), str(tls.key)] if tls is not None else []
    proc = subprocess.Popen(
        [sys.executable, "-c", DONOR, str(plan.console_repo), str(plan.root / "trust"),
         str(root / donor_id), donor_id, plan.network.group, str(plan.network.port), str(rate),
         *tls_args],
        stdout=subprocess.PIPE, text=True)
    procs.append(proc)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()  # bounded: the donor prints at once or exits
    assert url.startswith("https://127.0.0.1:"), f"donor {donor_id} did not start"
    return proc


def _verified_chunks(staging: Path) -> tuple[int, int]:
    """(verified, total) chunks of the one image being staged, from its map file."""
    maps = list(staging.glob("*.map")) if staging.exists() else []
    if not maps:
        return 0, 0
    state = maps[0].read_bytes()[512:]
    return state.count(2), len(state)


# --- 3. a donor dies half-way -----------------------------------------------------------------

IMAGE = 4 * 1024 * 1024
CHUNK = 64 * 1024
RATE = 3 * 1024 * 1024  # bytes/s per upload: the image takes ~1.4 s from one donor


async def test_donor_killed_at_half_a_transfer_resumes_elsewhere_fetching_at_most_two_chunks_again(
        tmp_path: Path) -> None:
    plan = build_fleet(tmp_path / "fleet", nodes=1, boards=1, image_size=IMAGE,
                       network=isolated_network(),
                       timers=TimerSettings(startup_jitter=0.1, offer_window=0.3))
    node = plan.nodes[0]
    corrupt_node(node)
    genuine = plan.newest("board-a")
    acked: list[str] = []

    def on_event(event: OperationEvent) -> None:
        entry = event.transcript_entry
        if entry is not None and entry["event"] == "DonorAcked":
            acked.append(entry["offer"]["donor_id"])

    with _processes() as procs:
        donors = {name: _start_donor(procs, plan, tmp_path, name, RATE)
                  for name in ("console-1", "console-2")}
        agent = Agent(node.config)
        agent.events.callbacks.append(on_event)
        await agent.start(run_startup_checks=False)
        try:
            recovery = asyncio.create_task(agent.recover("bios", "e2e: corrupted"))
            staging = node.config.state_dir / "targets" / "bios" / "staging"
            verified, total = 0, 0
            for _ in range(int(30 / POLL)):
                verified, total = _verified_chunks(staging)
                if (total and verified >= total // 2) or recovery.done():
                    break
                await asyncio.sleep(POLL)
            assert acked and not recovery.done(), "the transfer never got under way"
            victim = acked[0]
            donors[victim].send_signal(signal.SIGKILL)
            assert 0 < verified < total, (verified, total)  # killed mid-transfer
            result = await asyncio.wait_for(recovery, 60)
            transcript = agent.engine("bios").transcript()
        finally:
            await agent.stop()

    assert result.ok, result.reason
    survivor = "console-2" if victim == "console-1" else "console-1"
    assert result.donor_id == survivor
    image = genuine.image.read_bytes()
    assert node.flash_path.read_bytes()[:IMAGE] == image
    # Both donors swarm the image; the killed one is dropped and the survivor finishes.
    failed = [e for e in transcript if e["event"] == "donor dropped"]
    assert [e["donor"] for e in failed] == [victim]
    done = [e for e in transcript if e["event"] == "transferred"]
    assert len(done) == 1 and survivor in done[0]["donors"]
    assert done[0]["refetched_chunks"] <= 2  # bytes that arrived twice: the chunk in flight
    moved = done[0]["bytes"]
    assert moved <= IMAGE + 2 * CHUNK
    print(f"donor killed at {verified}/{total} chunks; bytes by donor {done[0]['donors']} = "
          f"image + {moved - IMAGE}; chunks fetched twice: {done[0]['refetched_chunks']} "
          f"(asked again: {done[0]['rerequested_chunks']})")


# --- 4. the agent dies half-way through the flash write --------------------------------------

# W25Q256JV typicals: erasing and programming a whole 1 MiB region is ~5.4 s of datasheet
# time; at this scale the write takes ~2 s, a wide window to kill the agent in.
TIMING_SCALE = 0.4


def _agent_toml(node: NodeSpec, network: NetworkSettings, path: Path) -> Path:
    cfg = node.config
    target = cfg.targets[0]
    assert target.flash.path is not None
    path.write_text(f"""
[agent]
node_id = "{cfg.node_id}"
machine_name = "{cfg.machine_name}"
state_dir = "{cfg.state_dir}"
trust = ["{cfg.trust[0]}"]

{tls_toml(cfg.network.tls)}
[network]
group = "{network.group}"
port = {network.port}

[timers]
startup_jitter = 0.1
offer_window = 0.3

[[targets]]
name = "bios"

[targets.flash]
kind = "file"
path = "{target.flash.path}"
region_size = {target.flash.region_size}
timing_chip = "W25Q256JV"
timing_scale = {TIMING_SCALE}

[targets.host]
kind = "virtual"
boot_timeout = 5
""")
    return path


def _journal_phase(state: Path) -> str | None:
    try:
        data: dict[str, Any] = json.loads((state / "targets" / "bios" / "journal.json")
                                          .read_bytes())
    except (FileNotFoundError, ValueError):  # absent, or caught between write and rename
        return None
    phase = data.get("phase")
    return phase if isinstance(phase, str) else None


def _transcripts(state: Path) -> list[dict[str, Any]]:
    folder = state / "targets" / "bios" / "transcripts"
    docs = [json.loads(p.read_bytes()) for p in folder.glob("*.json")]
    return sorted(docs, key=lambda d: float(d["record"]["started_at"]))


async def test_agent_process_killed_mid_flash_restarts_and_finishes(tmp_path: Path) -> None:
    plan = build_fleet(tmp_path / "fleet", nodes=1, boards=1, image_size=1024 * 1024,
                       network=isolated_network())
    node = plan.nodes[0]
    corrupt_node(node)
    genuine = plan.newest("board-a").image.read_bytes()
    size = len(genuine)
    # The field's worst case: the whole BIOS region is garbage, so every block is rewritten.
    node.flash_path.write_bytes(os.urandom(size))
    corrupted = node.flash_path.read_bytes()
    state = node.config.state_dir
    floor_before = json.loads((state / "rollback.json").read_bytes())["bios"]
    assert floor_before == 1 and node.release.version == "1.0.0"
    config = _agent_toml(node, plan.network, tmp_path / "agent.toml")
    assert plan.console_repo is not None
    console = ConsoleDonor(repo=plan.console_repo, trust=plan.root / "trust",
                           state_dir=tmp_path / "console", network=plan.network)
    await console.start()
    try:
        with _processes() as procs:
            first = subprocess.Popen([str(FWRESCUE), "agent", "--config", str(config)],
                                     stdout=subprocess.DEVNULL)
            procs.append(first)
            torn = corrupted
            for _ in range(int(60 / POLL)):
                if _journal_phase(state) == "flashing":
                    torn = node.flash_path.read_bytes()
                    if torn[:size] != corrupted[:size]:
                        break  # the first blocks are rewritten: the write is under way
                assert first.poll() is None, "the agent exited"
                await asyncio.sleep(POLL)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            torn = node.flash_path.read_bytes()
            assert _journal_phase(state) == "flashing"
            assert torn != corrupted  # some of the write landed …
            assert torn[:size] != genuine  # … but not all of it: a torn flash
            assert _transcripts(state) == []

            second = subprocess.Popen([str(FWRESCUE), "agent", "--config", str(config)],
                                      stdout=subprocess.DEVNULL)
            procs.append(second)
            for _ in range(int(60 / POLL)):
                if _transcripts(state) and _journal_phase(state) is None:
                    break
                assert second.poll() is None, "the restarted agent exited"
                await asyncio.sleep(POLL)
            second.send_signal(signal.SIGTERM)
            assert second.wait(10) == 0
    finally:
        await console.stop()

    assert node.flash_path.read_bytes()[:size] == genuine
    docs = _transcripts(state)
    assert len(docs) == 1
    record, transcript = docs[0]["record"], docs[0]["transcript"]
    assert record["phase"] == "recovered" and record["restarts"] == 1
    events = [e["event"] for e in transcript]
    assert "restaged" in events and events.count("flashed") == 1
    boot = [e for e in transcript if e["event"] == "boot check"]
    assert boot and boot[-1]["booted"] is True
    assert json.loads((state / "rollback.json").read_bytes())["bios"] == 2
