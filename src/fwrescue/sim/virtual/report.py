"""Runs at several N, the figures per run as ratios to N = 1, a table and JSON."""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fleet import Fleet
from .params import SimParams

__all__ = ["LEAVES_OUT", "RunFigures", "format_table", "run_once", "run_series", "write_json"]

LEAVES_OUT = (
    "the model leaves out: TCP dynamics (a transfer is a fluid flow at an equal share of "
    "each end's link, no slow start, no loss on HTTP), switch and uplink contention "
    "beyond each node's own link, CPU and storage time on the BMC, chunk verification "
    "cost and bad chunks, the broker's own delay and capacity (a SOLICIT reaches the "
    "sender's segment, the console and a few random donors of the board), and host "
    "boot variance (fixed host_boot_s)"
)


@dataclass(frozen=True, kw_only=True)
class RunFigures:
    """One run's figures; times in virtual seconds from power-on."""

    n: int
    mode: str  # "swarm" | "console-only"
    slowest_staged_s: float
    median_staged_s: float
    slowest_booted_s: float
    median_booted_s: float
    unfinished: int  # recipients not booted when the run stopped
    console_egress_images: float
    refetched_chunks: int
    crashes: int  # BMC deaths, power losses included
    power_losses: int
    datagrams: int
    events: int
    wall_s: float

    def ratios(self, base: RunFigures) -> dict[str, float]:
        return {
            "slowest_staged_ratio": self.slowest_staged_s / base.slowest_staged_s,
            "median_staged_ratio": self.median_staged_s / base.median_staged_s,
            "slowest_booted_ratio": self.slowest_booted_s / base.slowest_booted_s,
        }


def run_once(params: SimParams, *, healthy_per_board: int = 0) -> RunFigures:
    """Build the fleet, run it, and collect its figures."""
    started = time.perf_counter()
    fleet = Fleet(params, healthy_per_board=healthy_per_board)
    fleet.run()
    horizon = fleet.loop.now
    staged = [r.staged_at if r.staged_at is not None else horizon for r in fleet.recipients]
    booted = [r.booted_at if r.booted_at is not None else horizon for r in fleet.recipients]
    refetched = sum(r.refetched + (r.scheduler.refetched if r.scheduler else 0)
                    for r in fleet.recipients)
    return RunFigures(
        n=params.nodes, mode="swarm" if params.swarm else "console-only",
        slowest_staged_s=max(staged), median_staged_s=statistics.median(staged),
        slowest_booted_s=max(booted), median_booted_s=statistics.median(booted),
        unfinished=sum(r.booted_at is None for r in fleet.recipients),
        console_egress_images=fleet.console.link.sent_bytes
        / (params.image_bytes * params.boards),
        refetched_chunks=refetched,
        crashes=sum(r.crashes for r in fleet.recipients),
        power_losses=sum(r.power_losses for r in fleet.recipients),
        datagrams=fleet.net.datagrams_sent, events=fleet.loop.events_run,
        wall_s=time.perf_counter() - started)


def run_series(params: SimParams, sizes: Sequence[int], *, console_only: bool = False,
               healthy_per_board: int = 0) -> list[RunFigures]:
    """Swarm runs at every N in ``sizes`` (the first is the baseline), then a
    console-only run at the largest N if asked."""
    runs = [run_once(dataclasses.replace(params, nodes=n), healthy_per_board=healthy_per_board)
            for n in sizes]
    if console_only:
        runs.append(run_once(dataclasses.replace(params, nodes=max(sizes), swarm=False),
                             healthy_per_board=healthy_per_board))
    return runs


def _row(run: RunFigures, base: RunFigures) -> dict[str, Any]:
    row: dict[str, Any] = dataclasses.asdict(run)
    row.update(run.ratios(base))
    return row


def format_table(runs: Sequence[RunFigures], params: SimParams) -> str:
    """The printed report: the model, one line per run, what the model leaves out."""
    base = runs[0]
    head = (f"fwrescue sim: image {params.image_bytes / 2**20:g} MiB in {params.chunk_count} "
            f"chunks of {params.chunk_bytes // 1024} KiB, {params.boards} board(s), links "
            f"{params.link_bps * 8 / 1e6:g} Mb/s (console {params.console_bps * 8 / 1e6:g} "
            f"Mb/s, capacity {params.console_capacity}), latency "
            f"{params.latency_s * 1e3:g} ms, loss {params.loss:g}, donor deaths "
            f"{params.donor_death_rate:g}, power loss {params.power_loss_rate:g}, segments "
            f"of {params.segment_size}, broker fan-out {params.broker_fanout}, flash "
            f"{params.flash_seconds():.1f} s ({params.flash.name}), host boot "
            f"{params.host_boot_s:g} s, seed {params.seed}")
    cols = (f"{'mode':<12} {'N':>6} {'staged max':>10} {'ratio':>6} {'median':>7} "
            f"{'ratio':>6} {'booted max':>10} {'ratio':>6} {'console':>8} {'refetch':>8} "
            f"{'crash':>6} {'unfin':>5} {'sim s':>7}")
    lines = [head, "", cols]
    for run in runs:
        r = run.ratios(base)
        lines.append(
            f"{run.mode:<12} {run.n:>6} {run.slowest_staged_s:>9.2f}s "
            f"{r['slowest_staged_ratio']:>5.2f}x {run.median_staged_s:>6.2f}s "
            f"{r['median_staged_ratio']:>5.2f}x {run.slowest_booted_s:>9.2f}s "
            f"{r['slowest_booted_ratio']:>5.2f}x {run.console_egress_images:>7.2f}x "
            f"{run.refetched_chunks:>8} {run.crashes:>6} "
            f"{run.unfinished:>5} {run.wall_s:>7.1f}")
    lines += ["", "ratios are to the first run; console = console egress as a multiple of "
              "the image (per board); refetch = chunk requests beyond the first; crash = "
              "BMC deaths, power losses included; sim s = wall-clock seconds the run took "
              "(one core)",
              LEAVES_OUT]
    return "\n".join(lines)


def write_json(path: Path, runs: Sequence[RunFigures], params: SimParams) -> None:
    """``{"runs": [...], "params": {...}, "leaves_out": "..."}``."""
    base = runs[0]
    doc = {"runs": [_row(run, base) for run in runs],
           "params": {k: v for k, v in dataclasses.asdict(params).items()
                      if isinstance(v, int | float | str | bool)},
           "leaves_out": LEAVES_OUT}
    path.write_text(json.dumps(doc, indent=2) + "\n")
