"""A lying partial donor on the real network: it offers as a partial donor (OFFER
``held``), claims every chunk in its have-map and serves corrupted chunks. No bad byte is
kept, none is served onward by the recipients (they serve only verified chunks), and
every recipient finishes from the honest donors."""

from __future__ import annotations

import random
from pathlib import Path

from fwrescue.sim.fleet import isolated_network
from fwrescue.sim.swarm_fleet import FleetSpec, prepare, run_agents
from tests.fakes.rogue import Claim, corrupted_carrier

RECIPIENTS = 6
ROGUE = "rogue-partial"


async def test_rogue_partial_donor_is_dropped_and_nothing_bad_is_kept_or_served(
        tmp_path: Path) -> None:
    spec = FleetSpec(recipients=RECIPIENTS, healthy=1, image_size=128 * 1024,
                     chunk_size=16 * 1024, link_bps=512 * 1024, seed=5)
    plan = prepare(tmp_path / "fleet", spec, isolated_network(random.Random(57)))
    genuine = plan.newest("board-a")
    rogue = corrupted_carrier(tmp_path / "rogue", donor_id=ROGUE, network=plan.network,
                              signed=genuine.signed, image=genuine.image, flip_all=True,
                              claim=Claim(version=None, security_version=None, held=7))
    await rogue.start()
    try:
        outcomes, _ = await run_agents(plan.nodes, timeout=90, seed=5)
    finally:
        await rogue.stop()
    assert [o.node_id for o in outcomes if not o.ok] == []
    assert all(o.flash_ok for o in outcomes)  # every flash is the signed image
    used_rogue = [o for o in outcomes if ROGUE in o.donors]
    assert used_rogue, "no recipient ever asked the rogue: the test proves nothing"
    for outcome in used_rogue:
        if outcome.donors[ROGUE] > 0:  # it sent bytes: they failed and it was dropped
            assert "chunk digest does not match" in outcome.dropped[ROGUE], outcome.dropped
    assert rogue.server.stats.image_bytes > 0
    # Recipients served each other (partial donors), and no recipient ever received a bad
    # chunk from any donor but the rogue: nothing unverified was served onward.
    for outcome in outcomes:
        bad = {d: why for d, why in outcome.dropped.items()
               if "chunk" in why and "digest" in why and d != ROGUE}
        assert bad == {}, (outcome.node_id, bad)
    served_by_recipients = sum(b for o in outcomes for d, b in o.donors.items()
                               if d not in (ROGUE, "node-01"))
    assert served_by_recipients > 0
