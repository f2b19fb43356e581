"""DonorResponder alone, in virtual time, fed by a scripted recipient (real datagrams)."""

from __future__ import annotations

from typing import Any

import pytest

from fwrescue.donor.responder import DonorLimits, DonorResponder
from fwrescue.errors import ConfigError
from fwrescue.protocol.events import (
    OfferSent,
    ReservationEnded,
    ReservationGranted,
)
from fwrescue.protocol.messages import Accept, Ack, DonorKind, Nak, Offer, Release, Solicit
from fwrescue.protocol.session import GROUP
from fwrescue.protocol.states import DonorState

from .fakenet import T0, image, make_codec, make_donor

RCP = ("127.0.0.1", 6000)


class Recipient:
    def __init__(self) -> None:
        self.codec = make_codec(77)
        self.listener = make_codec(78)

    def send(self, donor: DonorResponder, msg: Any, now: float) -> None:
        donor.receive_datagram(self.codec.encode(msg, now), RCP, now)

    def read(self, donor: DonorResponder, now: float) -> list[tuple[Any, Any]]:
        return [(self.listener.decode(d, now), dest) for d, dest in donor.datagrams_to_send(now)]


def solicit(xid: int = 9, rid: str = "rcp-1", **over: Any) -> Solicit:
    fields: dict[str, Any] = dict(xid=xid, recipient_id=rid, target="bios",
                                  machine_name="board-a", installed_version=None,
                                  security_version=0, min_security_version=0)
    fields.update(over)
    return Solicit(**fields)


def accept(digest: str, xid: int = 9, rid: str = "rcp-1", donor: str = "d1") -> Accept:
    return Accept(xid=xid, recipient_id=rid, donor_id=donor, manifest_digest=digest)


def events(donor: DonorResponder) -> list[Any]:
    out = []
    while (e := donor.next_event()) is not None:
        out.append(e)
    return out


def fire(donor: DonorResponder) -> float:
    t = donor.get_timer()
    assert t is not None
    donor.handle_timer(t)
    return t


def test_donor_offers_its_best_matching_image_to_the_group_after_the_delay() -> None:
    imgs = [image(1, version="1.2"), image(2, version="1.10"), image(3, version="9.0",
            machines=("other-board",)), image(4, version="8.0", target="cpld")]
    donor = make_donor("d1", imgs)
    r = Recipient()
    r.send(donor, solicit(), T0)
    assert r.read(donor, T0) == []
    t = fire(donor)
    assert T0 <= t <= T0 + 0.1  # idle: jitter only
    (offer, dest), = r.read(donor, t)
    assert dest is GROUP and isinstance(offer, Offer)
    assert offer.manifest_digest == image(2).manifest_digest  # 1.10 > 1.2, right board/target
    assert (offer.load, offer.capacity, offer.lease_s) == (0, 4, 30.0)
    assert events(donor) == [OfferSent(xid=9, recipient_id="rcp-1",
                                       manifest_digest=image(2).manifest_digest)]


def test_declined_digests_and_the_security_floor_shape_the_offer() -> None:
    donor = make_donor("d1", [image(1, security_version=3), image(2, security_version=2)])
    r = Recipient()
    r.send(donor, solicit(declined=(image(1).manifest_digest,)), T0)
    t = fire(donor)
    (offer, _), = r.read(donor, t)
    assert offer.manifest_digest == image(2).manifest_digest
    r.send(donor, solicit(xid=10, min_security_version=3, declined=(image(1).manifest_digest,)),
           t)
    assert donor.get_timer() is None
    assert donor.skipped["no matching image"] == 1


def test_load_scales_the_offer_delay_and_consoles_wait_longer() -> None:
    limits = DonorLimits(base_delay=1.0, jitter=0.0, console_extra_delay=0.5)
    busy = make_donor("busy", [image(1)], limits=limits)
    busy.set_active_uploads(2)
    console = make_donor("cons", [image(1)], limits=limits, kind=DonorKind.CONSOLE)
    r = Recipient()
    r.send(busy, solicit(), T0)
    r.send(console, solicit(), T0)
    assert busy.get_timer() == pytest.approx(T0 + 0.5)  # 1.0 * 2/4
    assert console.get_timer() == pytest.approx(T0 + 0.5)  # idle + 0.5 extra


