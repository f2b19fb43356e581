"""Reset to On onto flash that does not verify: 202 + a Task instead of a request held for
the whole recovery; DELETE on that Task cancels it at a safe point. Real agents on
127.0.0.1 (Redfish over plain HTTP), a real peer donor."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fwrescue.agent import Agent
from fwrescue.config import RedfishSettings, TimerSettings
from fwrescue.sim.fleet import FleetPlan, NodeSpec, build_fleet, corrupt_node, isolated_network

pytestmark = pytest.mark.slow

ADMIN, ADMIN_PW = "admin", "admin-password-1"
TASKS = "/redfish/v1/TaskService/Tasks"
WAIT_S = 60.0  # bounds waits only; a 128 KiB recovery on loopback takes well under 1 s
MAX_POLLS = 600


def fleet(tmp_path: Path) -> FleetPlan:
    plan = build_fleet(
        tmp_path / "fleet", nodes=2, boards=1, image_size=128 * 1024, network=isolated_network(),
        timers=TimerSettings(startup_jitter=0.05, offer_window=0.2, accept_timeout=1.0,
                             backoff_initial=1.0, backoff_max=4.0),
        redfish=RedfishSettings(enabled=True, tls=False,
                                users=((ADMIN, ADMIN_PW, "Administrator"),)))
    corrupt_node(plan.nodes[0])
    return plan


@contextlib.asynccontextmanager
async def running(node: NodeSpec, *, startup_checks: bool) -> AsyncIterator[Agent]:
    agent = Agent(node.config)
    await agent.start(run_startup_checks=startup_checks)
    try:
        yield agent
    finally:
        await agent.stop()


@contextlib.asynccontextmanager
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    token = base64.b64encode(f"{ADMIN}:{ADMIN_PW}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"},
                                     timeout=aiohttp.ClientTimeout(total=WAIT_S)) as s:
        yield s


async def reset_on(s: aiohttp.ClientSession, agent: Agent, node: NodeSpec) -> tuple[int, str]:
    url = f"{agent.redfish_url}/redfish/v1/Systems/{node.node_id}/Actions/ComputerSystem.Reset"
    async with s.post(url, json={"ResetType": "On"}) as resp:
        return resp.status, resp.headers.get("Location", "")


async def follow(s: aiohttp.ClientSession, agent: Agent, monitor: str) -> dict[str, Any]:
    for _ in range(MAX_POLLS):
        async with s.get(f"{agent.redfish_url}{monitor}") as resp:
            body: dict[str, Any] = await resp.json(content_type=None)
            if resp.status == 200:
                return body
            assert resp.status == 202, body
        await asyncio.sleep(0.1)
    raise AssertionError("the task never finished")


async def test_reset_on_unverified_flash_answers_202_and_the_task_recovers_then_boots(
        tmp_path: Path) -> None:
    plan = fleet(tmp_path)
    sick, peer = plan.nodes
    async with running(peer, startup_checks=False), \
            running(sick, startup_checks=False) as agent, http() as s:
        assert not (await agent.targets["bios"].engine.check_integrity()).ok
        status, monitor = await reset_on(s, agent, sick)
        assert status == 202 and monitor.startswith("/redfish/v1/TaskService/TaskMonitors/")
        task = await follow(s, agent, monitor)
        assert (task["TaskState"], task["TaskStatus"]) == ("Completed", "OK"), task
        assert task["Oem"]["Fwrescue"]["Kind"] == "recovery"
        assert (await agent.targets["bios"].engine.check_integrity()).ok
        assert agent.booted["bios"] is True
        # onto verified flash the reset is answered when done, without a Task
        async with s.post(f"{agent.redfish_url}/redfish/v1/Systems/{sick.node_id}/Actions/"
                          "ComputerSystem.Reset", json={"ResetType": "ForceOff"}) as resp:
            assert resp.status == 204
        assert await reset_on(s, agent, sick) == (204, "")


async def test_delete_on_the_task_cancels_the_recovery_before_anything_is_written(
        tmp_path: Path) -> None:
    plan = fleet(tmp_path)
    sick = plan.nodes[0]  # no donor runs: the recovery keeps soliciting until cancelled
    before = sick.flash_path.read_bytes()
    async with running(sick, startup_checks=False) as agent, http() as s:
        status, monitor = await reset_on(s, agent, sick)
        assert status == 202
        task_uri = monitor.replace("TaskMonitors", "Tasks")
        for _ in range(MAX_POLLS):  # until the engine reached the network search
            current = agent.targets["bios"].engine.current
            if current is not None and current.phase.value == "soliciting":
                break
            await asyncio.sleep(0.05)
        async with s.delete(f"{agent.redfish_url}{task_uri}") as resp:
            assert resp.status == 202, await resp.text()
        task = await follow(s, agent, monitor)
        assert task["TaskState"] == "Cancelled", task
        assert "TaskEvent.1.0.TaskCancelled" in {m["MessageId"] for m in task["Messages"]}
        # a finished task cannot be cancelled again
        async with s.delete(f"{agent.redfish_url}{task_uri}") as resp:
            assert resp.status == 409
        async with s.delete(f"{agent.redfish_url}{TASKS}/rec-00000000") as resp:
            assert resp.status == 404
    assert sick.flash_path.read_bytes() == before
    assert agent.booted["bios"] is False
