"""CLI subcommands that run fwrescue: ``agent``, ``donor`` (the console) and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from fwrescue.lifecycle import wait_for_termination

__all__ = ["register_run_commands"]


def register_run_commands(subparsers: Any) -> None:
    agent = subparsers.add_parser("agent", help="run the BMC agent (recipient + donor)")
    agent.add_argument("--config", type=Path, required=True, help="agent TOML file")
    agent.set_defaults(func=_cmd_agent)

    donor = subparsers.add_parser("donor", help="run the management-console donor")
    donor.add_argument("--repo", type=Path, required=True, help="folder of *.fwpkg packages")
    donor.add_argument("--trust", type=Path, required=True, action="append",
                       help="trusted public key file or folder (repeatable)")
    donor.add_argument("--state", type=Path, default=Path("console-state"))
    donor.add_argument("--group", default="239.255.77.77")
    donor.add_argument("--port", type=int, default=17700)
    donor.add_argument("--interface", default="127.0.0.1",
                       help="management-LAN address to join the multicast group on")
    donor.add_argument("--transfer-host", default=None,
                       help="address the image server listens on and offers announce "
                            "(default: --interface)")
    donor.add_argument("--transfer-port", type=int, default=0)
    donor.add_argument("--fleet-key-file", type=Path, default=None,
                       help="HMAC-authenticate datagrams with this fleet key")
    donor.add_argument("--id", default="console")
    donor.add_argument("--transport-config", type=Path, default=None,
                       help="a TOML file whose [transport] table puts the console on NATS "
                            "(e.g. a site's leaf node); see docs/operations.md")
    from fwrescue.trust.fleet_ca_cli import add_transfer_tls_arguments

    add_transfer_tls_arguments(donor)
    donor.set_defaults(func=_cmd_donor)

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


def _cmd_agent(args: argparse.Namespace) -> int:
    from fwrescue.agent import Agent
    from fwrescue.config import load_config

    config = load_config(args.config)

    async def run() -> None:
        agent = Agent(config)
        await agent.start()
        print(f"agent {config.node_id} running; donating at {agent.transfer_url}", flush=True)
        try:
            await wait_for_termination()
        finally:
            await agent.stop()

    asyncio.run(run())
    return 0


def _cmd_donor(args: argparse.Namespace) -> int:
    from fwrescue.config import parse_network
    from fwrescue.console.donor import ConsoleDonor

    settings = {
        "group": args.group, "port": args.port, "interface": args.interface,
        "transfer_host": args.transfer_host or args.interface,
        "transfer_port": args.transfer_port,
        "fleet_key_file": str(args.fleet_key_file) if args.fleet_key_file else None,
    }
    import dataclasses

    from fwrescue.trust.fleet_ca_cli import transfer_tls_from_args

    network = parse_network({k: v for k, v in settings.items() if v is not None}, Path.cwd())
    network = dataclasses.replace(network, tls=transfer_tls_from_args(args, args.id))
    if args.transport_config is not None:
        from fwrescue.config import parse_transport_file

        network = dataclasses.replace(network,
                                      transport=parse_transport_file(args.transport_config))

    async def run() -> None:
        donor = ConsoleDonor(repo=args.repo, trust=args.trust, state_dir=args.state,
                             network=network, donor_id=args.id)
        await donor.start()
        print(f"console donor {args.id} serving {donor.image_count} packages at "
              f"{donor.transfer_url}", flush=True)
        try:
            await wait_for_termination()
        finally:
            await donor.stop()

    asyncio.run(run())
    return 0


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
