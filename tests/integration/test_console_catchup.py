"""Nodes that missed a rollout get the policy in force, never a halted rollout's policy.

node-02 is down while board-a's v1 rollout runs (the rollout still completes), node-03 is
discovered only afterwards; a v2 rollout for the board is halted meanwhile. Both late nodes
end with v1 (its floor), none with v2, and v1's delivery list shows them done."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import urlsplit

from fwrescue.agent import Agent
from fwrescue.console.catchup import CATCH_UP_DETAIL
from fwrescue.console.inventory import AgentEndpoint
from fwrescue.console.policy import UNREACHABLE_DETAIL
from tests.integration.console_kit import (
    AGENT_PASSWORD,
    fleet_rows,
    plan_fleet,
    running_fleet,
    wait_for,
)
from tests.integration.test_console_policy import policy, roll_out, rollout_state


async def test_late_and_unreachable_nodes_get_the_completed_policy_not_a_halted_one(
        tmp_path: Path) -> None:
    plan = plan_fleet(tmp_path / "fleet", nodes=3)
    async with running_fleet(plan, poll_s=1.0, watch=lambda n: n != "node-03") as fleet:
        console = fleet.console

        async def seen(ids: set[str], reachable: bool = True) -> bool:
            rows = await fleet_rows(fleet)
            return ids <= set(rows) and all(bool(rows[i]["reachable"]) == reachable
                                            for i in ids)

        await wait_for(lambda: seen({"node-01", "node-02"}), 20, "two agents watched")
        down = fleet.agents["node-02"]
        port = urlsplit(str(down.redfish_url)).port
        assert port is not None
        await down.stop()
        await wait_for(lambda: seen({"node-02"}, reachable=False), 20, "node-02 unreachable")

        v1 = await roll_out(fleet, policy(plan, 1, floor=2))
        done = await wait_for(lambda: _state_is(fleet, v1, "completed"), 20,
                              "v1 to complete although node-02 is down")
        assert {d["node_id"]: (d["state"], d["detail"]) for d in done["deliveries"]} == {
            "node-01": ("done", None), "node-02": ("pending", UNREACHABLE_DETAIL)}

        # a v2 rollout halts (as after failed boots) before the late nodes show up
        await console.desk.stop()
        v2 = await roll_out(fleet, policy(plan, 2, floor=3))
        await console.db.write(lambda c: c.execute(
            "UPDATE rollouts SET state = 'halted', reason = 'halted: test' WHERE id = ?",
            (v2,)))
        console.desk.start()

        config = plan.nodes[1].config
        back = Agent(dataclasses.replace(config, redfish=dataclasses.replace(
            config.redfish, port=port)))
        fleet.agents["node-02"] = back
        await back.start(run_startup_checks=False)
        late = fleet.agents["node-03"]
        console.inventory.add(AgentEndpoint(str(late.redfish_url), "admin", AGENT_PASSWORD))

        state = await wait_for(lambda: _all_done(fleet, v1), 30,
                               "v1 delivered to node-02 and node-03")
        rows = {d["node_id"]: (d["state"], d["detail"]) for d in state["deliveries"]}
        assert rows["node-03"] == ("done", CATCH_UP_DETAIL)
        assert rows["node-02"] == ("done", CATCH_UP_DETAIL)
        for node_id in ("node-02", "node-03"):
            agent = fleet.agents[node_id]
            assert agent.fleet_policy.version == 1, node_id
            assert agent.verifier.floor("bios") == 2, node_id
        halted = await rollout_state(fleet, v2)
        assert halted["state"] == "halted" and halted["deliveries"] == []
        assert {a.fleet_policy.version for a in fleet.agents.values()} == {1}


async def _state_is(fleet: object, rollout_id: int, state: str) -> dict[str, object] | None:
    current = await rollout_state(fleet, rollout_id)  # type: ignore[arg-type]
    return current if current["state"] == state else None


async def _all_done(fleet: object, rollout_id: int) -> dict[str, object] | None:
    current = await rollout_state(fleet, rollout_id)  # type: ignore[arg-type]
    states = {d["node_id"]: d["state"] for d in current["deliveries"]}
    return current if states == dict.fromkeys(("node-01", "node-02", "node-03"),
                                              "done") else None