def test_suppression_after_overhearing_enough_offers() -> None:
    donor = make_donor("d1", [image(1)], limits=DonorLimits(suppress_after=2))
    other = make_codec(5)
    r = Recipient()
    r.send(donor, solicit(), T0)
    for i in range(2):
        offer = Offer(xid=9, recipient_id="rcp-1", donor_id=f"x{i}", donor_kind=DonorKind.PEER,
                      target="bios", manifest_digest=image(1).manifest_digest,
                      version="1.0.0", security_version=1, size=1, load=0, capacity=4,
                      transfer_url="http://10.0.0.1:80", lease_s=30.0)
        donor.receive_datagram(other.encode(offer, T0), ("127.0.0.1", 7000 + i), T0)
    t = fire(donor)
    assert r.read(donor, t) == []
    assert donor.skipped["suppressed (enough offers overheard)"] == 1
    assert donor.solicit_state("rcp-1", 9) is DonorState.SUPPRESSED


def test_overheard_older_offers_do_not_suppress_a_newer_image() -> None:
    donor = make_donor("d1", [image(2, version="1.2.0", security_version=3)],
                       limits=DonorLimits(suppress_after=1))
    other = make_codec(5)
    r = Recipient()
    r.send(donor, solicit(), T0)
    offer = Offer(xid=9, recipient_id="rcp-1", donor_id="x0", donor_kind=DonorKind.PEER,
                  target="bios", manifest_digest=image(1).manifest_digest, version="1.0.0",
                  security_version=1, size=1, load=0, capacity=4,
                  transfer_url="http://10.0.0.1:80", lease_s=30.0)
    donor.receive_datagram(other.encode(offer, T0), ("127.0.0.1", 7000), T0)
    t = fire(donor)
    offers = [m for m, _ in r.read(donor, t) if isinstance(m, Offer)]
    assert [o.version for o in offers] == ["1.2.0"]


def test_accept_naming_another_donor_cancels_the_pending_offer() -> None:
    donor = make_donor("d1", [image(1)])
    r = Recipient()
    r.send(donor, solicit(), T0)
    r.send(donor, accept(image(1).manifest_digest, donor="d2"), T0 + 0.001)
    assert donor.get_timer() is None
    assert donor.solicit_state("rcp-1", 9) is DonorState.LOST


def test_accept_is_acked_with_a_token_and_a_duplicate_gets_the_same_ack() -> None:
    donor = make_donor("d1", [image(1)])
    r = Recipient()
    r.send(donor, solicit(), T0)
    t = fire(donor)
    r.read(donor, t)
    r.send(donor, accept(image(1).manifest_digest), t + 0.1)
    (ack, dest), = r.read(donor, t + 0.1)
    assert isinstance(ack, Ack) and dest == RCP and len(ack.token) == 32
    granted = [e for e in events(donor) if isinstance(e, ReservationGranted)]
    assert granted[0].token == ack.token
    assert granted[0].image_sha256 == image(1).image_sha256
    assert granted[0].expires_at == pytest.approx(t + 0.1 + 30.0)
    r.send(donor, solicit(), t + 0.2)  # retransmitted SOLICIT: no new offer, no new slot
    r.send(donor, accept(image(1).manifest_digest), t + 0.3)  # retransmitted ACCEPT
    (again, _), = r.read(donor, t + 0.3)
    assert isinstance(again, Ack) and again.token == ack.token
    assert again.lease_expires == pytest.approx(30.0 - 0.2)
    assert donor.reservations == 1 and donor.load == 1
    assert not [e for e in events(donor) if isinstance(e, ReservationGranted)]


def test_lease_expiry_frees_the_reservation() -> None:
    donor = make_donor("d1", [image(1)], limits=DonorLimits(lease_s=5.0, capacity=1))
    r = Recipient()
    r.send(donor, accept(image(1).manifest_digest), T0)
    r.read(donor, T0)
    assert donor.load == 1
    r.send(donor, solicit(xid=11, rid="rcp-2"), T0 + 1)
    assert donor.skipped["at capacity"] == 1  # full: no offer to anyone else
    assert donor.get_timer() == pytest.approx(T0 + 5.0)
    donor.handle_timer(T0 + 5.0)
    ended = [e for e in events(donor) if isinstance(e, ReservationEnded)]
    assert [e.reason for e in ended] == ["lease expired"]
    assert donor.load == 0
    r.send(donor, solicit(xid=12, rid="rcp-2"), T0 + 6)
    assert donor.get_timer() is not None  # free again: will offer


