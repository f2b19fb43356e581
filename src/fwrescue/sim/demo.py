"""``fwrescue demo``: a fleet of BMC agents and a console donor recovering corrupted BIOSes.

Everything runs in one process on loopback: real UDP multicast negotiation, real
HTTP transfers, real signatures; flash is a chip file (or flashrom's dummy
programmer) and the host a model (or QEMU + OVMF). Each run uses its own
multicast group and port, so demos and tests can run side by side.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fwrescue import agent_progress as progress
from fwrescue.agent import Agent
from fwrescue.config import NetworkSettings, RedfishSettings, TimerSettings, TransportSettings
from fwrescue.console.app import ConsoleSettings, new_password, start_console
from fwrescue.console.inventory import AgentEndpoint, InventorySettings
from fwrescue.lifecycle import wait_for_termination
from fwrescue.recovery.ports import OperationEvent, OperationState
from fwrescue.sim.display import FleetDisplay, NodeRow
from fwrescue.sim.fleet import FleetPlan, NodeSpec, build_fleet, corrupt_node, isolated_network

__all__ = ["DemoOptions", "run_demo"]


@dataclass(frozen=True)
class DemoOptions:
    nodes: int = 8
    corrupt: int = 3
    boards: int = 2
    workdir: Path = Path("demo-out/fleet")
    json_path: Path | None = None
    hold: bool = False
    host: str = "virtual"  # "virtual" | "qemu"
    flash: str = "file"  # "file" | "flashrom"
    policy: str = "newest"
    image_size: int = 1024 * 1024
    timeout: float = 300.0
    live: bool = True
    redfish: bool = False
    seed: int | None = None
    transport: str = "udp"  # "udp" | "nats": a 3-node nats-server cluster the demo starts


def _corrupted_indices(nodes: int, corrupt: int, boards: int = 1) -> list[int]:
    """Spread the corrupted nodes across the fleet and round-robin across the boards (node
    ``i`` is on board ``i % boards``): pick ``k`` is the first free node at or after
    ``k·nodes/corrupt`` (wrapping) on board ``k % boards``, else the first free one."""
    picked: list[int] = []
    for k in range(corrupt):
        start = (k * nodes) // corrupt
        free = sorted((i for i in range(nodes) if i not in picked),
                      key=lambda i: (i - start) % nodes)
        picked.append(next((i for i in free if i % boards == k % boards), free[0]))
    return sorted(picked)


def _ovmf_code() -> bytes:
    from fwrescue.host.qemu import find_ovmf

    code, _ = find_ovmf()
    return code.read_bytes()


async def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Build, corrupt, recover; return the report (also written to ``json_path``)."""
    if not 0 <= options.corrupt <= options.nodes or options.nodes < 1 or options.boards < 1:
        raise ValueError("need 1 <= nodes, 0 <= corrupt <= nodes, 1 <= boards")
    if options.transport not in ("udp", "nats"):
        raise ValueError("transport must be udp or nats")
    rng = random.Random(options.seed)
    if options.transport == "nats":
        return await _run_over_nats(options, rng)
    return await _build_and_run(options, rng, isolated_network(rng))


async def _run_over_nats(options: DemoOptions, rng: random.Random) -> dict[str, Any]:
    """The same demo with the negotiation on a private 3-node NATS cluster (loopback)."""
    from fwrescue.sim.nats_cluster import NatsCluster

    root = options.workdir.resolve()
    cluster = NatsCluster(root.with_name(root.name + "-nats"), size=3)
    await asyncio.to_thread(cluster.start)
    try:
        network = dataclasses.replace(isolated_network(rng), transport=TransportSettings(
            kind="nats", nats_servers=tuple(cluster.urls), site="demo"))
        return await _build_and_run(options, rng, network)
    finally:
        cluster.stop()


async def _build_and_run(options: DemoOptions, rng: random.Random,
                         network: NetworkSettings) -> dict[str, Any]:
    base = _ovmf_code() if options.host == "qemu" else None
    chip = 16 * 1024 * 1024 if options.flash == "flashrom" else None
    plan = build_fleet(
        options.workdir.resolve(), nodes=options.nodes, boards=options.boards,
        image_size=options.image_size, base_image=base, chip_size=chip,
        flash_kind=options.flash, host_kind=options.host, network=network,
        timers=TimerSettings(startup_jitter=0.3, offer_window=0.3, accept_timeout=1.0),
        policy=options.policy, seed=rng.randint(1, 10**6),
        # Redfish on every node: the console reads the fleet through it
        redfish=RedfishSettings(enabled=True, tls=False, users=(
            ("admin", f"demo-{rng.getrandbits(48):012x}", "Administrator"),)))
    for index in _corrupted_indices(options.nodes, options.corrupt, options.boards):
        corrupt_node(plan.nodes[index])
    return await _run_fleet(plan, options)


