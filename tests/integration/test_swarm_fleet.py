"""Chunk swarming on the real network: 32 recipients, one healthy peer and a console.

Real agents on loopback (UDP multicast negotiation, HTTP transfers), every node's link
shaped (egress of all its uploads together, ingress of all its downloads together). The
console counts the image bytes it sent; the assertions are on bytes and on flash
contents, never on time.
"""

from __future__ import annotations

import random
from pathlib import Path

from fwrescue.sim.fleet import isolated_network
from fwrescue.sim.swarm_fleet import FleetSpec, prepare, run_agents, start_console

RECIPIENTS = 32


async def test_32_recipients_swarm_and_the_console_sends_at_most_two_images(
        tmp_path: Path) -> None:
    spec = FleetSpec(recipients=RECIPIENTS, healthy=1, image_size=256 * 1024,
                     chunk_size=16 * 1024, link_bps=512 * 1024, seed=3)
    plan = prepare(tmp_path / "fleet", spec, isolated_network(random.Random(31)))
    console = start_console(plan, spec)
    await console.start()
    try:
        outcomes, _rss = await run_agents(plan.nodes, timeout=120, seed=3)
    finally:
        await console.stop()
    assert len(outcomes) == RECIPIENTS
    failed = [(o.node_id, o.reason) for o in outcomes if not o.ok]
    assert failed == []
    # Each recovered flash holds exactly the signed image of its board.
    assert all(o.flash_ok for o in outcomes)
    image = spec.image_size
    console_bytes = console.service.server.stats.image_bytes
    peer_bytes = sum(b for o in outcomes for d, b in o.donors.items() if d != "console")
    print(f"console sent {console_bytes / image:.2f} images; peers {peer_bytes / image:.2f}")
    assert console_bytes <= 2 * image
    # Recipients served each other: most bytes came from peers, partial ones included.
    partial_donors = {d for o in outcomes for d in o.donors if d not in ("console", "node-01")}
    assert partial_donors, "no recipient served another"
    assert peer_bytes >= (RECIPIENTS - 2) * image
