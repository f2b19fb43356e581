"""Fleet recovery at scale: how the slowest of N simultaneous recipients compares to N = 1.

Every node runs a real agent in this process (UDP multicast negotiation on loopback,
HTTP transfers shaped to a BMC link, flash writes paced by a W25Q timing model);
a console donor holds every board's newest package. All ratios come from one run.

Prints, per N: the slowest recipient's recovery time / the N = 1 time, console
egress / image size, and how many recipients were served by peers. Targets from
ARCHITECTURE §10: slowest ≤ 1.5 × N=1 (with chunked swarming) and console egress
≤ 2 × image for any N. Usage: ``python bench/bench_fleet.py [N ...]``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fwrescue.agent import Agent
from fwrescue.config import DonorSettings, TimerSettings
from fwrescue.console.donor import ConsoleDonor
from fwrescue.sim.fleet import build_fleet, corrupt_node, isolated_network

IMAGE = 1024 * 1024
LINK_BPS = 100_000_000 // 8  # a 100 Mb/s NC-SI BMC link, per upload
HEALTHY = 4  # healthy peers per fleet besides the console
CONSOLE_DELAY = float(os.environ.get("CONSOLE_DELAY", "0.5"))  # console/donor.py defaults
CONSOLE_SUPPRESS = int(os.environ.get("CONSOLE_SUPPRESS", "1"))
BACKOFF = float(os.environ.get("BACKOFF", "1.0"))  # first retransmit; doubles to 4x


async def run(recipients: int, root: Path, seed: int) -> tuple[float, float, int]:
    # Every agent here stands for its own BMC: give each its own flash thread, as it would
    # have (the default pool's few workers would serialize the modelled flash writes).
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=recipients + HEALTHY + 4))
    rng = random.Random(seed)
    network = isolated_network(rng)
    plan = build_fleet(root, nodes=recipients + HEALTHY, boards=1, image_size=IMAGE,
                       network=network, seed=seed,
                       timers=TimerSettings(startup_jitter=0.5, offer_window=0.3,
                                            backoff_initial=BACKOFF, backoff_max=4 * BACKOFF,
                                            max_solicits=16))
    donor = DonorSettings(max_uploads=4, lease_s=60.0, rate_limit_bps=LINK_BPS)
    for node in plan.nodes:
        flash = dataclasses.replace(node.config.targets[0].flash, timing_chip="W25Q256JV",
                                    timing_scale=0.05)
        target = dataclasses.replace(node.config.targets[0], flash=flash)
        node.config = dataclasses.replace(node.config, donor=donor, targets=(target,))
    for node in plan.nodes[:recipients]:
        corrupt_node(node)
    assert plan.console_repo is not None
    console = ConsoleDonor(repo=plan.console_repo, trust=plan.root / "trust",
                           state_dir=plan.root / "console", network=network,
                           settings=DonorSettings(max_uploads=16, rate_limit_bps=LINK_BPS,
                                                  console_offer_delay_s=CONSOLE_DELAY,
                                                  suppress_after=CONSOLE_SUPPRESS))
    await console.start()
    agents = [Agent(n.config) for n in plan.nodes]
    try:
        started = time.monotonic()
        for agent in agents:
            await agent.start()
        await asyncio.wait_for(asyncio.gather(*(a.wait_idle() for a in agents)), 600)
        slowest = time.monotonic() - started
        results = [a.results.get("bios") for a in agents[:recipients]]
        failed = [r for r in results if r is None or not r.ok]
        if failed:
            raise SystemExit(f"N={recipients}: {len(failed)} recipients failed to recover")
        by_peer = sum(1 for r in results if r is not None and r.donor_kind == "peer")
        egress = console.service.server.stats.image_bytes / IMAGE
        return slowest, egress, by_peer
    finally:
        for agent in agents:
            await agent.stop()
        await console.stop()


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1, 8, 32, 64]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        print(f"image {IMAGE >> 10} KiB, link {LINK_BPS * 8 / 1e6:.0f} Mb/s per upload, "
              f"{HEALTHY} healthy peers + console")
        print(f"{'N':>4} {'slowest s':>10} {'× N=1':>7} {'console egress × image':>23} "
              f"{'by peers':>9}")
        for i, n in enumerate(sizes):
            slowest, egress, by_peer = asyncio.run(run(n, Path(tmp) / f"fleet-{n}", seed=i + 1))
            base = base or slowest
            print(f"{n:>4} {slowest:>10.2f} {slowest / base:>7.2f} {egress:>23.2f} "
                  f"{by_peer:>5}/{n}")


if __name__ == "__main__":
    main()
