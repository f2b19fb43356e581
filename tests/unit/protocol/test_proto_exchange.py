"""Full exchanges over the fake network: real recipient and donor sessions, virtual time."""

from __future__ import annotations

from fwrescue.donor.responder import DonorLimits, DonorResponder
from fwrescue.protocol.events import (
    AcceptTimedOut,
    Declined,
    DonorAcked,
    DonorSelected,
    OfferRejected,
    OfferSent,
    Released,
    ReservationEnded,
    ReservationGranted,
)
from fwrescue.protocol.messages import DonorKind
from fwrescue.protocol.policy import get_policy
from fwrescue.protocol.recipient import RecipientSession, RecipientTimers
from fwrescue.protocol.states import RecipientState

from .fakenet import FakeNetwork, Sent, image, make_donor, make_recipient, of_type


def _three_donor_net(
    policy: str = "newest",
) -> tuple[FakeNetwork, RecipientSession, list[DonorResponder]]:
    net = FakeNetwork()
    rcp = make_recipient(policy=get_policy(policy), min_security_version=1)
    donors = [
        make_donor("peer-old", [image(1, version="1.0.0", security_version=1)], seed=11),
        make_donor("peer-new", [image(2, version="1.10.0", security_version=2)], seed=12),
        make_donor("console", [image(3, version="1.9.0", security_version=2)], seed=13,
                   kind=DonorKind.CONSOLE),
    ]
    net.add(rcp)
    for d in donors:
        net.add(d)
    return net, rcp, donors


def test_one_recipient_three_donors_gets_ack_from_the_policys_choice() -> None:
    net, rcp, donors = _three_donor_net("newest")
    rcp.start(net.now)
    net.run(net.now + 5)
    events = net.node_of(rcp).events
    selected = of_type(events, DonorSelected)
    acked = of_type(events, DonorAcked)
    assert [s.offer.donor_id for s in selected] == ["peer-new"]
    assert "newest" in selected[0].reason
    assert {o.donor_id for o in selected[0].ranked} == {"peer-old", "peer-new", "console"}
    assert len(acked) == 1 and acked[0].offer.donor_id == "peer-new"
    assert rcp.state is RecipientState.BOUND
    granted = of_type(net.node_of(donors[1]).events, ReservationGranted)
    assert [g.token for g in granted] == [acked[0].token]
    assert donors[1].reservations == 1
    assert donors[0].reservations == 0 and donors[2].reservations == 0


def test_release_ends_the_donor_reservation_and_the_session() -> None:
    net, rcp, donors = _three_donor_net("first")
    rcp.start(net.now)
    net.run(net.now + 5)
    acked = of_type(net.node_of(rcp).events, DonorAcked)[0]
    donor = next(d for d in donors if d.identity.donor_id == acked.offer.donor_id)
    rcp.release("recovered", 1 << 20, net.now)
    net.run(net.now + 1)
    assert rcp.state is RecipientState.DONE
    dev = net.node_of(donor).events
    assert of_type(dev, Released)[0].outcome == "recovered"
    assert of_type(dev, ReservationEnded)[0].reason == "released: recovered"
    assert donor.reservations == 0


def test_honest_donors_below_the_security_floor_stay_quiet() -> None:
    net = FakeNetwork()
    rcp = make_recipient(min_security_version=2)
    low = make_donor("low", [image(1, security_version=1)], seed=5)
    good = make_donor("good", [image(2, security_version=3)], seed=6)
    for s in (rcp, low, good):
        net.add(s)
    rcp.start(net.now)
    net.run(net.now + 5)
    events = net.node_of(rcp).events
    # the honest low donor never offers (it checks the floor itself) ...
    assert low.skipped["no matching image"] == 1
    assert of_type(events, DonorAcked)[0].offer.donor_id == "good"


def test_decline_sends_decline_and_moves_to_the_next_offer() -> None:
    net = FakeNetwork()
    rcp = make_recipient(policy=get_policy("newest"))
    d1 = make_donor("d1", [image(1, version="2.0")], seed=21)
    d2 = make_donor("d2", [image(2, version="1.0")], seed=22)
    for s in (rcp, d1, d2):
        net.add(s)
    rcp.start(net.now)
    net.run(net.now + 5)
    assert of_type(net.node_of(rcp).events, DonorAcked)[0].offer.donor_id == "d1"
    rcp.decline("manifest signature did not verify", net.now)
    net.run(net.now + 5)
    events = net.node_of(rcp).events
    acked = of_type(events, DonorAcked)
    assert [a.offer.donor_id for a in acked] == ["d1", "d2"]
    assert rcp.declined_digests == (image(1).manifest_digest,)
    declined = of_type(net.node_of(d1).events, Declined)
    assert declined[0].reason == "manifest signature did not verify"
    assert d1.reservations == 0
    assert "next-ranked after: declined" in of_type(events, DonorSelected)[-1].reason


