"""A whole fleet recovering at once, for the swarm test and the fleet benchmark.

:func:`prepare` builds a fleet on disk (one board, every node on the newest release,
``healthy`` intact peers, the rest corrupted) with links shaped like a BMC's: each
agent's donor egress and recovery ingress at ``link_bps``, flash writes paced by the
W25Q256JV timing model. :func:`run_agents` starts the given agents in this process
and waits for every recipient's recovery, measuring per node the time to a staged
verified image and to a booted host. The console runs where the caller puts it
(:func:`start_console`), so a benchmark can split the agents over worker processes:
multicast on loopback crosses processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fwrescue.agent import Agent
from fwrescue.config import DonorSettings, NetworkSettings, TimerSettings
from fwrescue.donor.repository import ConsoleDonor
from fwrescue.recovery.ports import OperationEvent
from fwrescue.sim.fleet import FleetPlan, NodeSpec, build_fleet, corrupt_node

# Per-node counts of transcript events, for looking into a run (FLEET_DUMP).
DEBUG_EVENTS: dict[str, Counter[str]] | None = None

__all__ = ["FleetSpec", "NodeOutcome", "prepare", "run_agents", "start_console"]


@dataclass(frozen=True, kw_only=True)
class FleetSpec:
    recipients: int
    healthy: int = 1
    image_size: int = 256 * 1024
    chunk_size: int = 16 * 1024
    link_bps: int = 1024 * 1024  # bytes/s, every upload (or download) of a node together
    peer_uploads: int = 4  # image bodies a peer streams at once (its link shared)
    # Token holders a peer admits; a body request finding all peer_uploads slots busy
    # is answered 503 busy (the recipient asks others, then again) or, with
    # upload_queue_s > 0, waits its turn that long (upload slot rotation, docs/transfer.md).
    peer_holders: int = 4
    upload_queue_s: float = 0.0
    console_uploads: int = 4
    console_only: bool = False  # peers do not donate: the baseline
    console_cap: float = 1.5  # images' worth the console sends once peers can serve
    timing_scale: float = 0.0  # flash pacing (W25Q256JV datasheet times x this)
    seed: int = 1
    # A recipient keeps soliciting (every <= 1.6 s) until a donor frees: in the
    # console-only baseline most wait many transfer times; the run's timeout bounds it.
    timers: TimerSettings = field(default_factory=lambda: TimerSettings(
        startup_jitter=0.2, offer_window=0.2, backoff_initial=0.4, backoff_max=1.6,
        max_solicits=1000, accept_timeout=1.0))


@dataclass
class NodeOutcome:
    node_id: str
    ok: bool
    reason: str
    staged_s: float | None
    booted_s: float | None
    flash_ok: bool
    bytes_received: int = 0
    refetched_chunks: int = 0
    donors: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    sessions: int = 0  # negotiation sessions the fetch used
    chokes: int = 0  # busy answers from donors (upload slot rotation)
    released: dict[str, str] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # transcript counts (FLEET_DUMP)


def prepare(root: Path, spec: FleetSpec, network: NetworkSettings) -> FleetPlan:
    """Build the fleet: node 1..healthy intact, the rest corrupted; links shaped."""
    plan = build_fleet(root, nodes=spec.recipients + spec.healthy, boards=1,
                       image_size=spec.image_size, network=network, seed=spec.seed,
                       timers=spec.timers, chunk_size=spec.chunk_size, all_newest=True)
    donor = DonorSettings(max_uploads=spec.peer_uploads, lease_s=60.0,
                          rate_limit_bps=spec.link_bps, enabled=True,
                          max_holders=spec.peer_holders, upload_queue_s=spec.upload_queue_s)
    for i, node in enumerate(plan.nodes):
        target = node.config.targets[0]
        flash = dataclasses.replace(target.flash, timing_chip="W25Q256JV",
                                    timing_scale=spec.timing_scale) \
            if spec.timing_scale else target.flash
        recipient = i >= spec.healthy
        # Console-only baseline: recipients do not donate (nor do the healthy peers).
        settings = dataclasses.replace(donor, enabled=not spec.console_only)
        node.config = dataclasses.replace(
            node.config, donor=settings,
            targets=(dataclasses.replace(target, flash=flash),))
        if recipient:
            corrupt_node(node)
    return plan


def start_console(plan: FleetPlan, spec: FleetSpec) -> ConsoleDonor:
    assert plan.console_repo is not None
    # The console-only baseline gets the console's default admission (16 uploads).
    uploads = 16 if spec.console_only else spec.console_uploads
    settings = DonorSettings(max_uploads=uploads, lease_s=60.0,
                             rate_limit_bps=spec.link_bps, console_offer_delay_s=0.3,
                             suppress_after=1,
                             egress_cap_images=0.0 if spec.console_only else spec.console_cap)
    return ConsoleDonor(repo=plan.console_repo, trust=plan.root / "trust",
                        state_dir=plan.root / "console", network=plan.network,
                        settings=settings)


async def run_agents(nodes: list[NodeSpec], *, timeout: float, seed: int = 1,
                     ready: Callable[[], Awaitable[float]] | None = None,
                     done: Callable[[], Awaitable[None]] | None = None,
                     ) -> tuple[list[NodeOutcome], float]:
    """Start ``nodes``' agents; then (after ``ready()``, which returns the common start
    time on the monotonic clock, e.g. a barrier shared with other worker processes) start
    every corrupted node's recovery at once and wait for all of them. Returns the
    outcomes (times from that start) and this process's RSS growth in MiB. ``done()`` is
    awaited before the agents stop (other workers' recipients may still fetch from them)."""
    # Every agent stands for its own BMC: give the flash writes threads of their own.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=len(nodes) + 4))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    agents = [Agent(n.config, rng=random.Random(seed * 7919 + i)) for i, n in enumerate(nodes)]
    staged_at: dict[str, float] = {}
    booted_at: dict[str, float] = {}
    clock: list[float] = [time.monotonic()]

    def listener(node_id: str) -> Callable[[OperationEvent], None]:
        def on_event(event: OperationEvent) -> None:
            entry = event.transcript_entry
            what = entry.get("event") if entry is not None else None
            if DEBUG_EVENTS is not None and entry is not None and isinstance(what, str):
                DEBUG_EVENTS.setdefault(node_id, Counter())[what] += 1
                if what in ("NakReceived", "donor released", "OfferRejected"):
                    DEBUG_EVENTS[node_id][f"{what}: {str(entry.get('reason'))[:40]}"] += 1
            if what == "transferred":  # the verified image is complete in staging
                staged_at.setdefault(node_id, time.monotonic() - clock[0])
            elif what == "done":  # flashed, read back and the host booted
                booted_at.setdefault(node_id, time.monotonic() - clock[0])
        return on_event

    for node, agent in zip(nodes, agents, strict=True):
        agent.events.callbacks.append(listener(node.node_id))
    try:
        for agent in agents:
            await agent.start(run_startup_checks=False)
        clock[0] = await ready() if ready is not None else time.monotonic()
        pairs = [(n, a) for n, a in zip(nodes, agents, strict=True) if n.corrupted]
        results = await asyncio.wait_for(asyncio.gather(
            *(a.recover("bios", "fleet lost its BIOS at once") for _, a in pairs)), timeout)
        outcomes = []
        if DEBUG_EVENTS is not None:  # every donor's reasons for not offering
            for node, agent in zip(nodes, agents, strict=True):
                responder = agent.donor.responder
                if responder is not None:
                    counts = DEBUG_EVENTS.setdefault(node.node_id, Counter())
                    for why, n in (*responder.skipped.items(), *responder.ignored.items()):
                        counts[f"donor: {why}"] += n
        for (node, agent), result in zip(pairs, results, strict=True):
            image = node.release.image.read_bytes()
            flash_ok = node.flash_path.read_bytes()[:len(image)] == image
            fetcher = agent.fetchers.get("bios")
            stats = fetcher.last_stats if fetcher is not None else None
            outcomes.append(NodeOutcome(
                node_id=node.node_id, ok=result.ok, reason=result.reason,
                staged_s=staged_at.get(node.node_id), booted_s=booted_at.get(node.node_id),
                flash_ok=flash_ok,
                bytes_received=stats.bytes_received if stats else 0,
                refetched_chunks=stats.refetched_chunks if stats else 0,
                donors=dict(stats.bytes_by_donor) if stats else {},
                dropped=dict(stats.dropped) if stats else {},
                sessions=stats.sessions if stats else 0, chokes=stats.chokes if stats else 0,
                released=dict(stats.released) if stats else {}))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
        if done is not None:  # keep donating until every other worker's nodes are done
            await done()
        return outcomes, rss
    finally:
        for agent in agents:
            await agent.stop()
