"""Whole agents recover over a real 3-node NATS cluster on loopback (multicast fallback
off, so NATS alone carries the negotiation), and a recovery survives the SIGKILL of the
cluster node its recipient is connected to."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

import fwrescue.agent.core
from fwrescue.agent import Agent
from fwrescue.config import NetworkSettings, TimerSettings, TransportSettings
from fwrescue.donor.repository import ConsoleDonor
from fwrescue.sim.fleet import build_fleet, corrupt_node, tls_toml
from fwrescue.sim.nats_cluster import NatsCluster
from fwrescue.transport.link import Link
from fwrescue.transport.nats import NatsLink
from tests.fakes.rogue import isolated_network
from tests.nats_cluster import nats_cluster  # noqa: F401 - the fixture


def nats_network(cluster: NatsCluster) -> NetworkSettings:
    return dataclasses.replace(isolated_network(), transport=TransportSettings(
        kind="nats", nats_servers=tuple(cluster.urls), site="lab", multicast_fallback=False,
        reconnect_wait_s=0.2, reconnect_max_s=1.0))


@pytest.mark.timeout(90)
async def test_recovery_completes_when_the_recipients_nats_node_is_sigkilled(
        tmp_path: Path, nats_cluster: NatsCluster,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    network = nats_network(nats_cluster)
    plan = build_fleet(tmp_path / "fleet", nodes=4, boards=1, image_size=256 * 1024,
                       network=network, timers=TimerSettings(startup_jitter=0.3,
                                                             offer_window=0.3))
    recipients = plan.nodes[:2]
    for node in recipients:
        corrupt_node(node)
    links: list[NatsLink] = []  # every agent's one shared link, in the order opened
    killed: list[str] = []
    real_open_link = fwrescue.agent.core.open_link

    def spy_open_link(settings: NetworkSettings) -> Link:
        link = real_open_link(settings)
        assert isinstance(link, NatsLink)
        links.append(link)
        return link

    # each agent opens ONE link (its SharedLink) for its donor service and its fetches
    monkeypatch.setattr(fwrescue.agent.core, "open_link", spy_open_link)
    assert plan.console_repo is not None
    console = ConsoleDonor(repo=plan.console_repo, trust=plan.root / "trust",
                           state_dir=plan.root / "console", network=plan.network)
    await console.start()
    agents = [Agent(n.config) for n in plan.nodes]
    try:
        for agent in agents[2:]:  # the healthy peers donate
            await agent.start()
        await agents[0].start(run_startup_checks=False)
        recipient_link = links[-1]  # opened by the first recipient's start
        await agents[1].start(run_startup_checks=False)
        first = asyncio.create_task(agents[0].recover("bios", "test: corrupted"))
        for _ in range(500):  # bounded: the recipient's link connects within ~a second
            if recipient_link.connected_url:
                break
            await asyncio.sleep(0.01)
        url = recipient_link.connected_url
        assert url is not None and not first.done()
        victim = nats_cluster.urls.index(url.rstrip("/"))
        nats_cluster.kill(victim)  # mid-negotiation: the SOLICIT is not yet answered
        killed.append(url)
        # a second recipient negotiates entirely after the failure
        second = asyncio.create_task(agents[1].recover("bios", "test: corrupted"))
        results = await asyncio.wait_for(asyncio.gather(first, second), 60)
    finally:
        for agent in agents:
            await agent.stop()
        await console.stop()

    assert all(r.ok for r in results), [r.reason for r in results]
    # the recipient negotiated and fetched over the link whose node was killed
    assert len(links) == len(agents), links  # no agent opened a second link
    assert recipient_link.stats.disconnects >= 1 and recipient_link.stats.reconnects >= 1
    assert recipient_link.connected_url is None or recipient_link.connected_url not in killed
    for node, agent in zip(recipients, agents, strict=False):
        # whichever genuine release of its board the recipient chose (the offers that
        # arrive within the window depend on which donors were failing over)
        version = agent.engine("bios").installed_version
        (release,) = [r for r in plan.releases[node.board] if r.version == version]
        genuine = release.image.read_bytes()
        assert node.flash_path.read_bytes()[:len(genuine)] == genuine
    assert not NatsCluster.alive(nats_cluster.nodes[victim])


@pytest.mark.timeout(120)
async def test_demo_over_nats_starts_its_own_cluster_and_reports_the_transport(
        tmp_path: Path) -> None:
    from fwrescue.sim.demo import DemoOptions, run_demo

    report = await run_demo(DemoOptions(nodes=4, corrupt=2, boards=2, transport="nats",
                                        workdir=tmp_path / "fleet", live=False,
                                        json_path=tmp_path / "report.json", image_size=65536))
    assert report["ok"] and report["transport"] == "nats"
    assert all(n["recovered"] for n in report["nodes"] if n["corrupted"])
    assert '"transport": "nats"' in (tmp_path / "report.json").read_text()
    logs = sorted((tmp_path / "fleet-nats").glob("n*.log"))
    assert len(logs) == 3  # the demo's own three nodes, all stopped again


@pytest.mark.timeout(60)
async def test_console_donor_process_on_a_sites_leaf_node_via_transport_config(
        tmp_path: Path, nats_cluster: NatsCluster) -> None:  # noqa: F811
    import contextlib
    import subprocess
    import sys

    network = nats_network(nats_cluster)
    plan = build_fleet(tmp_path / "fleet", nodes=1, boards=1, image_size=128 * 1024,
                       network=network, timers=TimerSettings(startup_jitter=0.1,
                                                             offer_window=0.3))
    node = plan.nodes[0]
    corrupt_node(node)
    stack = contextlib.ExitStack()
    leaf = stack.enter_context(NatsCluster(tmp_path / "leaf", size=1, leaf_of=nats_cluster))
    urls = ", ".join(f'"{u}"' for u in leaf.urls)  # the console talks to the leaf only
    transport = tmp_path / "console-transport.toml"
    transport.write_text(f'[transport]\nkind = "nats"\nnats_servers = [{urls}]\n'
                         'site = "lab"\nmulticast_fallback = false\n')
    assert plan.console_repo is not None
    tls = plan.tls_for("console")
    assert tls is not None
    console = subprocess.Popen(
        [str(Path(sys.executable).with_name("fwrescue")), "donor", "--repo",
         str(plan.console_repo), "--trust", str(plan.root / "trust"), "--state",
         str(tmp_path / "console"), "--group", network.group, "--port", str(network.port),
         "--transport-config", str(transport), "--tls-ca", str(tls.ca), "--tls-cert",
         str(tls.cert), "--tls-key", str(tls.key)], stdout=subprocess.PIPE, text=True)
    try:
        assert console.stdout is not None
        assert "console donor console serving" in console.stdout.readline()
        agent = Agent(node.config)
        await agent.start(run_startup_checks=False)
        try:
            result = await asyncio.wait_for(agent.recover("bios", "test: corrupted"), 30)
        finally:
            await agent.stop()
    finally:
        console.terminate()
        console.wait(10)
        if console.stdout is not None:
            console.stdout.close()
        stack.close()
    assert result.ok and result.donor_id == "console"
    genuine = plan.newest("board-a").image.read_bytes()
    assert node.flash_path.read_bytes()[:len(genuine)] == genuine


@pytest.mark.timeout(60)
def test_agent_with_rejected_nats_credentials_exits_at_start_with_a_clear_error(
        tmp_path: Path) -> None:
    import subprocess
    import sys

    plan = build_fleet(tmp_path / "fleet", nodes=1, boards=1, image_size=65536,
                       network=isolated_network())
    node = plan.nodes[0]
    assert node.config.targets[0].flash.path is not None
    with NatsCluster(tmp_path / "nats", size=1, users=[("bmc", "right-password")]) as cluster:
        config = tmp_path / "agent.toml"
        config.write_text(f"""
