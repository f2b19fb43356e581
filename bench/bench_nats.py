"""Fleet recovery negotiated over UDP multicast vs over a 3-node NATS cluster.

Same N, same image, same fleet shape, one run each, in this process on loopback: N
corrupted recipients, a few healthy peers and a console donor, real agents, real HTTP
transfers shaped to a BMC link. The only difference is ``[transport] kind``: ``udp``
(multicast) or ``nats`` (a private ``nats-server`` cluster of three nodes started here,
multicast fallback off, so NATS alone carries the negotiation).

Prints, per transport: the slowest recipient's recovery time and the time to the first
ACK (negotiation latency, median over recipients), then the NATS / multicast ratios.
Usage: ``python bench/bench_nats.py [N]`` (default 8).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fwrescue.agent import Agent
from fwrescue.config import DonorSettings, NetworkSettings, TimerSettings, TransportSettings
from fwrescue.donor.repository import ConsoleDonor
from fwrescue.recovery.ports import OperationEvent
from fwrescue.sim.fleet import build_fleet, corrupt_node, isolated_network
from fwrescue.sim.nats_cluster import NatsCluster

IMAGE = 1024 * 1024
LINK_BPS = 100_000_000 // 8  # a 100 Mb/s BMC link, per upload
HEALTHY = 4


async def run(recipients: int, root: Path, network: NetworkSettings,
              seed: int) -> tuple[float, float]:
    """(slowest recovery s, median s from recovery start to DonorAcked)."""
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=recipients + HEALTHY + 4))
    plan = build_fleet(root, nodes=recipients + HEALTHY, boards=1, image_size=IMAGE,
                       network=network, seed=seed,
                       timers=TimerSettings(startup_jitter=0.5, offer_window=0.3,
                                            backoff_initial=1.0, backoff_max=4.0,
                                            max_solicits=16))
    donor = DonorSettings(max_uploads=4, lease_s=60.0, rate_limit_bps=LINK_BPS)
    for node in plan.nodes:
        node.config = dataclasses.replace(node.config, donor=donor)
    for node in plan.nodes[:recipients]:
        corrupt_node(node)
    assert plan.console_repo is not None
    console = ConsoleDonor(repo=plan.console_repo, trust=plan.root / "trust",
                           state_dir=plan.root / "console", network=plan.network,
                           settings=DonorSettings(max_uploads=16, rate_limit_bps=LINK_BPS))
    acked: dict[str, float] = {}

    def on_event(node_id: str, started: float) -> object:
        def record(event: OperationEvent) -> None:
            entry = event.transcript_entry
            if entry is not None and entry["event"] == "DonorAcked" and node_id not in acked:
                acked[node_id] = time.monotonic() - started
        return record

    await console.start()
    agents = [Agent(n.config) for n in plan.nodes]
    try:
        started = time.monotonic()
        for node, agent in zip(plan.nodes, agents, strict=True):
            agent.events.callbacks.append(on_event(node.node_id, started))  # type: ignore[arg-type]
            await agent.start()
        await asyncio.wait_for(asyncio.gather(*(a.wait_idle() for a in agents)), 600)
        slowest = time.monotonic() - started
        results = [a.results.get("bios") for a in agents[:recipients]]
        if any(r is None or not r.ok for r in results):
            raise SystemExit(f"{network.transport.kind}: a recipient failed to recover")
        return slowest, statistics.median(acked.values())
    finally:
        for agent in agents:
            await agent.stop()
        await console.stop()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp, NatsCluster(Path(tmp) / "nats-cluster") as cluster:
        udp = isolated_network(rng)
        nats = dataclasses.replace(isolated_network(rng), transport=TransportSettings(
            kind="nats", nats_servers=tuple(cluster.urls), site="bench",
            multicast_fallback=False))
        print(f"N={n} recipients, {HEALTHY} healthy peers + console, image {IMAGE >> 10} KiB, "
              f"{LINK_BPS * 8 / 1e6:.0f} Mb/s per upload; NATS: 3-node cluster on loopback")
        print(f"{'transport':>10} {'slowest s':>10} {'median s to ACK':>16}")
        figures = {}
        for name, network in (("multicast", udp), ("nats", nats)):
            figures[name] = asyncio.run(run(n, Path(tmp) / f"fleet-{name}", network, seed=7))
            print(f"{name:>10} {figures[name][0]:>10.2f} {figures[name][1]:>16.3f}")
        (s_udp, a_udp), (s_nats, a_nats) = figures["multicast"], figures["nats"]
        print(f"ratio nats/multicast: slowest {s_nats / s_udp:.2f}, "
              f"time to ACK {a_nats / a_udp:.2f}")


if __name__ == "__main__":
    main()