def test_decline_blacklists_the_digest_even_when_other_donors_offer_it() -> None:
    net = FakeNetwork()
    bad = image(7, version="3.0")
    rcp = make_recipient(policy=get_policy("newest"))
    a = make_donor("a", [bad], seed=31)
    b = make_donor("b", [bad], seed=32)
    c = make_donor("c", [image(8, version="1.0")], seed=33)
    for s in (rcp, a, b, c):
        net.add(s)
    rcp.start(net.now)
    net.run(net.now + 5)
    first = of_type(net.node_of(rcp).events, DonorAcked)[0]
    assert first.offer.manifest_digest == bad.manifest_digest
    rcp.decline("image sha256 mismatch", net.now)
    net.run(net.now + 5)
    events = net.node_of(rcp).events
    assert of_type(events, DonorAcked)[-1].offer.donor_id == "c"
    rejected = [r for r in of_type(events, OfferRejected) if "declined" in r.reason]
    assert rejected and all(r.offer.manifest_digest == bad.manifest_digest for r in rejected)


def test_donor_failed_moves_to_the_next_ranked_offer_and_never_back() -> None:
    net = FakeNetwork()
    rcp = make_recipient(policy=get_policy("least-loaded"))
    donors = [make_donor(f"d{i}", [image(1)], seed=40 + i) for i in range(3)]
    net.add(rcp)
    for d in donors:
        net.add(d)
    rcp.start(net.now)
    net.run(net.now + 5)
    first = of_type(net.node_of(rcp).events, DonorAcked)[0].offer.donor_id
    rcp.donor_failed("connection reset after 3 chunks", net.now)
    net.run(net.now + 5)
    acked = of_type(net.node_of(rcp).events, DonorAcked)
    assert len(acked) == 2 and acked[1].offer.donor_id != first
    failed = next(d for d in donors if d.identity.donor_id == first)
    # the failed donor overheard the new ACCEPT naming someone else and freed its slot
    assert failed.reservations == 0
    assert "superseded" in of_type(net.node_of(failed).events, ReservationEnded)[0].reason


def test_when_every_offer_fails_a_new_round_solicits_with_a_new_xid() -> None:
    net = FakeNetwork()
    rcp = make_recipient()
    donor = make_donor("only", [image(1)], seed=51)
    net.add(rcp)
    net.add(donor)
    rcp.start(net.now)
    net.run(net.now + 5)
    old_xid = rcp.xid
    rcp.donor_failed("stalled", net.now)
    net.run(net.now + 30)
    assert rcp.xid != old_xid
    # the only donor failed, so its offers in the new round are rejected: gave up eventually
    events = net.node_of(rcp).events
    assert any("failed earlier" in r.reason for r in of_type(events, OfferRejected))
    assert rcp.state in (RecipientState.SOLICITING, RecipientState.GAVE_UP)


def test_hundred_donors_answer_one_solicit_with_a_bounded_number_of_offers() -> None:
    """Bound: suppress_after (3) offers plus those sent within one network delay of each
    other. With zero latency it is exactly 3; with 1 ms latency and 100 donors spread over
    a 100 ms jitter it stays within 3 + 5."""
    for latency, bound in ((0.0, 3), (0.001, 8)):
        net = FakeNetwork(latency=latency)
        rcp = make_recipient(timers=RecipientTimers(startup_jitter=0.0))
        donors = [make_donor(f"d{i:03d}", [image(1)], seed=100 + i) for i in range(100)]
        net.add(rcp)
        for d in donors:
            net.add(d)
        rcp.start(net.now)
        net.run(net.now + 3)
        sent = sum(len(of_type(net.node_of(d).events, OfferSent)) for d in donors)
        assert 1 <= sent <= bound, (latency, sent)
        assert sum(d.skipped["suppressed (enough offers overheard)"] for d in donors) >= 100 - bound
        assert of_type(net.node_of(rcp).events, DonorAcked)
        assert sum(d.reservations for d in donors) == 1


