"""Real multi-host networks: every agent a real ``fwrescue agent`` process in a network
namespace of its own, with its own address on a bridged segment (tests/netns.py).

* multicast negotiation across one bridge;
* two segments with no multicast path, joined only through a 3-node NATS cluster, also
  with the node holding the recipient's connection SIGKILLed during its recovery;
* 50 ms one-way delay and 5 % frame loss, both directions, on the recipient's link;
* the recipient's link cut mid-transfer and restored: the transfer resumes from the
  verified chunks and fetches none of them twice.

Root only (namespaces, bridges, TAP devices); skipped with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fwrescue.config import TimerSettings
from fwrescue.sim.fleet import FleetPlan, NodeSpec, build_fleet, corrupt_node, tls_toml
from fwrescue.sim.nats_cluster import NatsCluster
from tests.fakes.rogue import isolated_network
from tests.netns import NATS_HOSTS, Host, Impairment, Lab, is_root

pytestmark = pytest.mark.skipif(not is_root(), reason="network namespaces, bridges and TAP "
                                "devices need root (CAP_NET_ADMIN)")

FWRESCUE = Path(sys.executable).with_name("fwrescue")
POLL = 0.05
IMAGE = 256 * 1024
CHUNK = 64 * 1024


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(segments=2) as lab:
        yield lab


def _agent_toml(node: NodeSpec, host: Host, plan: FleetPlan, *, transport: str = "",
                rate: int = 0, path: Path) -> Path:
    cfg = node.config
    target = cfg.targets[0]
    assert target.flash.path is not None
    path.write_text(f"""
[agent]
node_id = "{cfg.node_id}"
machine_name = "{cfg.machine_name}"
state_dir = "{cfg.state_dir}"
trust = ["{cfg.trust[0]}"]

{tls_toml(cfg.network.tls)}
[network]
group = "{plan.network.group}"
port = {plan.network.port}
interface = "{host.address}"
transfer_host = "{host.address}"

[timers]
startup_jitter = 0.2
offer_window = 0.3
backoff_initial = 0.5
backoff_max = 2.0
max_solicits = 30

[donor]
rate_limit_bps = {rate}

{transport}

[[targets]]
name = "bios"

[targets.flash]
kind = "file"
path = "{target.flash.path}"
region_size = {target.flash.region_size}

[targets.host]
kind = "virtual"
boot_timeout = 5
""")
    return path


def _nats_table(servers: list[str], site: str = "lab") -> str:
    urls = ", ".join(f'"{u}"' for u in servers)
    return (f'[transport]\nkind = "nats"\nnats_servers = [{urls}]\nsite = "{site}"\n'
            "reconnect_wait_s = 0.2\nreconnect_max_s = 1.0\n")


@contextlib.contextmanager
def _agents() -> Iterator[list[subprocess.Popen[str]]]:
    """Every agent process started in the block is stopped (by its pid) when it ends."""
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _start(procs: list[subprocess.Popen[str]], host: Host, config: Path) -> None:
    proc = subprocess.Popen([*host.exec_prefix, str(FWRESCUE), "agent", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded: the agent prints once started, or exits
    assert f"donating at https://{host.address}:" in line, f"agent on {host.name}: {line!r}"


def _transcripts(node: NodeSpec) -> list[dict[str, Any]]:
    folder = node.config.state_dir / "targets" / "bios" / "transcripts"
    docs = [json.loads(p.read_bytes()) for p in folder.glob("*.json")] if folder.exists() else []
    return sorted(docs, key=lambda d: float(d["record"]["started_at"]))


def _wait_recovered(nodes: list[NodeSpec], procs: list[subprocess.Popen[str]],
                    timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(_transcripts(n) for n in nodes):
        assert all(p.poll() is None for p in procs), "an agent exited"
        assert time.monotonic() < deadline, "the fleet did not recover in time"
        time.sleep(POLL)


def _assert_genuine(plan: FleetPlan, nodes: list[NodeSpec]) -> list[dict[str, Any]]:
    """Every node's flash equals the signed image of its board; its one transcript."""
    transcripts = []
    for node in nodes:
        genuine = plan.newest(node.board).image.read_bytes()
        docs = _transcripts(node)
        events = [(e["event"], e.get("reason")) for d in docs for e in d["transcript"]]
        assert node.flash_path.read_bytes()[:len(genuine)] == genuine, (node.node_id, events)
        assert len(docs) == 1 and docs[0]["record"]["phase"] == "recovered"
        transcripts.append(docs[0])
    return transcripts


