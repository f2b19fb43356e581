"""``fwrescue agent --config FILE``: run the BMC agent (recipient + donor) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from fwrescue.agent.lifecycle import wait_for_termination

__all__ = ["register_agent_commands"]


def register_agent_commands(subparsers: Any) -> None:
    agent = subparsers.add_parser("agent", help="run the BMC agent (recipient + donor)")
    agent.add_argument("--config", type=Path, required=True, help="agent TOML file")
    agent.set_defaults(func=_cmd_agent)


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
