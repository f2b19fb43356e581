"""``fwrescue donor --repo DIR --trust KEYS …``: run the repository donor alone (the console's
donor without the rest of the console) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from fwrescue.agent.lifecycle import wait_for_termination

__all__ = ["register_donor_commands"]


def register_donor_commands(subparsers: Any) -> None:
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


def _cmd_donor(args: argparse.Namespace) -> int:
    from fwrescue.config import parse_network
    from fwrescue.donor.repository import ConsoleDonor

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
