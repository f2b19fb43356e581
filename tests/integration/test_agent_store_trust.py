"""The agent's own package store re-checks what it finds on disk with the agent's verifier."""

from __future__ import annotations

from pathlib import Path

from fwrescue.agent import Agent
from fwrescue.image.package import build_package
from fwrescue.image.store import PackageStore
from fwrescue.sim.fleet import build_fleet, isolated_network
from fwrescue.trust.keys import SigningKey, TrustStore, generate_keypair
from fwrescue.trust.rollback import RollbackStore
from fwrescue.trust.verifier import Verifier


def test_a_package_signed_by_an_untrusted_key_in_the_agents_store_is_junk(
        tmp_path: Path) -> None:
    plan = build_fleet(tmp_path / "fleet", nodes=1, boards=1, image_size=64 * 1024,
                       network=isolated_network())
    node = plan.nodes[0]
    # Plant a well-formed package signed by a key the agent does not trust.
    private, _ = generate_keypair(tmp_path / "rogue", "rogue")
    image = tmp_path / "rogue.bin"
    image.write_bytes(b"\x90" * 64 * 1024)
    signed = build_package(image, tmp_path / "rogue.fwpkg", key=SigningKey.load(private),
                           target="bios", machine_names=[node.board], version="9.9.9",
                           security_version=9)
    rogue_verifier = Verifier(TrustStore.from_files([tmp_path / "rogue"]),
                              RollbackStore(tmp_path / "rogue-rollback.json"))
    planted = PackageStore(node.config.state_dir / "store")
    planted.put(rogue_verifier.verify_for_donation(signed), image, move=False)
    assert signed.digest in {s.digest for s in planted.list()}  # no verifier: it is listed

    agent = Agent(node.config)
    listed = {s.digest for s in agent.store.list()}
    assert signed.digest not in listed
    assert plan.releases[node.board][0].signed.digest in listed  # the genuine one stays
    assert [p.name for p, _ in agent.store.junk] == [f"{signed.digest}.json"]
