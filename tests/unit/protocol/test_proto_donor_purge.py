"""The donor forgets a solicit state_ttl after its last message, scanning lazily."""

from __future__ import annotations

from fwrescue.donor.responder import DonorLimits
from fwrescue.protocol.messages import Solicit
from fwrescue.protocol.states import DonorState

from .fakenet import T0, image, make_codec, make_donor

RCP = ("127.0.0.1", 6000)


def solicit(xid: int, rid: str = "rcp-1") -> Solicit:
    return Solicit(xid=xid, recipient_id=rid, target="bios", machine_name="board-a",
                   installed_version=None, security_version=0, min_security_version=0)


def test_stale_solicits_are_forgotten_after_state_ttl_and_fresh_ones_kept() -> None:
    donor = make_donor("d1", [image(1)], limits=DonorLimits(state_ttl=5.0, jitter=0.0))
    codec = make_codec(77)

    def send(msg: Solicit, now: float) -> None:
        donor.receive_datagram(codec.encode(msg, now), RCP, now)

    send(solicit(1), T0)
    send(solicit(2), T0 + 3.0)
    send(solicit(3, rid="rcp-2"), T0 + 4.0)  # before any ttl ran out: all three kept
    assert donor.solicit_state("rcp-1", 1) is not None
    send(solicit(4, rid="rcp-3"), T0 + 5.5)  # xid 1 is 5.5 s old now
    assert donor.solicit_state("rcp-1", 1) is None
    assert donor.solicit_state("rcp-1", 2) is DonorState.PENDING
    send(solicit(5, rid="rcp-4"), T0 + 8.5)  # xid 2 is 5.5 s old, xid 3 4.5 s
    assert donor.solicit_state("rcp-1", 2) is None
    assert donor.solicit_state("rcp-2", 3) is DonorState.PENDING
    donor.handle_timer(T0 + 20.0)  # the timer purges too
    assert [donor.solicit_state(r, x) for r, x in
            (("rcp-2", 3), ("rcp-3", 4), ("rcp-4", 5))] == [None, None, None]