async def _run_fleet(plan: FleetPlan, options: DemoOptions) -> dict[str, Any]:
    assert plan.console_repo is not None
    password = new_password()
    runner, console_url, console = await start_console(ConsoleSettings(
        repo=plan.console_repo, state_dir=plan.root / "console-state",
        trust=(plan.root / "trust",), network=plan.network,
        inventory=InventorySettings(poll_s=2.0, retry_s=1.0),
        accounts=(("admin", password, "operator"),)))
    console_info = {"id": "console", "repo": str(plan.console_repo), "url": f"{console_url}/",
                    "user": "admin", "password": password,
                    "metrics_url": f"{console_url}/metrics"}
    rows = {n.node_id: NodeRow(n.node_id, n.board, n.corrupted, n.release.version)
            for n in plan.nodes}
    agents: dict[str, Agent] = {}
    # printed before the fleet starts, so a browser can watch it heal (printed again at the end)
    print(f"console dashboard (live): {console_info['url']} (user admin, password "
          f"{password})", flush=True)
    display = FleetDisplay(rows, live=options.live)
    started = time.monotonic()
    try:
        for node in plan.nodes:
            agent = Agent(node.config)
            agent.events.callbacks.append(_row_updater(rows[node.node_id], started))
            agents[node.node_id] = agent
        with display:
            for agent in agents.values():
                await agent.start()
                user, agent_password, _ = agent.config.redfish.users[0]
                console.inventory.add(AgentEndpoint(str(agent.redfish_url), user,
                                                    agent_password))
            await asyncio.wait_for(
                asyncio.gather(*(a.wait_idle() for a in agents.values())), options.timeout)
            display.refresh()
        await _console_caught_up(console, set(agents))
        report = _report(plan, agents, rows)
        report["console"] = console_info
        if options.json_path:
            options.json_path.parent.mkdir(parents=True, exist_ok=True)
            options.json_path.write_text(json.dumps(report, indent=2))
        display.summary(report)
        print(f"console dashboard: {console_info['url']} (user admin, password {password}); "
              f"metrics: {console_info['metrics_url']}", flush=True)
        if options.hold:
            await wait_for_termination()
        return report
    finally:
        await runner.cleanup()
        for agent in agents.values():
            await agent.stop()


async def _console_caught_up(console: Any, node_ids: set[str], timeout: float = 10.0) -> None:
    """Give the console's inventory a moment to see every node and no operation still
    running (bounded: the demo's verdict never depends on it)."""
    from fwrescue.console import records

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fleet = await console.db.read(records.fleet)
        seen = {n["id"] for n in fleet["nodes"] if n["reachable"]}
        if seen >= node_ids and not any(n["healing"] for n in fleet["nodes"]):
            return
        await asyncio.sleep(0.1)


def _row_updater(row: NodeRow, started: float) -> Any:
    def update(event: OperationEvent) -> None:
        row.phase = event.phase
        row.percent = progress.percent(event)
        if event.fields.get("donor_id"):
            row.donor = str(event.fields["donor_id"])
        if event.state is OperationState.COMPLETED:
            row.seconds = time.monotonic() - started
        if event.state is OperationState.EXCEPTION:
            row.error = event.message
    return update


def _report(plan: FleetPlan, agents: dict[str, Agent], rows: dict[str, NodeRow]) -> dict[str, Any]:
    nodes = []
    for spec in plan.nodes:
        agent = agents[spec.node_id]
        nodes.append(_node_entry(spec, agent, rows[spec.node_id]))
    ok = all(n["booted"] and (n["recovered"] or not n["corrupted"]) for n in nodes)
    return {"ok": ok, "boards": plan.boards, "nodes": nodes,
            "console": {"id": "console", "repo": str(plan.console_repo)},
            "workdir": str(plan.root), "transport": plan.network.transport.kind}


def _node_entry(spec: NodeSpec, agent: Agent, row: NodeRow) -> dict[str, Any]:
    result = agent.results.get("bios")
    engine = agent.engine("bios")
    entry: dict[str, Any] = {
        "id": spec.node_id,
        "board": spec.board,
        "corrupted": spec.corrupted,
        "recovered": bool(result and result.ok) if spec.corrupted else False,
        "booted": bool(agent.booted.get("bios")),
        "donor": result.donor_id if result else None,
        "donor_kind": result.donor_kind if result else None,
        "version_before": spec.release.version,
        "version_after": engine.installed_version,
        "seconds": round(result.seconds, 3) if result else 0.0,
        "error": None if not result or result.ok else result.reason,
        "http_url": agent.transfer_url,
    }
    boot_log = agent.boot_logs.get("bios")
    if boot_log is not None:
        entry["boot_log"] = str(boot_log)
        if spec.corrupted:
            entry["boot_evidence"] = _boot_evidence(boot_log)
    if agent.redfish_url:
        entry["redfish_url"] = agent.redfish_url
        user, password, _ = agent.config.redfish.users[0]
        entry["redfish_user"], entry["redfish_password"] = user, password
    return entry


def _boot_evidence(log: Path) -> str | None:
    """The serial-console line that proves the host reached the UEFI shell (bounded read)."""
    try:
        with open(log, "rb") as f:
            text = f.read(1 << 20).decode("ascii", "replace")
    except OSError:
        return None
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)  # drop the firmware's ANSI colours
    lines = [line.strip() for line in text.splitlines() if "UEFI Interactive Shell" in line]
    return lines[-1][:120] if lines else None
