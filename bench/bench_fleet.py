"""Fleet recovery at scale: N recipients that lost their BIOS in the same instant.

Real agents (UDP multicast negotiation on loopback, HTTP transfers with chunk swarming,
flash writes paced by the W25Q256JV timing model, a virtual host's boot check), split
over ``--workers`` processes so both cores work (multicast on loopback crosses
processes); the console runs in this process. Every node's link is shaped like a BMC's:
its donor egress (all uploads together) and its recovery ingress at ``--link-mbps``.

The real case (a 32 MiB image over 100 Mb/s links, 64 KiB chunks) would not fit 256
agents on 2 cores, so image and link are scaled together by ``--scale`` (default 1/100:
a 327 KiB image at 1 Mb/s with 16 KiB chunks, the flash timing model at full speed on
the smaller image): every time keeps its ratio to the image's transfer time.

Prints per N: slowest and median time to a staged verified image and to a booted host,
as ratios to N = 1; console egress as a multiple of the image; chunks whose bytes
arrived twice; peak RSS growth per node; CPU busy %. Then a console-only baseline
(peers do not donate) at the largest N. Writes a PNG plot (``--plot``) and, with
``--json FILE``, the figures as ``{"runs": [...]}``.

Targets (issue 7): slowest N=256/N=1 <= 1.5x (staged and booted), median staged <=
1.25x, console egress <= 2x image, console-only >= 18x slower than swarm at N = 256.

Usage: ``python bench/bench_fleet.py [--sizes 1 16 64 256] [--json out.json]``. While
developing, run small sizes only (``--sizes 1 8 --no-baseline``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fwrescue.sim import swarm_fleet
from fwrescue.sim.fleet import isolated_network
from fwrescue.sim.swarm_fleet import FleetSpec, NodeOutcome, prepare, run_agents, start_console

REAL_IMAGE = 32 * 1024 * 1024
REAL_LINK_BPS = 100_000_000 // 8


@dataclass
class WorkerResult:
    outcomes: list[NodeOutcome]
    rss_mib: float
    cpu_s: float
    nodes: int


def _worker(root: str, spec: FleetSpec, indices: list[int], barrier: Any, finished: Any,
            timeout: float, out: Any) -> None:
    """One worker process: build its agents, meet the others at the barrier, recover."""
    import pickle

    with open(Path(root) / "nodes.pickle", "rb") as f:
        all_nodes = pickle.load(f)
    nodes = [all_nodes[i] for i in indices]

    async def done() -> None:
        await asyncio.to_thread(finished.wait)

    async def ready() -> float:
        # Every process leaves the barrier at about the same instant; CLOCK_MONOTONIC is
        # system-wide, so the start times of all workers agree.
        await asyncio.to_thread(barrier.wait)
        return time.monotonic()

    started_cpu = sum(os.times()[:2])
    if os.environ.get("FLEET_DUMP"):
        swarm_fleet.DEBUG_EVENTS = {}
    try:
        outcomes, rss = asyncio.run(run_agents(nodes, timeout=timeout, seed=spec.seed,
                                               ready=ready, done=done))
    except BaseException as e:  # reported to the parent, which fails the run
        out.put(("error", repr(e)))
        return
    cpu = sum(os.times()[:2]) - started_cpu
    for o in outcomes:
        o.events = dict((swarm_fleet.DEBUG_EVENTS or {}).get(o.node_id, {}))
    out.put(("ok", WorkerResult(outcomes, rss, cpu, len(nodes))))


async def _console_side(plan: Any, spec: FleetSpec, barrier: Any, t0: Any,
                        procs: list[Any]) -> tuple[Any, float]:
    console = start_console(plan, spec)
    await console.start()
    # Wait until every worker's agents are up, then start every recovery at once.
    await asyncio.to_thread(barrier.wait)
    t0.value = time.monotonic()
    return console, sum(os.times()[:2])


def run_fleet(root: Path, spec: FleetSpec, workers: int, timeout: float) -> dict[str, Any]:
    """One fleet run; returns its raw figures."""
    import pickle

    rng = random.Random(spec.seed * 131 + spec.recipients)
    plan = prepare(root, spec, isolated_network(rng))
    with open(root / "nodes.pickle", "wb") as f:
        pickle.dump(plan.nodes, f)
    ctx = mp.get_context("spawn")
    indices = list(range(len(plan.nodes)))
    groups = [indices[w::workers] for w in range(workers) if indices[w::workers]]
    barrier = ctx.Barrier(len(groups) + 1)
    finished = ctx.Barrier(len(groups))  # workers stop their agents only together
    t0 = ctx.Value("d", 0.0)
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker,
                         args=(str(root), spec, g, barrier, finished, timeout, out))
             for g in groups]
    wall0 = time.monotonic()
    for p in procs:
        p.start()

    async def main() -> tuple[list[WorkerResult], int, float, float]:
        console, cpu0 = await _console_side(plan, spec, barrier, t0, procs)
        try:
            results: list[WorkerResult] = []
            for _ in procs:
                status, value = await asyncio.to_thread(out.get, True, timeout + 120)
                if status != "ok":
                    raise SystemExit(f"N={spec.recipients}: a worker failed: {value}")
                results.append(value)
            egress = console.service.server.stats.image_bytes
            return results, egress, sum(os.times()[:2]) - cpu0, time.monotonic()
        finally:
            await console.stop()

    results, egress, console_cpu, ended = asyncio.run(main())
    for p in procs:
        p.join(30)
    wall = ended - float(t0.value)
    outcomes = [o for r in results for o in r.outcomes]
    bad = [(o.node_id, o.reason) for o in outcomes if not o.ok or not o.flash_ok]
    if bad:
        raise SystemExit(f"N={spec.recipients}: {len(bad)} recipients failed: {bad[:3]}")
    nodes = sum(r.nodes for r in results)
    dump = os.environ.get("FLEET_DUMP")
    if dump:  # per-node outcomes, for looking into a run
        Path(f"{dump}-{spec.recipients}.json").write_text(json.dumps(
            [{"node": o.node_id, "staged": o.staged_s, "booted": o.booted_s,
              "donors": o.donors, "dropped": o.dropped, "sessions": o.sessions,
              "chokes": o.chokes, "released": list(o.released), "events": o.events}
             for o in outcomes], indent=1))
    return {
        "staged": [o.staged_s for o in outcomes if o.staged_s is not None],
        "booted": [o.booted_s for o in outcomes if o.booted_s is not None],
        "console_egress_images": egress / spec.image_size,
        "refetched_chunks": sum(o.refetched_chunks for o in outcomes),
        "rss_mib_per_node": max(r.rss_mib / r.nodes for r in results),
        "cpu_busy_pct": 100.0 * (sum(r.cpu_s for r in results) + console_cpu)
        / (max(wall, 1e-3) * (os.cpu_count() or 1)),
        "nodes": nodes,
        "wall_s": time.monotonic() - wall0,
    }


def _figures(n: int, mode: str, raw: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    staged, booted = sorted(raw["staged"]), sorted(raw["booted"])
    ref = base or raw
    ref_staged, ref_booted = max(ref["staged"]), max(ref["booted"])
    return {
        "n": n, "mode": mode,
        "slowest_staged_s": round(staged[-1], 3), "median_staged_s": round(
            statistics.median(staged), 3),
        "slowest_booted_s": round(booted[-1], 3), "median_booted_s": round(
            statistics.median(booted), 3),
        "slowest_staged_ratio": round(staged[-1] / ref_staged, 3),
        "median_staged_ratio": round(statistics.median(staged) / ref_staged, 3),
        "slowest_booted_ratio": round(booted[-1] / ref_booted, 3),
        "median_booted_ratio": round(statistics.median(booted) / ref_booted, 3),
        "console_egress_images": round(raw["console_egress_images"], 3),
        "refetched_chunks": raw["refetched_chunks"],
        "rss_mib_per_node": round(raw["rss_mib_per_node"], 2),
        "cpu_busy_pct": round(raw["cpu_busy_pct"], 1),
    }


def _plot(runs: list[dict[str, Any]], path: Path, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    swarm = [r for r in runs if r["mode"] == "swarm"]
    ax.plot([r["n"] for r in swarm], [r["slowest_booted_s"] for r in swarm], "o-",
            label="swarm: slowest booted")
    ax.plot([r["n"] for r in swarm], [r["median_staged_s"] for r in swarm], "s--",
            label="swarm: median staged")
    base = [r for r in runs if r["mode"] == "console-only"]
    if base:
        ax.plot([r["n"] for r in base], [r["slowest_booted_s"] for r in base], "x",
                markersize=12, color="red", label="console only: slowest booted")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("simultaneous recipients N")
    ax.set_ylabel("seconds (scaled run)")
    ax.set_title("fwrescue fleet recovery: time vs N")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.text(0.01, 0.01, note, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--scale", type=float, default=0.01,
                        help="image and link scale against 32 MiB at 100 Mb/s")
    parser.add_argument("--chunk-kib", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--healthy", type=int, default=1, help="healthy peers per fleet")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, default=Path("docs/bench_fleet.png"))
    args = parser.parse_args()
    if not 0 < args.scale <= 1:
        parser.error("--scale must be in (0, 1]")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    chunk = args.chunk_kib * 1024
    image = max(chunk, int(REAL_IMAGE * args.scale) // chunk * chunk)
    link = int(REAL_LINK_BPS * args.scale)
    base_spec = FleetSpec(recipients=1, healthy=args.healthy, image_size=image,
                          chunk_size=chunk, link_bps=link, timing_scale=1.0, seed=args.seed)
    note = (f"scaled x{args.scale:g}: image {image / 1024:.0f} KiB ({REAL_IMAGE >> 20} MiB real), "
            f"link {link * 8 / 1e6:.2f} Mb/s ({REAL_LINK_BPS * 8 / 1e6:.0f} Mb/s real), chunks "
            f"{args.chunk_kib} KiB, {args.healthy} healthy peer(s) + console, "
            f"{args.workers} worker processes on {os.cpu_count()} cores")
    print(note)
    print(f"{'N':>4} {'mode':>12} {'slowest staged':>15} {'median staged':>14} "
          f"{'slowest booted':>15} {'console egress':>15} {'refetched':>9} "
          f"{'RSS MiB/node':>12} {'CPU busy':>8}")
    runs: list[dict[str, Any]] = []
    base: dict[str, Any] | None = None
    plan_runs = [(n, False) for n in args.sizes]
    if not args.no_baseline:
        plan_runs.append((max(args.sizes), True))
    with tempfile.TemporaryDirectory() as tmp:
        for i, (n, console_only) in enumerate(plan_runs):
            spec = replace(base_spec, recipients=n, console_only=console_only,
                           seed=args.seed + i)
            transfer = image / link
            timeout = 120 + transfer * (n * 1.5 if console_only else max(20, n))
            raw = run_fleet(Path(tmp) / f"fleet-{i}", spec, args.workers, timeout)
            if base is None:
                base = raw
            mode = "console-only" if console_only else "swarm"
            fig = _figures(n, mode, raw, base)
            runs.append(fig)
            print(f"{n:>4} {mode:>12} {fig['slowest_staged_s']:>8.2f}s"
                  f" {fig['slowest_staged_ratio']:>5.2f}x"
                  f" {fig['median_staged_s']:>7.2f}s {fig['median_staged_ratio']:>5.2f}x"
                  f" {fig['slowest_booted_s']:>8.2f}s {fig['slowest_booted_ratio']:>5.2f}x"
                  f" {fig['console_egress_images']:>13.2f}x {fig['refetched_chunks']:>9}"
                  f" {fig['rss_mib_per_node']:>12.2f} {fig['cpu_busy_pct']:>7.0f}%",
                  flush=True)
    swarm_top = next((r for r in reversed(runs) if r["mode"] == "swarm"
                      and r["n"] == max(args.sizes)), None)
    only = next((r for r in runs if r["mode"] == "console-only"), None)
    if swarm_top and only:
        print(f"console-only / swarm at N={only['n']}: slowest booted "
              f"{only['slowest_booted_s'] / swarm_top['slowest_booted_s']:.1f}x slower")
    _plot(runs, args.plot, note)
    print(f"plot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"scale": args.scale, "note": note, "runs": runs},
                                        indent=2))
        print(f"json: {args.json}")


if __name__ == "__main__":
    sys.exit(main())
