"""``fwrescue demo``: a simulated fleet of real agents on loopback recovering corrupted BIOSes."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register_demo_commands"]


def register_demo_commands(subparsers: Any) -> None:
    demo = subparsers.add_parser("demo", help="a simulated fleet recovering corrupted BIOSes")
    demo.add_argument("--nodes", type=int, default=8)
    demo.add_argument("--corrupt", type=int, default=3)
    demo.add_argument("--boards", type=int, default=None,
                      help="distinct boards (default 2, or 1 below 4 nodes so every board "
                           "has a peer to donate)")
    demo.add_argument("--json", type=Path, dest="json_path", help="write the report here")
    demo.add_argument("--hold", action="store_true",
                      help="keep the fleet running after recovery until SIGINT/SIGTERM")
    demo.add_argument("--host", choices=("virtual", "qemu"), default="virtual")
    demo.add_argument("--flash", choices=("file", "flashrom"), default="file")
    demo.add_argument("--policy", default="newest")
    demo.add_argument("--workdir", type=Path, default=Path("demo-out/fleet"))
    demo.add_argument("--timeout", type=float, default=600.0)
    demo.add_argument("--redfish", action="store_true", help="serve Redfish on every node")
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument("--transport", choices=("udp", "nats"), default="udp",
                      help="negotiate by multicast, or over a 3-node nats-server cluster "
                           "the demo starts on loopback")
    demo.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from fwrescue.sim.demo import DemoOptions, run_demo

    if args.boards is None:
        args.boards = 2 if args.nodes >= 4 else 1

    if not (1 <= args.nodes <= 512 and 0 <= args.corrupt <= args.nodes
            and 1 <= args.boards <= 26):
        print("error: need 1 <= --nodes <= 512, 0 <= --corrupt <= --nodes, "
              "1 <= --boards <= 26", file=sys.stderr)
        return 2
    options = DemoOptions(nodes=args.nodes, corrupt=args.corrupt, boards=args.boards,
                          json_path=args.json_path, hold=args.hold, host=args.host,
                          flash=args.flash, policy=args.policy, workdir=args.workdir,
                          timeout=args.timeout, redfish=args.redfish, seed=args.seed,
                          transport=args.transport)
    report = asyncio.run(run_demo(options))
    if args.hold and args.json_path is None:
        print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1
