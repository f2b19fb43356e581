"""A raised fleet floor, delivered by the console as a signed policy, reaches every agent;
an agent then refuses an image below it over Redfish and from a donor; an older policy
replayed never lowers it; bad policies are refused with a specific reason, changing nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fwrescue.agent import Agent
from fwrescue.console import records
from fwrescue.redfish.client import RedfishClient, RedfishClientError
from fwrescue.redfish.routes_policy import SET_POLICY_URI
from fwrescue.sim.fleet import FleetPlan
from fwrescue.trust.keys import SigningKey, generate_keypair
from fwrescue.trust.policy import TargetPolicy, sign_policy
from tests.fakes.rogue import rolled_back
from tests.integration.console_kit import (
    AGENT_PASSWORD,
    Fleet,
    all_reachable,
    plan_fleet,
    running_fleet,
    wait_for,
)


def policy(plan: FleetPlan, version: int, floor: int, baseline: str | None = None,
           board: str = "board-a", key: SigningKey | None = None,
           target: str = "bios") -> bytes:
    return sign_policy(key or plan.signing_key, board=board, version=version, issued_at=1,
                       targets={target: TargetPolicy(baseline, floor)})


async def post_policy(agent: Agent, raw: bytes) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(
            f"{agent.redfish_url}{SET_POLICY_URI}", json={"Policy": raw.decode()},
            headers={"Authorization": aiohttp.encode_basic_auth("admin", AGENT_PASSWORD)}
    ) as resp:
        return resp.status, await resp.json()


def reason_of(body: dict[str, Any]) -> str:
    return str(body["error"]["@Message.ExtendedInfo"][0]["Oem"]["Fwrescue"]["Reason"])


async def roll_out(fleet: Fleet, raw: bytes, *, fraction: float = 1.0,
                   halt_after: int = 1) -> int:
    desk = fleet.console.desk
    parsed = await desk.upload(raw, "test")
    return await desk.start_rollout(parsed.board, parsed.version, fraction, halt_after)


async def rollout_state(fleet: Fleet, rollout_id: int) -> dict[str, Any]:
    overview = await fleet.console.desk.overview()
    return next(r for r in overview["rollouts"] if r["id"] == rollout_id)


async def test_fleet_floor_reaches_every_agent_and_is_enforced(tmp_path: Path) -> None:
    plan = plan_fleet(tmp_path / "fleet", nodes=3)
    # node-01 and node-03 run 1.0.0 (security version 1), node-02 runs 1.1.0 (2)
    old = plan.releases["board-a"][0]
    assert plan.nodes[0].release == old
    async with running_fleet(plan) as fleet:
        await wait_for(lambda: all_reachable(fleet), 20, "every agent in the inventory")
        agents = list(fleet.agents.values())
        assert {a.verifier.floor("bios") for a in agents} == {1, 2}
        v1, v2 = policy(plan, 1, floor=1), policy(plan, 2, floor=2)
        await fleet.console.desk.upload(v1, "test")
        rollout = await roll_out(fleet, v2)
        await wait_for(lambda: _completed(fleet, rollout), 20, "the rollout to complete")
        assert [a.verifier.floor("bios") for a in agents] == [2, 2, 2]
        rows = await fleet.console.db.read(records.fleet)
        assert {(n["policy_version"], n["targets"][0]["floor"]) for n in rows["nodes"]} == {
            (2, 2)}

        # over Redfish: the installed 1.0.0 package is now below the floor
        first = agents[0]
        async with RedfishClient(str(first.redfish_url), "admin", AGENT_PASSWORD) as rf:
            service = await rf.get("/redfish/v1/UpdateService")  # the action is advertised
            assert service["Actions"]["Oem"]["#Fwrescue.SetFleetPolicy"]["target"] == (
                SET_POLICY_URI)
            with pytest.raises(RedfishClientError) as refused:
                await rf.push_update(old.package, None, True, "Immediate")
        assert refused.value.status == 400
        assert "Update.1.3.UpdateSkippedVersionTooLow" in refused.value.message_id

        # an older policy replayed, and the same one again: refused, floor unchanged
        for raw in (v1, v2):
            status, body = await post_policy(first, raw)
            assert (status, reason_of(body)) == (400, "not-newer")
        # bad documents: each with its specific reason, nothing changes
        rogue = SigningKey.load(generate_keypair(tmp_path / "rogue", "rogue")[0])
        unsigned = json.dumps({"policy": json.loads(policy(plan, 9, 0))["policy"]}).encode()
        cases = {"unsigned": unsigned, "unknown-key": policy(plan, 9, 0, key=rogue),
                 "unknown-board": policy(plan, 9, 0, board="board-z"),
                 "unknown-target": policy(plan, 9, 0, target="cpld")}
        for reason, raw in cases.items():
            status, body = await post_policy(first, raw)
            assert (status, reason_of(body)) == (400, reason), body
        assert first.fleet_policy.version == 2 and first.verifier.floor("bios") == 2
        # a newer policy with a lower floor is taken, and the floor still does not go down
        status, body = await post_policy(first, policy(plan, 3, floor=1))
        assert status == 200 and body["Version"] == 3
        assert first.verifier.floor("bios") == 2 and body["Targets"]["bios"]["Floor"] == 2

        # from a donor: a genuinely signed 1.0.0, offered first, is declined for the floor
        spec = plan.nodes[0]  # the flash only: the agent runs (its 1.0.0 copy is below the floor)
        with open(spec.flash_path, "r+b") as f:
            f.seek(old.signed.manifest.size - 4096)
            f.write(b"\0" * 4096)
        donor = rolled_back(tmp_path / "rogue-donor", donor_id="old-donor",
                            network=plan.network, signed=old.signed, image=old.image)
        await donor.start()
        try:
            result = await asyncio.wait_for(first.recover("bios", "test: corrupted"), 60)
            transcript = first.engine("bios").transcript()
        finally:
            await donor.stop()
        declined = {e["donor"]: e["reason"] for e in transcript if e["event"] == "declined"}
        assert "anti-rollback floor" in declined.get("old-donor", ""), transcript
        assert result.ok and result.version_after == "1.1.0"

    # a restarted agent keeps the floor and the policy in force
    again = Agent(plan.nodes[0].config)
    await again.start(run_startup_checks=False)
    try:
        assert again.verifier.floor("bios") == 2 and again.fleet_policy.version == 3
        status, body = await post_policy(again, v1)
        assert (status, reason_of(body)) == (400, "not-newer")
    finally:
        await again.stop()


async def _completed(fleet: Fleet, rollout_id: int) -> bool:
    state = await rollout_state(fleet, rollout_id)
    assert state["state"] in ("running", "completed"), state
    return bool(state["state"] == "completed")