def test_idle_donors_answer_before_loaded_ones() -> None:
    net = FakeNetwork(latency=0.0)
    rcp = make_recipient(timers=RecipientTimers(startup_jitter=0.0))
    busy = [make_donor(f"busy{i}", [image(1)], seed=200 + i) for i in range(5)]
    for d in busy:
        d.set_active_uploads(3)  # load 3/4: delay >= 0.15 s
    idle = [make_donor(f"idle{i}", [image(1)], seed=300 + i) for i in range(3)]
    net.add(rcp)
    for d in (*busy, *idle):
        net.add(d)
    rcp.start(net.now)
    net.run(net.now + 3)
    assert all(of_type(net.node_of(d).events, OfferSent) for d in idle)
    assert not any(of_type(net.node_of(d).events, OfferSent) for d in busy)


def test_donor_at_capacity_does_not_offer() -> None:
    net = FakeNetwork()
    rcp = make_recipient()
    full = make_donor("full", [image(1)], seed=61, limits=DonorLimits(capacity=2))
    full.set_active_uploads(2)
    for s in (rcp, full):
        net.add(s)
    rcp.start(net.now)
    net.run(net.now + 3)
    assert full.skipped["at capacity"] >= 1
    assert not of_type(net.node_of(full).events, OfferSent)
    assert rcp.state is RecipientState.SOLICITING


def test_exchange_works_without_a_fleet_key() -> None:
    net = FakeNetwork()
    rcp = make_recipient(key=None)
    donor = make_donor("d", [image(1)], key=None)
    net.add(rcp)
    net.add(donor)
    rcp.start(net.now)
    net.run(net.now + 3)
    assert rcp.state is RecipientState.BOUND


def test_mismatched_fleet_keys_never_bind_and_count_drops() -> None:
    net = FakeNetwork()
    rcp = make_recipient()
    donor = make_donor("d", [image(1)], key=b"x" * 32)
    net.add(rcp)
    net.add(donor)
    rcp.start(net.now)
    net.run(net.now + 3)
    assert rcp.state is RecipientState.SOLICITING
    assert donor.dropped["invalid: bad HMAC tag"] >= 1
    assert not of_type(net.node_of(donor).events, OfferSent)


def test_a_late_ack_is_released_so_the_donor_does_not_stay_full_for_its_lease() -> None:
    """Regression (rogue soak under load: recoveries gave up with "no acceptable offer
    after 8 solicit(s)"): an ACK that arrives after ``accept_timeout`` used to be dropped
    and the donor kept the reservation for its whole lease (30 s), so a loaded honest
    donor filled up with reservations nobody used and stopped offering. The recipient
    now RELEASEs a late ACK of an ACCEPT it gave up on; the donor offers again at once."""
    held: list[bytes] = []

    def hold_first_ack(sent: Sent) -> bool:
        if sent.data[8:18] == b'{"t":"ack"' and not held:
            held.append(sent.data)
            return True  # delivered late, below
        return False

    net = FakeNetwork(lose=hold_first_ack)
    timers = RecipientTimers(startup_jitter=0.0, offer_window=0.1, backoff_initial=0.2,
                             backoff_max=0.5, max_solicits=8, accept_timeout=0.5)
    rcp = make_recipient(timers=timers)
    donor = make_donor("peer", [image(1)], limits=DonorLimits(capacity=1, lease_s=30.0))
    net.add(rcp)
    dnode = net.add(donor)
    rcp.start(net.now)
    net.run(net.now + 0.6)  # offer, ACCEPT, ACK held back, accept timeout
    assert held and of_type(net.node_of(rcp).events, AcceptTimedOut)
    assert donor.reservations == 1  # the ACK's reservation, unknown to the recipient
    net.inject(held[0], dnode.addr, net.node_of(rcp).addr)  # the ACK, late
    net.run(net.now + 5)
    ended = of_type(net.node_of(donor).events, ReservationEnded)
    assert ended and ended[0].reason == "released: aborted"
    assert rcp.state is RecipientState.BOUND  # the donor offered again and ACKed
    acked = of_type(net.node_of(rcp).events, DonorAcked)
    assert len(acked) == 1 and acked[0].offer.donor_id == "peer"
    assert donor.reservations == 1
