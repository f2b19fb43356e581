"""Agents announce themselves with Redfish SSDP (DSP0266) on the test's own multicast group;
a console with no configured agents finds and inventories every one."""

from __future__ import annotations

import random
from pathlib import Path

from fwrescue.console.app import DiscoverySettings
from tests.integration.console_kit import (
    AGENT_PASSWORD,
    all_reachable,
    plan_fleet,
    running_fleet,
    wait_for,
)


async def test_console_discovers_announcing_agents(tmp_path: Path) -> None:
    group = f"239.255.{random.randint(1, 254)}.{random.randint(1, 254)}"
    port = random.randint(20000, 60000)
    plan = plan_fleet(tmp_path / "fleet", nodes=2, ssdp=(group, port))
    discovery = DiscoverySettings(group=group, port=port, interface="127.0.0.1",
                                  networks=("127.0.0.0/8",), user="admin",
                                  password=AGENT_PASSWORD)
    async with running_fleet(plan, configured=False, discovery=discovery) as fleet:
        await wait_for(lambda: all_reachable(fleet), 20, "both agents discovered")
        urls = sorted(e.url for e in fleet.console.inventory.endpoints)
        assert urls == sorted(str(a.redfish_url) for a in fleet.agents.values())
