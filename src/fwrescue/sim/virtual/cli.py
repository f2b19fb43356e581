"""``fwrescue sim``: the virtual-time fleet simulator from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from fwrescue.errors import ConfigError

from .params import SimParams
from .report import format_table, run_series, write_json

__all__ = ["register_sim_commands"]


def register_sim_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "sim", help="simulate a fleet recovering together, in virtual time",
        description="Runs the real sans-IO negotiation and swarm cores for N nodes over a "
                    "modelled network in virtual time; prints N=1 and N=--nodes figures.")
    p.add_argument("--nodes", type=int, default=10_000, help="recipients (default 10000)")
    p.add_argument("--sizes", default=None,
                   help="comma-separated N to run (default: 1,NODES)")
    p.add_argument("--boards", type=int, default=1)
    p.add_argument("--image-mib", type=float, default=16.0)
    p.add_argument("--chunk-kib", type=int, default=256)
    p.add_argument("--link-mbps", type=float, default=100.0)
    p.add_argument("--console-mbps", type=float, default=1000.0)
    p.add_argument("--console-capacity", type=int, default=2)
    p.add_argument("--latency-ms", type=float, default=0.5)
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--donor-death-rate", type=float, default=0.0)
    p.add_argument("--power-loss-rate", type=float, default=0.0)
    p.add_argument("--segment-size", type=int, default=32)
    p.add_argument("--broker-fanout", type=int, default=4)
    p.add_argument("--healthy-peers", type=int, default=0, help="healthy peers per board")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--console-only", action="store_true",
                   help="also run the console-only baseline (no peer donates) at the largest N")
    p.add_argument("--json", type=Path, default=None, metavar="FILE")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes else
             sorted({1, args.nodes}))
    if not sizes or any(n < 1 for n in sizes):
        raise ConfigError("--sizes must list positive node counts")
    params = SimParams(
        nodes=max(sizes), boards=args.boards, image_bytes=int(args.image_mib * 2**20),
        chunk_bytes=args.chunk_kib * 1024, link_bps=args.link_mbps * 1e6 / 8,
        console_bps=args.console_mbps * 1e6 / 8, console_capacity=args.console_capacity,
        latency_s=args.latency_ms / 1e3, loss=args.loss,
        donor_death_rate=args.donor_death_rate, power_loss_rate=args.power_loss_rate,
        segment_size=args.segment_size, broker_fanout=args.broker_fanout, seed=args.seed)
    runs = run_series(params, sizes, console_only=args.console_only,
                      healthy_per_board=args.healthy_peers)
    print(format_table(runs, params))
    if args.json is not None:
        write_json(args.json, runs, params)
    return 0
