"""A TLS fleet on loopback: a donor that answers first but holds no certificate of the
fleet CA for its id is dropped in the handshake (it never receives a token over a
session it could read, nor serves a byte), and the recipient heals from an honest donor."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from fwrescue.agent import Agent
from fwrescue.config import TimerSettings, TlsSettings
from fwrescue.sim.fleet import build_fleet, corrupt_node
from fwrescue.trust.fleet_ca_cli import CA_CERT, init_ca, issue_node
from tests.fakes.rogue import isolated_network, rolled_back

IMPOSTOR = "impostor"


async def test_a_donor_outside_the_fleet_ca_is_dropped_and_an_honest_donor_heals(
        tmp_path: Path) -> None:
    timers = TimerSettings(startup_jitter=0.1, offer_window=0.3, backoff_initial=0.5,
                           backoff_max=1.0, accept_timeout=1.0)
    plan = build_fleet(tmp_path / "fleet", nodes=2, boards=1, image_size=256 * 1024,
                       network=isolated_network(), timers=timers, all_newest=True)
    recipient_spec, honest_spec = plan.nodes
    genuine = plan.newest("board-a")
    corrupt_node(recipient_spec)
    # Genuine bytes and a genuine-looking identity for its own id, from another CA.
    init_ca(tmp_path / "foreign")
    cert, key = issue_node(tmp_path / "foreign", IMPOSTOR, tmp_path / "foreign" / IMPOSTOR)
    impostor_net = dataclasses.replace(plan.network, tls=TlsSettings(
        ca=tmp_path / "foreign" / CA_CERT, cert=cert, key=key))
    impostor = rolled_back(tmp_path / "impostor", donor_id=IMPOSTOR, network=impostor_net,
                           signed=genuine.signed, image=genuine.image)
    honest, recipient = Agent(honest_spec.config), Agent(recipient_spec.config)
    try:
        await impostor.start()
        await honest.start()
        await recipient.start(run_startup_checks=False)
        result = await asyncio.wait_for(recipient.recover("bios", "e2e: corrupted"), 60)
        transcript = recipient.engine("bios").transcript()
    finally:
        for agent in (recipient, honest):
            await agent.stop()
        await impostor.stop()

    assert result.ok, result.reason
    assert result.donor_id == honest_spec.node_id
    image = genuine.image.read_bytes()
    assert recipient_spec.flash_path.read_bytes()[:len(image)] == image
    assert impostor.transfer_url is not None and impostor.transfer_url.startswith("https://")
    acked = [e["offer"]["donor_id"] for e in transcript if e["event"] == "DonorAcked"]
    assert IMPOSTOR in acked, "the impostor was never tried: the test proves nothing"
    assert impostor.server.stats.image_bytes == 0
    assert impostor.server.stats.uploads_started == 0
    # dropped with a logged reason, like any failed donor
    reasons = [str(e.get("reason", "")) for e in transcript]
    assert any(f"donor {IMPOSTOR} failed" in r and "TLS handshake" in r for r in reasons), \
        reasons