[agent]
node_id = "{node.node_id}"
machine_name = "{node.board}"
state_dir = "{node.config.state_dir}"
trust = ["{plan.root / 'trust'}"]

{tls_toml(node.config.network.tls)}
[transport]
kind = "nats"
nats_servers = ["{cluster.urls[0]}"]
user = "bmc"
password = "wrong-password"

[[targets]]
name = "bios"
flash = {{ kind = "file", path = "{node.config.targets[0].flash.path}" }}
host = {{ kind = "virtual", boot_timeout = 5 }}
""")
        done = subprocess.run([str(Path(sys.executable).with_name("fwrescue")), "agent",
                               "--config", str(config)], capture_output=True, text=True,
                              timeout=30)
    assert done.returncode == 2
    assert "error: the NATS server rejected this agent's credentials" in done.stderr
    assert "Traceback" not in done.stderr


def _connz(cluster: NatsCluster) -> list[dict[str, object]]:
    """Every connection, open or closed, the cluster's servers have seen."""
    import json
    import urllib.request

    seen: list[dict[str, object]] = []
    for node in cluster.nodes:
        url = f"http://{node.host}:{node.http_port}/connz?state=all&limit=1024"
        with urllib.request.urlopen(url, timeout=5) as response:
            seen += json.load(response).get("connections") or []
    return seen


@pytest.mark.timeout(60)
async def test_an_agent_fetches_over_its_one_nats_connection_not_one_per_fetch(
        tmp_path: Path, nats_cluster: NatsCluster,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    network = nats_network(nats_cluster)
    plan = build_fleet(tmp_path / "fleet", nodes=2, boards=1, image_size=128 * 1024,
                       network=network, timers=TimerSettings(startup_jitter=0.1,
                                                             offer_window=0.3))
    recipient, donor = plan.nodes
    corrupt_node(recipient)
    agent_links: list[NatsLink] = []
    real_open_link = fwrescue.agent.core.open_link

    def spy_open_link(settings: NetworkSettings) -> Link:
        link = real_open_link(settings)
        assert isinstance(link, NatsLink)
        agent_links.append(link)
        return link

    # each agent opens ONE link (its SharedLink), shared by its donor service and fetches
    monkeypatch.setattr(fwrescue.agent.core, "open_link", spy_open_link)
    agents = [Agent(recipient.config), Agent(donor.config)]
    try:
        await agents[1].start()
        await agents[0].start(run_startup_checks=False)
        (_, recipient_link) = agent_links  # the donor's, then the recipient's
        result = await asyncio.wait_for(agents[0].recover("bios", "test: corrupted"), 30)
        seen = _connz(nats_cluster)  # while both agents still run
    finally:
        for agent in agents:
            await agent.stop()

    assert result.ok and result.donor_id == donor.node_id, result.reason
    # the fetch opened no link of its own: still one link per agent, on one connection
    assert len(agent_links) == 2, agent_links
    connection = recipient_link.connection
    assert connection is not None and connection.opened == 1
    assert connection.options.name == recipient.node_id
    by_name = {name: [c for c in seen if c.get("name") == name]
               for name in (recipient.node_id, donor.node_id)}
    # the servers saw each agent connect exactly once, and never close a fetch's connection
    assert [len(v) for v in by_name.values()] == [1, 1], by_name
    assert all(c.get("reason") in (None, "") for v in by_name.values() for c in v)
    genuine = plan.newest("board-a").image.read_bytes()
    assert recipient.flash_path.read_bytes()[:len(genuine)] == genuine
