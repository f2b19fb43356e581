"""RecipientSession alone, in virtual time, fed by a scripted donor (real datagrams)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from fwrescue.errors import LocalProtocolError
from fwrescue.protocol.codec import Codec
from fwrescue.protocol.events import (
    AcceptTimedOut,
    DonorAcked,
    DonorNaked,
    DonorSelected,
    GaveUp,
    OfferReceived,
    OfferRejected,
    SolicitSent,
)
from fwrescue.protocol.messages import Accept, Ack, Decline, DonorKind, Nak, Offer, Solicit
from fwrescue.protocol.policy import get_policy
from fwrescue.protocol.recipient import RecipientSession, RecipientTimers
from fwrescue.protocol.session import GROUP
from fwrescue.protocol.states import RecipientState

from .fakenet import T0, image, make_codec, make_recipient

DONOR = ("127.0.0.1", 5000)


def xid_of(rcp: RecipientSession) -> int:
    assert rcp.xid is not None
    return rcp.xid


def state_of(rcp: RecipientSession) -> RecipientState:
    return rcp.state


def timer_of(rcp: RecipientSession) -> float:
    t = rcp.get_timer()
    assert t is not None
    return t


def drain(rcp: RecipientSession) -> list[Any]:
    out = []
    while (e := rcp.next_event()) is not None:
        out.append(e)
    return out


def sent(rcp: RecipientSession, now: float, peer: Codec) -> list[tuple[Any, Any]]:
    return [(peer.decode(data, now), dest) for data, dest in rcp.datagrams_to_send(now)]


class Script:
    """A scripted donor speaking through its own codec."""

    def __init__(self) -> None:
        self.codec = make_codec(99)
        self.listener = make_codec(98)  # decodes what the recipient sends

    def offer(self, rcp: RecipientSession, now: float, donor_id: str = "d1",
              port: int = 5000, **fields: Any) -> None:
        img = image(int(fields.pop("n", 1)))
        base: dict[str, Any] = dict(
            xid=xid_of(rcp), recipient_id=rcp.identity.node_id, donor_id=donor_id,
            donor_kind=DonorKind.PEER, target="bios", manifest_digest=img.manifest_digest,
            version="1.0.0", security_version=1, size=img.size, load=0, capacity=4,
            transfer_url="http://127.0.0.1:8080", lease_s=30.0, topology="r1")
        base.update(fields)
        rcp.receive_datagram(self.codec.encode(Offer(**base), now), ("127.0.0.1", port), now)

    def reply(self, rcp: RecipientSession, now: float, msg: Ack | Nak) -> None:
        rcp.receive_datagram(self.codec.encode(msg, now), DONOR, now)


def started(timers: RecipientTimers | None = None, **kw: Any) -> tuple[RecipientSession, float]:
    rcp = make_recipient(timers=timers or RecipientTimers(), **kw)
    rcp.start(T0)
    t = rcp.get_timer()
    assert t is not None
    rcp.handle_timer(t)
    return rcp, t


def test_startup_jitter_stays_within_bounds_and_follows_the_rng() -> None:
    for seed in range(50):
        rcp = make_recipient(seed=seed)
        rcp.start(T0)
        timer = rcp.get_timer()
        assert timer is not None and T0 <= timer <= T0 + 1.0
        assert timer == T0 + random.Random(seed).uniform(0.0, 1.0)
        assert rcp.datagrams_to_send(T0) == []  # nothing before the jitter elapses


def test_backoff_schedule_has_exact_deadlines_then_gives_up() -> None:
    seed = 7
    timers = RecipientTimers()
    rcp = make_recipient(seed=seed, timers=timers)
    listener = make_codec(98)
    rcp.start(T0)
    # Replay the documented draw order: jitter, xid, then one factor per SOLICIT.
    rng = random.Random(seed)
    expected = [T0 + rng.uniform(0.0, 1.0)]
    xid = rng.getrandbits(32)
    intervals = []
    for attempt in range(1, 9):
        base = min(1.0 * 2 ** (attempt - 1), 16.0)
        interval = base * (1 + rng.uniform(-0.25, 0.25))
        assert 0.75 * base <= interval <= 1.25 * base
        intervals.append(interval)
        expected.append(expected[-1] + interval)
    observed = []
    for _ in range(20):  # bounded: 8 solicits + give-up
        t = rcp.get_timer()
        if t is None:
            break
        rcp.handle_timer(t)
        for msg, dest in sent(rcp, t, listener):
            assert isinstance(msg, Solicit) and dest is GROUP and msg.xid == xid
            observed.append(t)
    assert observed == pytest.approx(expected[:8], abs=1e-9)
    events = drain(rcp)
    assert [e.attempt for e in events if isinstance(e, SolicitSent)] == list(range(1, 9))
    gave_up = [e for e in events if isinstance(e, GaveUp)]
    assert len(gave_up) == 1 and "8 solicit" in gave_up[0].reason
    assert state_of(rcp) is RecipientState.GAVE_UP
    assert rcp.get_timer() is None


def test_max_solicits_limits_the_attempts() -> None:
    rcp = make_recipient(timers=RecipientTimers(max_solicits=2))
    rcp.start(T0)
    for _ in range(10):
        t = rcp.get_timer()
        if t is None:
            break
        rcp.handle_timer(t)
    events = drain(rcp)
    assert len([e for e in events if isinstance(e, SolicitSent)]) == 2
    assert isinstance(events[-1], GaveUp)


def test_offers_are_collected_until_the_offer_window_closes() -> None:
    script = Script()
    rcp, t1 = started(policy=get_policy("least-loaded"))
    rcp.datagrams_to_send(t1)
    script.offer(rcp, t1 + 0.1, "busy", load=3)
    assert rcp.get_timer() == pytest.approx(t1 + 0.5)
    assert not [e for e in drain(rcp) if isinstance(e, DonorSelected)]
    script.offer(rcp, t1 + 0.3, "idle", port=5001, load=0)
    rcp.handle_timer(t1 + 0.5)
    selected = [e for e in drain(rcp) if isinstance(e, DonorSelected)]
    assert [s.offer.donor_id for s in selected] == ["idle"]
    msgs = sent(rcp, t1 + 0.5, script.listener)
    assert len(msgs) == 1
    accept, dest = msgs[0]
    assert isinstance(accept, Accept) and accept.donor_id == "idle" and dest is GROUP
    assert state_of(rcp) is RecipientState.ACCEPTING


def test_zero_offer_window_takes_the_first_acceptable_offer() -> None:
    script = Script()
    rcp, t1 = started(RecipientTimers(offer_window=0.0))
    script.offer(rcp, t1 + 0.01, "first")
    assert state_of(rcp) is RecipientState.ACCEPTING
    assert [e.offer.donor_id for e in drain(rcp) if isinstance(e, DonorSelected)] == ["first"]


def test_enough_offers_closes_the_window_early() -> None:
    script = Script()
    rcp, t1 = started(RecipientTimers(enough_offers=2))
    script.offer(rcp, t1 + 0.01, "a")
    assert state_of(rcp) is RecipientState.SOLICITING
    script.offer(rcp, t1 + 0.02, "b", port=5001)
    assert state_of(rcp) is RecipientState.ACCEPTING


def test_offer_after_the_window_with_none_before_is_taken_at_once() -> None:
    script = Script()
    rcp, t1 = started()
    rcp.handle_timer(t1 + 0.6)  # window passed with no offers: nothing happens
    assert state_of(rcp) is RecipientState.SOLICITING
    script.offer(rcp, t1 + 0.7, "late")
    assert state_of(rcp) is RecipientState.ACCEPTING


def test_accept_timeout_moves_to_the_next_ranked_offer() -> None:
    script = Script()
    rcp, t1 = started()
    script.offer(rcp, t1 + 0.1, "silent", port=5000)
    script.offer(rcp, t1 + 0.2, "backup", port=5001)
    rcp.handle_timer(t1 + 0.5)
    rcp.datagrams_to_send(t1 + 0.5)
    deadline = timer_of(rcp)
    assert deadline == pytest.approx(t1 + 0.5 + 1.0)
    rcp.handle_timer(deadline - 0.01)  # early wake-ups change nothing
    assert state_of(rcp) is RecipientState.ACCEPTING
    rcp.handle_timer(deadline)
    events = drain(rcp)
    timed_out = [e for e in events if isinstance(e, AcceptTimedOut)]
    assert [e.offer.donor_id for e in timed_out] == ["silent"]
    selected = [e for e in events if isinstance(e, DonorSelected)]
    assert selected[-1].offer.donor_id == "backup"
    assert "next-ranked after" in selected[-1].reason
    (accept, _), = sent(rcp, deadline, script.listener)
    assert isinstance(accept, Accept) and accept.donor_id == "backup"
    # a late ACK from the silent donor is dropped and counted, never raised
    script.reply(rcp, deadline + 0.1, Ack(xid=xid_of(rcp), recipient_id="rcp-1", donor_id="silent",
                                          token="a" * 32, lease_expires=30.0))
    assert rcp.dropped["ack from a donor we did not accept"] == 1
    assert state_of(rcp) is RecipientState.ACCEPTING


def test_nak_moves_to_the_next_offer_and_ack_binds() -> None:
    script = Script()
    rcp, t1 = started()
    script.offer(rcp, t1 + 0.1, "full", port=5000)
    script.offer(rcp, t1 + 0.2, "free", port=5001)
    rcp.handle_timer(t1 + 0.5)
    script.reply(rcp, t1 + 0.6, Nak(xid=xid_of(rcp), recipient_id="rcp-1", donor_id="full",
                                    reason="at capacity (4/4)"))
    script.reply(rcp, t1 + 0.7, Ack(xid=xid_of(rcp), recipient_id="rcp-1", donor_id="free",
                                    token="b" * 32, lease_expires=30.0))
    events = drain(rcp)
    assert [e.reason for e in events if isinstance(e, DonorNaked)] == ["at capacity (4/4)"]
    acked = [e for e in events if isinstance(e, DonorAcked)]
    assert len(acked) == 1 and acked[0].token == "b" * 32
    assert acked[0].lease_expires_at == pytest.approx(t1 + 0.7 + 30.0)
    assert state_of(rcp) is RecipientState.BOUND


def test_offers_are_filtered_before_policy_with_reasons() -> None:
    script = Script()
    rcp, t1 = started(min_security_version=2)
    xid = rcp.xid
    assert xid is not None
    script.offer(rcp, t1 + 0.01, "old-xid", xid=(xid + 1) % 2**32, security_version=5)
    script.offer(rcp, t1 + 0.02, "cpld", target="cpld", security_version=5)
    script.offer(rcp, t1 + 0.03, "rollback", security_version=1)
    script.offer(rcp, t1 + 0.04, "ok", security_version=2)
    script.offer(rcp, t1 + 0.05, "ok", security_version=2)
    events = drain(rcp)
    assert len([e for e in events if isinstance(e, OfferReceived)]) == 5
    reasons = {e.offer.donor_id: e.reason for e in events if isinstance(e, OfferRejected)}
    assert reasons["old-xid"].startswith("stale xid")
    assert reasons["cpld"] == "wrong target 'cpld' (want 'bios')"
    assert reasons["rollback"] == "security_version 1 below minimum 2"
    assert reasons["ok"] == "duplicate offer from donor ok in this round"
    rcp.handle_timer(t1 + 0.5)
    assert [e.offer.donor_id for e in drain(rcp) if isinstance(e, DonorSelected)] == ["ok"]


def test_offers_for_other_recipients_are_ignored_not_rejected() -> None:
    script = Script()
    rcp, t1 = started()
    script.offer(rcp, t1 + 0.01, "d", recipient_id="rcp-2")
    script.offer(rcp, t1 + 0.01, "d", recipient_id="rcp-10")  # our id is a prefix of it
    assert not drain(rcp)[1:]  # only the SolicitSent from start-up
    # Storm control drops them before parsing; nothing addressed to us is ever dropped.
    assert rcp.ignored["not addressed to us (prefilter)"] == 2
    assert not rcp.dropped


def test_out_of_state_and_malformed_datagrams_are_dropped_and_counted() -> None:
    script = Script()
    rcp, t1 = started()
    xid = rcp.xid
    assert xid is not None
    ack = Ack(xid=xid, recipient_id="rcp-1", donor_id="d1", token="c" * 32, lease_expires=5.0)
    script.reply(rcp, t1 + 0.01, ack)  # no ACCEPT sent yet
    script.reply(rcp, t1 + 0.02, Ack(xid=(xid + 7) % 2**32, recipient_id="rcp-1",
                                     donor_id="d1", token="c" * 32, lease_expires=5.0))
    rcp.receive_datagram(b"\x00bad", DONOR, t1 + 0.03)
    rcp.receive_datagram(script.codec.encode(ack, t1 + 0.04)[:-1], DONOR, t1 + 0.04)
    assert rcp.dropped["ack out of state (soliciting)"] == 1
    assert rcp.dropped["ack for an unknown xid"] == 1
    assert rcp.dropped["invalid: datagram shorter than the header"] == 1
    assert rcp.dropped["invalid: length mismatch (truncated or trailing bytes)"] == 1
    assert state_of(rcp) is RecipientState.SOLICITING


def test_late_offers_become_fallbacks_after_the_ranked_list_runs_out() -> None:
    script = Script()
    rcp, t1 = started(RecipientTimers(offer_window=0.0))
    script.offer(rcp, t1 + 0.01, "first", port=5000)
    script.offer(rcp, t1 + 0.02, "late", port=5001)
    script.reply(rcp, t1 + 0.03, Nak(xid=xid_of(rcp), recipient_id="rcp-1", donor_id="first",
                                     reason="unknown manifest digest"))
    selected = [e for e in drain(rcp) if isinstance(e, DonorSelected)]
    assert [s.offer.donor_id for s in selected] == ["first", "late"]
    assert state_of(rcp) is RecipientState.ACCEPTING


def test_api_misuse_poisons_the_session() -> None:
    rcp, t1 = started()
    with pytest.raises(LocalProtocolError):
        rcp.release("recovered", 0, t1)
    assert state_of(rcp) is RecipientState.ERROR
    with pytest.raises(LocalProtocolError):
        rcp.start(t1)
    assert state_of(rcp) is RecipientState.ERROR
    rcp.receive_datagram(b"anything", DONOR, t1)
    assert rcp.dropped["session not active"] == 1
    rcp.handle_timer(t1 + 100)
    assert rcp.datagrams_to_send(t1 + 100) == []


@pytest.mark.parametrize("call", ["donor_failed", "decline", "reject_carrier", "release"])
def test_bound_without_an_accepted_offer_raises_the_protocol_error_even_under_O(
        call: str) -> None:
    script = Script()
    rcp, t1 = started()
    script.offer(rcp, t1 + 0.1, "free", port=5001)
    rcp.handle_timer(t1 + 0.5)
    script.reply(rcp, t1 + 0.6, Ack(xid=xid_of(rcp), recipient_id="rcp-1", donor_id="free",
                                    token="b" * 32, lease_expires=30.0))
    assert state_of(rcp) is RecipientState.BOUND
    rcp._current = None  # an invariant broken by a bug: a real check, not an assert
    args: tuple[object, ...] = ("recovered", 0, t1) if call == "release" else ("why", t1)
    with pytest.raises(LocalProtocolError, match="bound without an accepted offer"):
        getattr(rcp, call)(*args)
    assert state_of(rcp) is RecipientState.ERROR

def test_solicit_carries_identity_and_declined_digests() -> None:
    script = Script()
    rcp, t1 = started(RecipientTimers(offer_window=0.0))
    (solicit, dest), = sent(rcp, t1, script.listener)
    assert isinstance(solicit, Solicit) and dest is GROUP
    assert (solicit.target, solicit.machine_name, solicit.installed_version) == (
        "bios", "board-a", "1.0.0")
    script.offer(rcp, t1 + 0.01, "d1", n=5)
    script.reply(rcp, t1 + 0.02, Ack(xid=xid_of(rcp), recipient_id="rcp-1", donor_id="d1",
                                     token="d" * 32, lease_expires=30.0))
    rcp.decline("bad signature", t1 + 1)
    rcp.handle_timer(rcp.get_timer() or 0.0)
    msgs = [m for m, _ in sent(rcp, rcp.get_timer() or 0.0, script.listener)]
    again = [m for m in msgs if isinstance(m, Solicit)]
    assert again and again[-1].declined == (image(5).manifest_digest,)


def test_a_bad_carrier_is_declined_but_its_digest_stays_acceptable_from_others() -> None:
    script = Script()
    rcp, t1 = started(RecipientTimers(offer_window=0.0))
    sent(rcp, t1, script.listener)
    script.offer(rcp, t1 + 0.01, "d1", n=5)
    script.reply(rcp, t1 + 0.02, Ack(xid=xid_of(rcp), recipient_id="rcp-1", donor_id="d1",
                                     token="d" * 32, lease_expires=30.0))
    rcp.reject_carrier("chunk 2 does not match", t1 + 1)
    out = sent(rcp, t1 + 1, script.listener)
    declines = [m for m, _ in out if isinstance(m, Decline)]
    assert declines and declines[0].donor_id == "d1"
    assert rcp.declined_digests == ()