def _plan(tmp_path: Path, nodes: int, boards: int) -> FleetPlan:
    return build_fleet(tmp_path / "fleet", nodes=nodes, boards=boards, image_size=IMAGE,
                       network=isolated_network(), timers=TimerSettings())


def _multicast_crosses(src: Host, dst: Host, group: str, port: int) -> bool:
    """Send a datagram to ``group`` from ``src``; does ``dst``, joined, receive it?"""
    listen = subprocess.Popen(
        [*dst.exec_prefix, sys.executable, "-c", (
            "import socket,sys;s=socket.socket(2,2);s.setsockopt(1,2,1);"
            f"s.bind(('{group}',{port}));"
            f"s.setsockopt(0,35,socket.inet_aton('{group}')+socket.inet_aton('{dst.address}'));"
            "print('ready',flush=True);s.settimeout(1.5);"
            "print(s.recv(64).decode() if True else '')")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert listen.stdout is not None and listen.stdout.readline().strip() == "ready"
    subprocess.run([*src.exec_prefix, sys.executable, "-c", (
        "import socket;s=socket.socket(2,2);"
        f"s.setsockopt(0,32,socket.inet_aton('{src.address}'));"
        f"[s.sendto(b'probe',('{group}',{port})) for _ in range(3)]")], check=True, timeout=10)
    out, _ = listen.communicate(timeout=10)
    return "probe" in out


@pytest.mark.timeout(60)
def test_multicast_negotiation_across_a_bridge(tmp_path: Path, lab: Lab) -> None:
    plan = _plan(tmp_path, nodes=2, boards=1)
    recipient, donor = plan.nodes
    corrupt_node(recipient)
    hosts = [lab.add_host(1), lab.add_host(1)]
    with _agents() as procs:
        _start(procs, hosts[1], _agent_toml(donor, hosts[1], plan, path=tmp_path / "d.toml"))
        _start(procs, hosts[0], _agent_toml(recipient, hosts[0], plan,
                                            path=tmp_path / "r.toml"))
        _wait_recovered([recipient], procs, 30)
    (doc,) = _assert_genuine(plan, [recipient])
    done = [e for e in doc["transcript"] if e["event"] == "transferred"]
    assert done and list(done[0]["donors"]) == [donor.node_id]  # bytes by donor: only it


@pytest.mark.timeout(90)
def test_segments_without_a_multicast_path_recover_through_the_nats_cluster(
        tmp_path: Path, lab: Lab) -> None:
    plan = _plan(tmp_path, nodes=4, boards=2)
    # segment 1: the two corrupted BMCs (one per board); segment 2: the two donors
    recipients, donors = plan.nodes[:2], plan.nodes[2:]
    for node in recipients:
        corrupt_node(node)
    hosts = {n.node_id: lab.add_host(1 if n in recipients else 2) for n in plan.nodes}
    assert not _multicast_crosses(hosts[recipients[0].node_id], hosts[donors[0].node_id],
                                  plan.network.group, plan.network.port)
    assert _multicast_crosses(hosts[recipients[0].node_id], hosts[recipients[1].node_id],
                              plan.network.group, plan.network.port)  # the probe works
    with NatsCluster(tmp_path / "nats", hosts=NATS_HOSTS, exec_prefix=lab.core_prefix,
                     fixed_ports=True) as cluster, _agents() as procs:
        for node in donors + recipients:
            host = hosts[node.node_id]
            _start(procs, host, _agent_toml(node, host, plan, transport=_nats_table(
                cluster.urls), path=tmp_path / f"{node.node_id}.toml"))
        _wait_recovered(recipients, procs, 60)
    docs = _assert_genuine(plan, recipients)
    for node, doc in zip(recipients, docs, strict=True):
        done = [e for e in doc["transcript"] if e["event"] == "transferred"]
        # the donor of its own board, on the other segment
        assert [list(e["donors"]) for e in done] == [[donors[plan.nodes.index(node) % 2].node_id]]


def _connections_named(lab: Lab, cluster: NatsCluster, name: str) -> list[int]:
    """The nodes (indices) of ``cluster`` that hold an open connection named ``name``."""
    holding = []
    for i, node in enumerate(cluster.nodes):
        if not NatsCluster.alive(node):
            continue
        out = subprocess.run(
            [*lab.core_prefix, sys.executable, "-c",
             "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1],timeout=2)"
             ".read().decode())", f"http://{node.host}:{node.http_port}/connz?limit=1024"],
            capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and any(c.get("name") == name for c in
                                       json.loads(out.stdout).get("connections") or []):
            holding.append(i)
    return holding


@pytest.mark.timeout(90)
def test_a_nats_node_sigkilled_during_a_cross_segment_recovery_costs_no_recovery(
        tmp_path: Path, lab: Lab) -> None:
    plan = _plan(tmp_path, nodes=2, boards=1)
    recipient, donor = plan.nodes  # segment 1 and segment 2: NATS is the only path
    corrupt_node(recipient)
    rcp_host, donor_host = lab.add_host(1), lab.add_host(2)
    with NatsCluster(tmp_path / "nats", hosts=NATS_HOSTS, exec_prefix=lab.core_prefix,
                     fixed_ports=True) as cluster, _agents() as procs:
        # the recipient first: it is soliciting, with nobody to answer yet, over its one
        # connection when the node that holds that connection is SIGKILLed
        _start(procs, rcp_host, _agent_toml(recipient, rcp_host, plan, transport=_nats_table(
            cluster.urls), path=tmp_path / "r.toml"))
        (victim,) = _connections_named(lab, cluster, recipient.node_id)
        cluster.kill(victim)
        assert not _transcripts(recipient)  # mid-recovery: nothing recovered yet
        _start(procs, donor_host, _agent_toml(donor, donor_host, plan, transport=_nats_table(
            cluster.urls), path=tmp_path / "d.toml"))
        _wait_recovered([recipient], procs, 60)
        # it failed over: its connection is now on a surviving node
        survivors = _connections_named(lab, cluster, recipient.node_id)
    (doc,) = _assert_genuine(plan, [recipient])
    done = [e for e in doc["transcript"] if e["event"] == "transferred"]
    assert [list(e["donors"]) for e in done] == [[donor.node_id]]
    assert len(survivors) == 1 and survivors[0] != victim
    assert not NatsCluster.alive(cluster.nodes[victim])


@pytest.mark.timeout(90)
def test_delay_and_loss_on_the_recipients_link_recovers(tmp_path: Path, lab: Lab) -> None:
    plan = _plan(tmp_path, nodes=2, boards=1)
    recipient, donor = plan.nodes
    corrupt_node(recipient)
    impaired = lab.add_host(1, impair=Impairment(delay_s=0.050, loss=0.05, seed=7))
    donor_host = lab.add_host(1)
    with _agents() as procs:
        _start(procs, donor_host, _agent_toml(donor, donor_host, plan,
                                              path=tmp_path / "d.toml"))
        _start(procs, impaired, _agent_toml(recipient, impaired, plan,
                                            path=tmp_path / "r.toml"))
        _wait_recovered([recipient], procs, 60)
    _assert_genuine(plan, [recipient])
    relay = lab.relays[0]
    assert relay.dropped > 0 and relay.forwarded > 0
    print(f"impaired link: {relay.forwarded} frames forwarded, {relay.dropped} dropped "
          f"({relay.dropped / (relay.dropped + relay.forwarded):.1%})")


def _verified_chunks(node: NodeSpec) -> tuple[int, int]:
    staging = node.config.state_dir / "targets" / "bios" / "staging"
    maps = list(staging.glob("*.map")) if staging.exists() else []
    if not maps:
        return 0, 0
    with contextlib.suppress(OSError):
        state = maps[0].read_bytes()[512:]
        return state.count(2), len(state)
    return 0, 0


def _partial_chunks(node: NodeSpec) -> int:
    """Chunks whose bytes arrived in part and were not verified (staging map state 1)."""
    staging = node.config.state_dir / "targets" / "bios" / "staging"
    maps = list(staging.glob("*.map")) if staging.exists() else []
    return maps[0].read_bytes()[512:].count(1) if maps else 0


@pytest.mark.timeout(120)
def test_link_cut_mid_transfer_and_restored_resumes_without_refetching_verified_chunks(
        tmp_path: Path, lab: Lab) -> None:
    # nodes 2 and 4 hold the newest release; the cut stalls every donor in use, which
    # must not ban them: once the link is back the swarm binds them again
    plan = build_fleet(tmp_path / "fleet", nodes=4, boards=1, image_size=1024 * 1024,
                       network=isolated_network(), timers=TimerSettings())
    recipient, donors = plan.nodes[0], [plan.nodes[1], plan.nodes[3]]
    assert {d.release.version for d in donors} == {plan.newest("board-a").version}
    corrupt_node(recipient)
    rcp_host = lab.add_host(1)
    with _agents() as procs:
        for donor in donors:  # ~5 s for the whole image: a wide window to cut the cable in
            host = lab.add_host(1)
            _start(procs, host, _agent_toml(donor, host, plan, rate=200_000,
                                            path=tmp_path / f"{donor.node_id}.toml"))
        _start(procs, rcp_host, _agent_toml(recipient, rcp_host, plan,
                                            path=tmp_path / "r.toml"))
        verified, total = 0, 0
        deadline = time.monotonic() + 30
        while not (total and verified >= 3):
            assert time.monotonic() < deadline, "the transfer never got under way"
            verified, total = _verified_chunks(recipient)
            time.sleep(0.02)
        lab.set_link(rcp_host, up=False)
        at_cut, _ = _verified_chunks(recipient)
        # longer than the transfer's stall timeout (10 s): the recipient gives the donor
        # up, so the restored link needs a new negotiation and a resumed transfer
        time.sleep(11)
        assert _verified_chunks(recipient)[0] == at_cut  # nothing moved while cut
        partial = _partial_chunks(recipient)  # in flight at the cut, recorded at the stall
        lab.set_link(rcp_host, up=True)
        _wait_recovered([recipient], procs, 60)
    (doc,) = _assert_genuine(plan, [recipient])
    events = doc["transcript"]
    dropped = [e for e in events if e["event"] == "donor dropped"]
    done = [e for e in events if e["event"] == "transferred"]
    # the cut stalled the donors in use: dropped, then bound again once the link was back
    assert dropped and len(done) == 1
    assert {e["donor"] for e in dropped} <= {d.node_id for d in donors}
    assert {d for d, n in done[0]["donors"].items() if n} <= {d.node_id for d in donors}
    # no chunk verified at the cut was fetched again: only chunks in flight at the cut
    # (arrived in part, never verified) may have been fetched twice
    assert done[0]["refetched_chunks"] <= partial
    assert done[0]["bytes"] <= (total + partial) * CHUNK
    print(f"cut at {at_cut}/{total} verified chunks ({partial} in flight); the run moved "
          f"{done[0]['bytes']} bytes, refetched {done[0]['refetched_chunks']} chunks")
