"""A failed baseline update is retried with a bounded exponential backoff, visible in the
agent's Redfish, and succeeds once the cause is gone.

node-01 is told (signed policy v1) to reach board-a 1.2.0, a genuinely signed release no
donor has yet: each attempt fails (no offer). The agent retries after 0.5 s, then 1 s (the
cap); its FleetPolicy resource shows the attempts, the last failure and the next attempt;
once a donor has the release, the next retry installs it and the retry record is gone."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fwrescue.donor.repository import ConsoleDonor
from fwrescue.image.package import build_package
from fwrescue.redfish.client import RedfishClient
from fwrescue.redfish.routes_policy import FLEET_POLICY_URI
from fwrescue.sim.fleet import FleetPlan
from tests.integration.console_kit import AGENT_PASSWORD, plan_fleet, running_fleet, wait_for
from tests.integration.test_console_policy import policy, post_policy


def _new_release(plan: FleetPlan, repo: Path) -> None:
    """A genuinely signed board-a 1.2.0 in ``repo`` (not the console's: no donor has it)."""
    repo.mkdir(parents=True)
    image = plan.root / "releases" / "board-a-1.2.0.bin"
    data = bytearray(plan.newest("board-a").image.read_bytes())
    data[:32] = b"fwrescue board-a 1.2.0          "
    image.write_bytes(bytes(data))
    build_package(image, repo / "board-a-1.2.0.fwpkg", key=plan.signing_key, target="bios",
                  machine_names=["board-a"], version="1.2.0", security_version=3)


async def test_failed_baseline_update_is_retried_with_bounded_backoff(tmp_path: Path) -> None:
    plan = plan_fleet(tmp_path / "fleet", nodes=2)
    plan.nodes = [dataclasses.replace(spec, config=dataclasses.replace(
        spec.config, baseline_retry_initial_s=0.5, baseline_retry_max_s=1.0,
        timers=dataclasses.replace(spec.config.timers, max_solicits=3)))
        for spec in plan.nodes]
    _new_release(plan, tmp_path / "later-repo")

    async with running_fleet(plan) as fleet:
        agent = fleet.agents["node-01"]
        status, body = await post_policy(agent, policy(plan, 1, floor=0, baseline="1.2.0"))
        assert status == 200, body
        seen: dict[int, float] = {}

        def retries() -> bool:
            retry = agent.fleet_policy.retries.get("bios")
            if retry is not None:
                seen[retry.failures] = retry.delay_s
            return len(seen) >= 2

        await wait_for(retries, 60, "two failed attempts")
        assert {n: seen[n] for n in (1, 2)} == {1: 0.5, 2: 1.0}
        async with RedfishClient(str(agent.redfish_url), "admin", AGENT_PASSWORD) as rf:
            shown: dict[str, Any] = (await rf.get(FLEET_POLICY_URI))["Targets"]["bios"]
        retry = shown["BaselineRetry"]
        assert retry["Attempts"] >= 2 and retry["RetryInterval"] == "PT1S", shown
        assert retry["LastFailure"] and retry["NextAttempt"], shown
        assert shown["BaselineUpdate"].startswith("failed"), shown
        assert agent.engine("bios").installed_version == "1.0.0"

        # the release is published (a second repository donor): the next retry installs it
        donor = ConsoleDonor(repo=tmp_path / "later-repo", trust=[plan.root / "trust"],
                             state_dir=tmp_path / "later-donor",
                             network=plan.network_for("later"), donor_id="later")
        await donor.start()
        try:
            await wait_for(lambda: agent.fleet_policy.outcomes.get("bios") == (
                "updated to 1.2.0"), 30, "a retry to install 1.2.0")
        finally:
            await donor.stop()
        async with RedfishClient(str(agent.redfish_url), "admin", AGENT_PASSWORD) as rf:
            shown = (await rf.get(FLEET_POLICY_URI))["Targets"]["bios"]
        assert shown["BaselineRetry"] is None and shown["BaselineUpdate"] == (
            "updated to 1.2.0"), shown
        assert agent.engine("bios").installed_version == "1.2.0"