def test_admission_control_naks_when_full_and_for_unknown_digests() -> None:
    donor = make_donor("d1", [image(1)], limits=DonorLimits(capacity=1))
    r = Recipient()
    r.send(donor, accept(image(2).manifest_digest), T0)
    (nak, _), = r.read(donor, T0)
    assert isinstance(nak, Nak) and nak.reason == "unknown manifest digest"
    r.send(donor, accept(image(1).manifest_digest, xid=1, rid="a"), T0)
    r.send(donor, accept(image(1).manifest_digest, xid=2, rid="b"), T0)
    replies = [m for m, _ in r.read(donor, T0)]
    assert isinstance(replies[0], Ack)
    assert isinstance(replies[1], Nak) and replies[1].reason == "at capacity (1/1)"
    assert donor.reservations == 1


def test_release_and_end_reservation_free_the_slot() -> None:
    donor = make_donor("d1", [image(1)])
    r = Recipient()
    r.send(donor, accept(image(1).manifest_digest, xid=1), T0)
    r.send(donor, accept(image(1).manifest_digest, xid=2), T0)
    tokens = [m.token for m, _ in r.read(donor, T0)]
    donor.end_reservation(tokens[0], T0 + 1)
    donor.end_reservation("f" * 32, T0 + 1)  # unknown: ignored, counted
    r.send(donor, Release(xid=2, recipient_id="rcp-1", donor_id="d1", outcome="recovered",
                          bytes_received=10), T0 + 2)
    ends = [e for e in events(donor) if isinstance(e, ReservationEnded)]
    assert [e.reason for e in ends] == ["ended by the transfer server", "released: recovered"]
    assert donor.reservations == 0
    assert donor.ignored["end of an unknown reservation"] == 1


def test_stray_messages_are_dropped_and_counted() -> None:
    donor = make_donor("d1", [image(1)])
    r = Recipient()
    r.send(donor, Release(xid=99, recipient_id="x", donor_id="d1", outcome="ok",
                          bytes_received=0), T0)
    r.send(donor, Release(xid=99, recipient_id="x", donor_id="d2", outcome="ok",
                          bytes_received=0), T0)
    r.send(donor, Ack(xid=1, recipient_id="x", donor_id="d1", token="0" * 32,
                      lease_expires=1.0), T0)
    donor.receive_datagram(b"FWRN\x01\x01\x00\x00", RCP, T0)
    assert donor.dropped["release for an unknown xid"] == 1
    assert donor.dropped["release for another donor"] == 1
    assert donor.dropped["ack sent to a donor"] == 1
    assert sum(v for k, v in donor.dropped.items() if k.startswith("invalid")) == 1
    assert donor.reservations == 0


def test_donor_limits_are_validated() -> None:
    with pytest.raises(ConfigError):
        DonorLimits(capacity=0)
    with pytest.raises(ConfigError):
        DonorLimits(lease_s=float("inf"))


def test_suppression_yields_to_a_recipient_that_keeps_asking() -> None:
    """Soak finding (soak/rogue.py): three rogues serving the genuine digest answer every
    solicit first; suppression must not silence the honest donor for good."""
    donor = make_donor("d1", [image(1)], limits=DonorLimits(suppress_after=2,
                                                           suppress_rounds=2))
    other = make_codec(5)
    r = Recipient()
    sent = []
    now = T0
    for xid in range(10, 14):  # four solicits in a row, each answered first by two rogues
        r.send(donor, solicit(xid=xid), now)
        for i in range(2):
            offer = Offer(xid=xid, recipient_id="rcp-1", donor_id=f"rogue{i}",
                          donor_kind=DonorKind.PEER, target="bios",
                          manifest_digest=image(1).manifest_digest, version="9",
                          security_version=9, size=1, load=0, capacity=4,
                          transfer_url="http://10.0.0.1:80", lease_s=30.0)
            donor.receive_datagram(other.encode(offer, now), ("127.0.0.1", 7000 + i), now)
        now = fire(donor)
        sent.append(bool(r.read(donor, now)))
    # quiet twice, then it offers; offering resets the count (quiet again next time)
    assert sent == [False, False, True, False]
    assert donor.skipped["suppressed (enough offers overheard)"] == 3
    # a solicit nobody else answered is offered to at once
    r.send(donor, solicit(xid=99, rid="rcp-2"), now)
    now = fire(donor)
    assert len(r.read(donor, now)) == 1
