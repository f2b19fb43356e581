"""Wire encoding: round trips, the size cap, strict decoding, HMAC and the replay window."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwrescue.errors import LocalProtocolError, RemoteProtocolError
from fwrescue.protocol.codec import MAX_DATAGRAM, Codec
from fwrescue.protocol.messages import (
    Accept,
    Ack,
    Decline,
    DonorKind,
    Message,
    Nak,
    Offer,
    Release,
    Solicit,
)

KEY = b"f" * 32
NOW = 1_700_000_000.0
ID64 = "n" * 64
HEX64 = "ab" * 32


def biggest_messages() -> list[Message]:
    """Every message type with every field at its longest realistic value."""
    return [
        Solicit(xid=2**32 - 1, recipient_id=ID64, target="t" * 64, machine_name="m" * 64,
                installed_version="v" * 64, security_version=2**32 - 1,
                min_security_version=2**32 - 1, topology="r" * 64,
                declined=tuple(f"{i:064x}" for i in range(8))),
        Offer(xid=2**32 - 1, recipient_id=ID64, donor_id=ID64, donor_kind=DonorKind.CONSOLE,
              target="t" * 64, manifest_digest=HEX64, version="v" * 64,
              security_version=2**32 - 1, size=2**48 - 1, load=65535, capacity=65535,
              transfer_url="http://" + "h" * 180 + ":65535/images", lease_s=86_400.0,
              topology="r" * 64),
        Accept(xid=1, recipient_id=ID64, donor_id=ID64, manifest_digest=HEX64),
        Ack(xid=1, recipient_id=ID64, donor_id=ID64, token="0" * 32, lease_expires=86_400.0),
        Nak(xid=1, recipient_id=ID64, donor_id=ID64, reason="x" * 200),
        Decline(xid=1, recipient_id=ID64, donor_id=ID64, manifest_digest=HEX64,
                reason="y" * 200),
        Release(xid=1, recipient_id=ID64, donor_id=ID64, outcome="o" * 32,
                bytes_received=2**48 - 1),
    ]


@pytest.mark.parametrize("key", [None, KEY])
def test_every_message_round_trips_and_fits_one_datagram(key: bytes | None) -> None:
    tx, rx = Codec(key, rng=random.Random(1)), Codec(key)
    for msg in biggest_messages():
        data = tx.encode(msg, NOW)
        assert len(data) <= MAX_DATAGRAM, (msg.TYPE, len(data))
        assert rx.decode(data, NOW + 1) == msg


def _raw(body: dict[str, object], key: bytes | None = None, version: int = 1) -> bytes:
    raw = json.dumps(body, separators=(",", ":")).encode()
    head = struct.pack("!4sBBH", b"FWRN", version, 1 if key else 0, len(raw)) + raw
    return head + hmac.new(key, head, hashlib.sha256).digest() if key else head


def _accept_body(**over: object) -> dict[str, object]:
    body: dict[str, object] = {"t": "accept", "ts": NOW, "n": "0123456789abcdef", "xid": 5,
                               "recipient_id": "r", "donor_id": "d",
                               "manifest_digest": HEX64}
    body.update(over)
    return body


def test_a_hand_built_datagram_decodes() -> None:
    msg = Codec().decode(_raw(_accept_body()), NOW)
    assert msg == Accept(xid=5, recipient_id="r", donor_id="d", manifest_digest=HEX64)


@pytest.mark.parametrize(("data", "why"), [
    (b"", "shorter than the header"),
    (b"x" * (MAX_DATAGRAM + 1), "exceeds the size cap"),
    (b"XXXX" + _raw(_accept_body())[4:], "bad magic"),
    (_raw(_accept_body(), version=2), "unsupported wire version"),
    (_raw(_accept_body())[:-1], "length mismatch"),
    (_raw(_accept_body()) + b"\x00", "length mismatch"),
    (_raw(_accept_body(t="hello")), "unknown message type"),
    (_raw(_accept_body(extra=1)), "field set does not match"),
    (_raw({k: v for k, v in _accept_body().items() if k != "donor_id"}), "field set"),
    (_raw(_accept_body(xid="5")), "wrong type"),
    (_raw(_accept_body(xid=True)), "wrong type"),
    (_raw(_accept_body(xid=2**32)), "invalid accept"),
    (_raw(_accept_body(manifest_digest="AB" * 32)), "invalid accept"),
    (_raw(_accept_body(ts="now")), "bad timestamp"),
    (_raw(_accept_body(n="short")), "bad nonce"),
    (_raw(_accept_body(ts=NOW - 31)), "outside the replay window"),
    (_raw(_accept_body(ts=NOW + 31)), "outside the replay window"),
    (_raw(_accept_body(), key=KEY), "authentication flag"),
])
def test_malformed_datagrams_raise_remote_protocol_error(data: bytes, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        Codec().decode(data, NOW)


def test_json_tricks_are_rejected() -> None:
    def frame(raw: bytes) -> bytes:
        return struct.pack("!4sBBH", b"FWRN", 1, 0, len(raw)) + raw

    for raw, why in [
        (b'{"t":"accept","t":"nak"}', "duplicate key"),
        (b'{"ts":NaN}', "non-finite"),
        (b"[" * 590 + b"]" * 590, "JSON"),
        (b"[1,2]", "not a JSON object"),
        ('{"t":"ack\u00e9"}'.encode(), "valid ASCII JSON"),
    ]:
        with pytest.raises(RemoteProtocolError, match=why):
            Codec().decode(frame(raw), NOW)


def test_hmac_is_required_and_checked_with_the_fleet_key() -> None:
    msg = Accept(xid=5, recipient_id="r", donor_id="d", manifest_digest=HEX64)
    good = Codec(KEY).encode(msg, NOW)
    assert Codec(KEY).decode(good, NOW) == msg
    with pytest.raises(RemoteProtocolError, match="bad HMAC tag"):
        Codec(b"g" * 32).decode(good, NOW)
    flipped = bytearray(good)
    flipped[20] ^= 0x01
    with pytest.raises(RemoteProtocolError, match="bad HMAC tag"):
        Codec(KEY).decode(bytes(flipped), NOW)
    with pytest.raises(RemoteProtocolError, match="authentication flag"):
        Codec(KEY).decode(Codec(None).encode(msg, NOW), NOW)


def test_replayed_datagram_is_rejected_but_a_fresh_copy_is_not() -> None:
    tx, rx = Codec(KEY), Codec(KEY)
    msg = Nak(xid=1, recipient_id="r", donor_id="d", reason="full")
    data = tx.encode(msg, NOW)
    assert rx.decode(data, NOW) == msg
    with pytest.raises(RemoteProtocolError, match="replayed"):
        rx.decode(data, NOW + 1)
    assert rx.decode(tx.encode(msg, NOW + 1), NOW + 1) == msg  # new nonce
    with pytest.raises(RemoteProtocolError, match="outside the replay window"):
        rx.decode(data, NOW + 31)  # once stale, the window check catches it


def test_a_failed_decode_does_not_record_the_nonce() -> None:
    rx = Codec()
    bad = _raw(_accept_body(xid=-1))
    with pytest.raises(RemoteProtocolError):
        rx.decode(bad, NOW)
    rx.decode(_raw(_accept_body()), NOW)  # same sender and nonce, now valid: accepted


def test_declined_list_is_capped_so_the_worst_solicit_still_fits() -> None:
    big = Solicit(xid=1, recipient_id=ID64, target="t" * 64, machine_name="m" * 64,
                  installed_version="v" * 64, security_version=1, min_security_version=1,
                  topology="r" * 64, declined=tuple(f"{i:064x}" for i in range(8)))
    assert len(Codec(KEY).encode(big, NOW)) <= MAX_DATAGRAM  # the realistic worst case fits
    with pytest.raises(LocalProtocolError):
        Solicit(xid=1, recipient_id="r", target="t", machine_name="m", installed_version=None,
                security_version=1, min_security_version=1,
                declined=tuple(f"{i:064x}" for i in range(9)))


@pytest.mark.parametrize("bad", [
    {"xid": -1}, {"recipient_id": ""}, {"recipient_id": "a b"}, {"target": "x" * 65},
    {"installed_version": "../etc"}, {"security_version": True}, {"declined": ["zz"]},
])
def test_message_constructors_validate_every_field(bad: dict[str, object]) -> None:
    fields: dict[str, object] = dict(xid=1, recipient_id="r", target="bios",
                                     machine_name="b", installed_version="1.0",
                                     security_version=1, min_security_version=0)
    fields.update(bad)
    if "declined" in fields:
        fields["declined"] = tuple(fields["declined"])  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        Solicit(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["ftp://h/x", "http://", "http://h:99999", "http://h/a b",
                                 "http://" + "h" * 200, "javascript:alert(1)"])
def test_offer_rejects_bad_transfer_urls(url: str) -> None:
    with pytest.raises(LocalProtocolError, match="transfer_url"):
        Offer(xid=1, recipient_id="r", donor_id="d", donor_kind=DonorKind.PEER, target="b",
              manifest_digest=HEX64, version="1", security_version=1, size=1, load=0,
              capacity=1, transfer_url=url, lease_s=1.0)


_valid = [Codec(key, rng=random.Random(3)).encode(m, NOW)
          for key in (None, KEY) for m in biggest_messages()]


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=1400),
    st.builds(lambda i, pos, b: _mutate(_valid[i % len(_valid)], pos, b),
              st.integers(0, 100), st.integers(0, 1300), st.binary(min_size=1, max_size=8)),
    st.builds(lambda i, n: _valid[i % len(_valid)][:n], st.integers(0, 100),
              st.integers(0, 1300)),
))
def test_fuzzed_datagrams_only_ever_raise_remote_protocol_error(data: bytes) -> None:
    for codec in (Codec(None), Codec(KEY)):
        with contextlib.suppress(RemoteProtocolError):
            codec.decode(data, NOW)


def _mutate(data: bytes, pos: int, patch: bytes) -> bytes:
    pos %= len(data) + 1
    return data[:pos] + patch + data[pos + len(patch):]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["t", "ts", "n", "xid", "recipient_id", "donor_id",
                                        "manifest_digest", "token", "reason", "declined"]),
                       st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                                    | st.text(max_size=20),
                                    lambda c: st.lists(c, max_size=3)
                                    | st.dictionaries(st.text(max_size=5), c, max_size=3),
                                    max_leaves=8)))
def test_fuzzed_json_bodies_only_ever_raise_remote_protocol_error(body: dict[str, object]) -> None:
    try:
        raw = json.dumps(body).encode()
    except ValueError:
        return
    frame = struct.pack("!4sBBH", b"FWRN", 1, 0, len(raw) % 65536) + raw
    with contextlib.suppress(RemoteProtocolError):
        Codec().decode(frame, NOW)
