"""OFFER ``held``, the REPORT message and the fleet circuit breaker, in virtual time."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from fwrescue.donor.responder import DonorLimits, OfferableImage
from fwrescue.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from fwrescue.protocol.breaker import CircuitBreaker
from fwrescue.protocol.codec import MAX_DATAGRAM, Codec
from fwrescue.protocol.events import ImageWithheld
from fwrescue.protocol.messages import DonorKind, Nak, Offer, Report, ReportOutcome

from .fakenet import T0, image, make_donor
from .test_proto_donor import Recipient, accept, events, fire, solicit

KEY = b"k" * 32
ID64 = "n" * 64
HEX64 = "ab" * 32


def biggest_offer(held: int | None) -> Offer:
    return Offer(xid=2**32 - 1, recipient_id=ID64, donor_id=ID64, donor_kind=DonorKind.PEER,
                 target="t" * 64, manifest_digest=HEX64, version="v" * 64,
                 security_version=2**32 - 1, size=2**48 - 1, load=65535, capacity=65535,
                 transfer_url="http://" + "h" * 180 + ":65535/images", lease_s=86_400.0,
                 topology="r" * 64, held=held)


@pytest.mark.parametrize("held", [None, 1, 2**24])
def test_offer_held_round_trips_within_one_datagram(held: int | None) -> None:
    offer = biggest_offer(held)
    data = Codec(KEY, rng=random.Random(1)).encode(offer, 100.0)
    assert len(data) <= MAX_DATAGRAM
    assert Codec(KEY).decode(data, 100.0) == offer


@pytest.mark.parametrize("held", [0, -1, 2**24 + 1, True, 1.5])
def test_offer_held_out_of_range_is_refused(held: object) -> None:
    with pytest.raises(LocalProtocolError, match="held"):
        biggest_offer(held)  # type: ignore[arg-type]


def test_offer_held_of_the_wrong_wire_type_is_a_remote_error() -> None:
    tx = Codec(None, rng=random.Random(2))
    data = bytearray(tx.encode(biggest_offer(5), 100.0))
    text = data[8:].decode().replace('"held":5', '"held":"5"')
    raw = text.encode()
    head = b"FWRN\x01\x00" + len(raw).to_bytes(2, "big")
    with pytest.raises(RemoteProtocolError, match="wrong type"):
        Codec(None).decode(head + raw, 100.0)


def report(rid: str = "rcp-1", outcome: ReportOutcome = ReportOutcome.BOOT_FAILED,
           digest: str = HEX64) -> Report:
    return Report(xid=7, recipient_id=rid, target="bios", manifest_digest=digest,
                  outcome=outcome)


@pytest.mark.parametrize("outcome", list(ReportOutcome))
def test_report_round_trips(outcome: ReportOutcome) -> None:
    msg = Report(xid=2**32 - 1, recipient_id=ID64, target="t" * 64, manifest_digest=HEX64,
                 outcome=outcome)
    data = Codec(KEY, rng=random.Random(3)).encode(msg, 5.0)
    assert len(data) <= MAX_DATAGRAM
    decoded = Codec(KEY).decode(data, 5.0)
    assert decoded == msg and isinstance(decoded, Report)
    assert json.loads(data[8:-32])["outcome"] == outcome.value


def test_report_with_an_unknown_outcome_is_refused_on_the_wire() -> None:
    data = Codec(None, rng=random.Random(4)).encode(report(), 5.0)
    raw = data[8:].replace(b"boot_failed", b"exploded!!!")
    head = b"FWRN\x01\x00" + len(raw).to_bytes(2, "big")
    with pytest.raises(RemoteProtocolError, match="outcome"):
        Codec(None).decode(head + raw, 5.0)
    with pytest.raises(LocalProtocolError, match="outcome"):
        Report(xid=1, recipient_id="r", target="bios", manifest_digest=HEX64,
               outcome="booted")  # type: ignore[arg-type]


def test_breaker_counts_distinct_recipients_and_trips_once() -> None:
    breaker = CircuitBreaker(threshold=3)
    assert breaker.record(report("a"), 1.0) is None
    assert breaker.record(report("a"), 2.0) is None  # the same recipient again
    assert breaker.record(report("b", ReportOutcome.BOOTED), 3.0) is None
    assert breaker.record(report("b"), 4.0) is None
    assert breaker.failures(HEX64) == 2 and not breaker.is_withheld(HEX64)
    trip = breaker.record(report("c"), 5.0)
    assert trip is not None and trip.failures == 3 and trip.recipients == ("a", "b", "c")
    assert trip.at == 5.0 and breaker.is_withheld(HEX64)
    assert breaker.record(report("d"), 6.0) is None  # tripped already: reported once
    assert breaker.record(report("e", ReportOutcome.BOOTED), 7.0) is None
    assert breaker.is_withheld(HEX64)  # a success does not close it
    assert not breaker.is_withheld("cd" * 32)


def test_breaker_memory_is_bounded_and_limits_validated() -> None:
    breaker = CircuitBreaker(threshold=2, max_digests=2)
    for n in range(5):
        breaker.record(report("a", digest=f"{n:064x}"), float(n))
    assert breaker.failures(f"{0:064x}") == 0  # forgotten, oldest first
    assert breaker.failures(f"{4:064x}") == 1
    for bad in (0, -1, True, 10_001):
        with pytest.raises(ConfigError):
            CircuitBreaker(threshold=bad)
    with pytest.raises(ConfigError):
        DonorLimits(breaker_threshold=0)


def test_donor_withholds_an_image_after_n_failed_boots_and_naks_it() -> None:
    bad, good = image(1, version="2.0"), image(2, version="1.0")
    donor = make_donor("d1", [bad, good], limits=DonorLimits(breaker_threshold=2))
    r = Recipient()
    for rid in ("x1", "x2"):
        r.send(donor, report(rid, digest=bad.manifest_digest), T0)
    (withheld,) = [e for e in events(donor) if isinstance(e, ImageWithheld)]
    assert withheld.manifest_digest == bad.manifest_digest and withheld.failures == 2
    r.send(donor, solicit(), T0)
    t = fire(donor)
    (offer, _), = r.read(donor, t)
    assert offer.manifest_digest == good.manifest_digest  # the newest is withheld
    r.send(donor, accept(bad.manifest_digest), t)
    (nak, _), = r.read(donor, t)
    assert isinstance(nak, Nak) and "circuit breaker" in nak.reason


def test_partial_image_is_offered_with_held_and_a_complete_one_is_preferred() -> None:
    partial = dataclasses.replace(image(1), held=7)
    donor = make_donor("d1", [partial])
    r = Recipient()
    r.send(donor, solicit(), T0)
    (offer, _), = r.read(donor, fire(donor))
    assert offer.held == 7
    both = make_donor("d2", [partial, image(1)], seed=5)
    r.send(both, solicit(xid=10), T0)
    (offer, _), = r.read(both, fire(both))
    assert offer.held is None


def test_deferred_offer_goes_out_once_the_image_arrives_and_survives_retransmits() -> None:
    held: list[OfferableImage] = []
    donor = make_donor("d1", held, limits=DonorLimits(defer_s=2.0, recheck_s=0.1))
    donor._catalog = lambda: held  # a partial donor that holds nothing yet
    r = Recipient()
    r.send(donor, solicit(), T0)
    assert donor.get_timer() == pytest.approx(T0 + 0.1)  # re-checks while deferred
    donor.handle_timer(T0 + 0.1)
    assert r.read(donor, T0 + 0.1) == []  # still nothing to offer
    assert donor.skipped["no matching image (deferred)"] == 1
    r.send(donor, solicit(), T0 + 1.5)  # the recipient's retransmit keeps it waiting
    held.append(dataclasses.replace(image(1), held=1))  # the first chunk verified
    t = T0 + 2.5  # past the first deadline, within the refreshed one
    donor.handle_timer(t)
    t = fire(donor)
    (offer, _), = r.read(donor, t)
    assert offer.held == 1 and offer.xid == 9


def test_offers_never_outnumber_free_slots() -> None:
    donor = make_donor("d1", [image(1)], limits=DonorLimits(capacity=2))
    r = Recipient()
    sent = []
    for n in range(4):
        r.send(donor, solicit(xid=20 + n, rid=f"r{n}"), T0)
    t = T0 + 1.0
    donor.handle_timer(t)
    sent = [m for m, _ in r.read(donor, t) if isinstance(m, Offer)]
    assert len(sent) == 2
    assert donor.skipped["at capacity (offers outstanding)"] == 2
