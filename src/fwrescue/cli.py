"""The ``fwrescue`` command: one entry point, a subcommand per job.

Each subcommand module registers its own parser (``register_*_commands``); a
handler returns the process exit status. Bad input never prints a traceback:
a :class:`~fwrescue.errors.FwRescueError` becomes ``error: …`` and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fwrescue import __version__
from fwrescue.errors import FwRescueError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fwrescue", description="Self-healing server firmware across a fleet.")
    parser.add_argument("--version", action="version", version=f"fwrescue {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    # One line per package: each command line lives beside what it drives.
    from fwrescue.agent.cli import register_agent_commands
    from fwrescue.console.cli import register_console_commands
    from fwrescue.donor.cli import register_donor_commands
    from fwrescue.image.cli import register_image_commands
    from fwrescue.image.policy_cli import register_policy_commands
    from fwrescue.redfish.cli import register_redfish_commands
    from fwrescue.sim.cli import register_demo_commands
    from fwrescue.sim.virtual.cli import register_sim_commands
    from fwrescue.trust.fleet_ca_cli import register_fleet_ca_commands

    register_agent_commands(subparsers)
    register_donor_commands(subparsers)
    register_demo_commands(subparsers)
    register_image_commands(subparsers)
    register_redfish_commands(subparsers)
    register_policy_commands(subparsers)
    register_console_commands(subparsers)
    register_sim_commands(subparsers)
    register_fleet_ca_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        status: int = args.func(args)
        return status
    except FwRescueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
