"""The virtual-time fleet simulator: small fleets, in seconds of wall time."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from fwrescue.cli import main
from fwrescue.errors import ConfigError
from fwrescue.sim.virtual.fleet import Fleet
from fwrescue.sim.virtual.loop import EventLoop
from fwrescue.sim.virtual.network import Link, Network
from fwrescue.sim.virtual.params import SimParams
from fwrescue.sim.virtual.report import run_once

# A 4 MiB image in 16 chunks keeps each fleet run well under a second.
SMALL = SimParams(nodes=50, image_bytes=4 << 20, chunk_bytes=256 << 10, console_capacity=2,
                  seed=7)


def run(**changes: object) -> Fleet:
    fleet = Fleet(dataclasses.replace(SMALL, **changes))  # type: ignore[arg-type]
    fleet.run()
    return fleet


def test_fifty_nodes_all_boot_with_every_chunk_and_bounded_console_egress() -> None:
    fleet = run()
    chunks = set(range(SMALL.chunk_count))
    for node in fleet.recipients:
        assert node.verified == chunks
        assert node.staged_at is not None and node.booted_at is not None
        assert node.booted_at >= node.staged_at + SMALL.flash_seconds() + SMALL.host_boot_s
    egress = fleet.console.link.sent_bytes / SMALL.image_bytes
    # A 4 MiB image moves in 0.3 s, faster than a swarm forms, so the first few
    # recipients fetch much of it from the console; peers carry the other 40+ images.
    assert 1.0 <= egress <= 8.0
    assert sum(n.link.sent_bytes for n in fleet.recipients) >= 42 * SMALL.image_bytes


def test_console_only_sends_every_image_itself() -> None:
    fleet = run(nodes=10, swarm=False)
    assert all(n.booted_at is not None for n in fleet.recipients)
    assert fleet.console.link.sent_bytes == pytest.approx(10 * SMALL.image_bytes)
    assert all(n.link.sent_bytes == 0 for n in fleet.recipients)


def test_power_loss_mid_flash_restarts_and_reflashes_from_the_staged_image() -> None:
    fleet = run(nodes=20, power_loss_rate=0.5)
    lost = [n for n in fleet.recipients if n.power_losses]
    assert lost, "the seeded rate should hit some nodes"
    for node in fleet.recipients:
        assert node.booted_at is not None
        assert node.flashes == node.power_losses + 1
    for node in lost:  # the re-flash waited for the BMC to come back
        assert node.booted_at is not None and node.staged_at is not None
        assert node.booted_at >= (node.staged_at + SMALL.bmc_boot_s + SMALL.flash_seconds()
                                  + SMALL.host_boot_s)


def test_a_donor_dying_mid_transfer_resumes_and_its_recipients_finish() -> None:
    fleet = run(nodes=30, donor_death_rate=0.3)
    died = [n for n in fleet.recipients if n.crashes]
    assert died
    assert all(n.booted_at is not None for n in fleet.recipients)
    for node in died:  # it came back and finished after its BMC rebooted
        assert node.staged_at is not None and node.staged_at >= SMALL.bmc_boot_s
        assert node.verified == set(range(SMALL.chunk_count))


def test_datagram_loss_is_survived() -> None:
    fleet = run(nodes=20, loss=0.2)
    assert fleet.net.datagrams_lost > 0
    assert all(n.booted_at is not None for n in fleet.recipients)


def test_a_seeded_run_is_reproducible() -> None:
    params = dataclasses.replace(SMALL, nodes=30, donor_death_rate=0.1, loss=0.05)
    a = dataclasses.asdict(run_once(params))
    b = dataclasses.asdict(run_once(params))
    a.pop("wall_s")
    b.pop("wall_s")
    assert a == b
    c = dataclasses.asdict(run_once(dataclasses.replace(params, seed=8)))
    c.pop("wall_s")
    assert c != a


@pytest.mark.parametrize("change", [{"nodes": 0}, {"loss": 1.0}, {"chunk_bytes": 100},
                                    {"latency_s": -1.0}, {"power_loss_rate": 2.0},
                                    {"image_bytes": 1 << 31}, {"nodes": True}])
def test_bad_parameters_are_a_config_error(change: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        dataclasses.replace(SMALL, **change)  # type: ignore[arg-type]


def test_two_flows_share_the_senders_uplink() -> None:
    loop = EventLoop()
    net = Network(loop, random.Random(0), latency_s=0.0, loss=0.0)
    src = Link("s", up_bps=100.0, down_bps=100.0)
    a, b = Link("a", up_bps=100.0, down_bps=100.0), Link("b", up_bps=100.0, down_bps=100.0)
    done: dict[str, float] = {}

    def finisher(name: str) -> Callable[[], None]:
        return lambda: done.__setitem__(name, loop.now)

    for name, dst in (("a", a), ("b", b)):
        net.start_flow(src, dst, [100], on_chunk=lambda _i: None, on_done=finisher(name),
                       on_abort=lambda: None)
    loop.run(until=10.0)
    assert done == {"a": pytest.approx(2.0), "b": pytest.approx(2.0)}  # 50 B/s each
    assert src.sent_bytes == pytest.approx(200.0)


def test_a_dead_link_aborts_its_flows_and_tells_both_ends() -> None:
    loop = EventLoop()
    net = Network(loop, random.Random(0), latency_s=0.0, loss=0.0)
    src, dst = Link("s", up_bps=10.0, down_bps=10.0), Link("d", up_bps=10.0, down_bps=10.0)
    events: list[str] = []
    net.start_flow(src, dst, [10, 10], on_chunk=lambda i: events.append(f"chunk{i}"),
                   on_done=lambda: events.append("done"), on_abort=lambda: events.append("abort"))
    loop.run(until=1.5)
    net.kill_link(src)
    loop.run(until=10.0)
    assert events == ["chunk0", "abort"]
    assert src.sent_bytes == pytest.approx(15.0)


def test_the_sim_command_prints_the_table_and_writes_json(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    out = tmp_path / "sim.json"
    status = main(["sim", "--nodes", "8", "--image-mib", "2", "--console-only",
                   "--json", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "leaves out" in printed and "console-only" in printed
    doc = json.loads(out.read_text())
    runs = doc["runs"]
    assert [(r["n"], r["mode"]) for r in runs] == [(1, "swarm"), (8, "swarm"),
                                                    (8, "console-only")]
    for key in ("slowest_staged_ratio", "median_staged_ratio", "slowest_booted_ratio",
                "console_egress_images", "refetched_chunks"):
        assert all(isinstance(r[key], int | float) for r in runs)
    assert runs[0]["slowest_staged_ratio"] == 1.0
    assert runs[2]["console_egress_images"] == pytest.approx(8.0)


def test_the_sim_command_refuses_bad_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--sizes", "0,5"]) == 2
    assert "error" in capsys.readouterr().err
