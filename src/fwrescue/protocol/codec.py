"""Wire encoding of negotiation messages: versioned, size-capped, strict, optionally HMAC'd.

Layout of one datagram (at most :data:`MAX_DATAGRAM` bytes)::

    offset  size  field
    0       4     magic  b"FWRN"
    4       1     wire version (1)
    5       1     flags: bit 0 = a 32-byte HMAC-SHA256 tag follows the body
    6       2     body length n (big-endian)
    8       n     body: ASCII compact JSON object
    8+n     32    tag = HMAC-SHA256(fleet_key, bytes[0 : 8+n])   (iff flag bit 0)

The body holds ``t`` (message type), ``ts`` (sender's wall-clock seconds), ``n`` (a
16-hex-digit nonce) and exactly the message's fields — no more, no fewer.

:meth:`Codec.decode` checks, in this order, and raises
:class:`~fwrescue.errors.RemoteProtocolError` at the first failure: size cap, header, magic,
version, flags (a tag iff a fleet key is configured), exact length (no trailing bytes),
the tag (before any parsing), JSON syntax (no NaN/Infinity, no duplicate keys), message
type, field set and types, field values, the timestamp window and the (sender, nonce)
replay cache. A message that fails changes nothing (the nonce is recorded only on success).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import re
import struct
from collections import OrderedDict
from typing import Any, Final

from fwrescue.errors import LocalProtocolError, RemoteProtocolError
from fwrescue.trust.digests import digests_match

from .messages import (
    Accept,
    Ack,
    Decline,
    DonorKind,
    Message,
    Nak,
    Offer,
    Release,
    Report,
    ReportOutcome,
    Solicit,
)

__all__ = ["MAGIC", "MAX_DATAGRAM", "WIRE_VERSION", "Codec"]

MAGIC: Final = b"FWRN"
WIRE_VERSION: Final = 1
# One datagram fits any IPv6 path (minimum MTU 1280 minus headers) without fragmentation.
MAX_DATAGRAM: Final = 1200
_HEADER = struct.Struct("!4sBBH")
_TAG_LEN = 32
_FLAG_HMAC = 0x01
# Replay cache bound: a fleet of thousands sending a few messages per window fits easily.
MAX_REPLAY_ENTRIES: Final = 65_536
_NONCE = re.compile(r"[0-9a-f]{16}")

_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (Solicit, Offer, Accept, Ack, Nak, Decline, Release, Report)
}

# Wire kind of every field: the decoder checks JSON types against these before construction.
_INT, _STR, _OPT_STR, _NUM, _STR_LIST, _KIND = "int", "str", "str?", "num", "[str]", "kind"
_OPT_INT, _OUTCOME = "int?", "outcome"
_SCHEMA: dict[type[Message], dict[str, str]] = {
    Solicit: {"xid": _INT, "recipient_id": _STR, "target": _STR, "machine_name": _STR,
              "installed_version": _OPT_STR, "security_version": _INT,
              "min_security_version": _INT, "topology": _OPT_STR, "declined": _STR_LIST},
    Offer: {"xid": _INT, "recipient_id": _STR, "donor_id": _STR, "donor_kind": _KIND,
            "target": _STR, "manifest_digest": _STR, "version": _STR,
            "security_version": _INT, "size": _INT, "load": _INT, "capacity": _INT,
            "transfer_url": _STR, "lease_s": _NUM, "topology": _OPT_STR, "held": _OPT_INT},
    Accept: {"xid": _INT, "recipient_id": _STR, "donor_id": _STR, "manifest_digest": _STR},
    Ack: {"xid": _INT, "recipient_id": _STR, "donor_id": _STR, "token": _STR,
          "lease_expires": _NUM},
    Nak: {"xid": _INT, "recipient_id": _STR, "donor_id": _STR, "reason": _STR},
    Decline: {"xid": _INT, "recipient_id": _STR, "donor_id": _STR, "manifest_digest": _STR,
              "reason": _STR},
    Release: {"xid": _INT, "recipient_id": _STR, "donor_id": _STR, "outcome": _STR,
              "bytes_received": _INT},
    Report: {"xid": _INT, "recipient_id": _STR, "target": _STR, "manifest_digest": _STR,
             "outcome": _OUTCOME},
}


def _bad(message: str, **fields: object) -> RemoteProtocolError:
    return RemoteProtocolError(message, **fields)


def _reject_constant(name: str) -> Any:
    raise _bad("non-finite number in datagram", constant=name)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _bad("duplicate key in datagram", key=key[:40])
        result[key] = value
    return result


def _tag(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _check_kind(name: str, kind: str, value: object) -> object:
    """Check the JSON type of one field and convert lists/enums; raise RemoteProtocolError."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == _INT and is_int:
        return value
    if kind == _STR and isinstance(value, str):
        return value
    if kind == _OPT_STR and (value is None or isinstance(value, str)):
        return value
    if kind == _OPT_INT and (value is None or is_int):
        return value
    if kind == _NUM and (is_int or isinstance(value, float)):
        return value
    if kind == _STR_LIST and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if kind == _KIND and isinstance(value, str):
        try:
            return DonorKind(value)
        except ValueError:
            pass
    if kind == _OUTCOME and isinstance(value, str):
        try:
            return ReportOutcome(value)
        except ValueError:
            pass
    raise _bad("wrong type for field", field=name, expected=kind)


class Codec:
    """Encodes and strictly decodes datagrams; holds the replay cache of one endpoint.

    ``fleet_key`` (16..64 bytes) turns on HMAC-SHA256 authentication: every datagram must
    then carry a valid tag and datagrams without one are rejected (and vice versa).
    ``replay_window_s`` (``None`` = off) bounds ``|ts - now|`` and is how long a
    (sender, nonce) pair is remembered. Without a fleet key the window still drops stale
    and duplicated datagrams but is no defence against a forger. ``rng`` draws nonces;
    the default is :class:`random.SystemRandom`.

    ``now`` everywhere is wall-clock seconds (``time.time()``): timestamps cross machines.
    """

    def __init__(
        self,
        fleet_key: bytes | None = None,
        replay_window_s: float | None = 30.0,
        *,
        rng: random.Random | None = None,
        max_replay_entries: int = MAX_REPLAY_ENTRIES,
    ) -> None:
        if fleet_key is not None and not (
            isinstance(fleet_key, bytes) and 16 <= len(fleet_key) <= 64
        ):
            raise LocalProtocolError("fleet_key must be 16..64 bytes")
        if replay_window_s is not None and not (
            math.isfinite(replay_window_s) and replay_window_s > 0
        ):
            raise LocalProtocolError("replay_window_s must be positive seconds or None")
        if max_replay_entries < 1:
            raise LocalProtocolError("max_replay_entries must be at least 1")
        self._key = fleet_key
        self._window = replay_window_s
        self._rng = rng if rng is not None else random.SystemRandom()
        self._max_seen = max_replay_entries
        # (sender, nonce) -> ts, in arrival order; purged once outside the window.
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    @property
    def authenticated(self) -> bool:
        return self._key is not None

    def encode(self, msg: Message, now: float) -> bytes:
        """Serialize ``msg`` stamped with ``now`` and a fresh nonce.

        Raises LocalProtocolError if the result would exceed :data:`MAX_DATAGRAM`.
        """
        body: dict[str, Any] = {"t": msg.TYPE, "ts": round(float(now), 6),
                                "n": f"{self._rng.getrandbits(64):016x}"}
        for name in _SCHEMA[type(msg)]:
            value = getattr(msg, name)
            body[name] = list(value) if isinstance(value, tuple) else value
        raw = json.dumps(body, separators=(",", ":"), ensure_ascii=True,
                         allow_nan=False).encode("ascii")
        flags = _FLAG_HMAC if self._key is not None else 0
        head = _HEADER.pack(MAGIC, WIRE_VERSION, flags, len(raw)) + raw
        data = head + _tag(self._key, head) if self._key is not None else head
        if len(data) > MAX_DATAGRAM:
            raise LocalProtocolError("message exceeds the datagram cap", size=len(data),
                                     limit=MAX_DATAGRAM, type=msg.TYPE)
        return data

    def decode(self, data: bytes, now: float) -> Message:
        """Return the message in ``data`` or raise RemoteProtocolError (see module doc)."""
        if len(data) > MAX_DATAGRAM:
            raise _bad("datagram exceeds the size cap", size=len(data), limit=MAX_DATAGRAM)
        if len(data) < _HEADER.size:
            raise _bad("datagram shorter than the header", size=len(data))
        magic, version, flags, length = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise _bad("bad magic")
        if version != WIRE_VERSION:
            raise _bad("unsupported wire version", version=version)
        expect_flags = _FLAG_HMAC if self._key is not None else 0
        if flags != expect_flags:
            raise _bad("authentication flag does not match the fleet configuration",
                       flags=flags)
        tag_len = _TAG_LEN if self._key is not None else 0
        if len(data) != _HEADER.size + length + tag_len:
            raise _bad("length mismatch (truncated or trailing bytes)", size=len(data),
                       body_length=length)
        end = _HEADER.size + length
        if self._key is not None and not digests_match(data[end:], _tag(self._key, data[:end])):
            raise _bad("bad HMAC tag")
        body = self._parse(data[_HEADER.size:end])
        msg = self._build(body)
        ts, nonce = body["ts"], body["n"]
        self._check_fresh(msg.sender_id, nonce, ts, now)
        return msg

    # --- internals ---------------------------------------------------------------------

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any]:
        try:
            text = raw.decode("ascii")
            body = json.loads(text, object_pairs_hook=_unique_keys,
                              parse_constant=_reject_constant)
        except RemoteProtocolError:
            raise
        except (ValueError, RecursionError) as e:
            raise _bad("body is not valid ASCII JSON") from e
        if not isinstance(body, dict):
            raise _bad("body is not a JSON object")
        ts, nonce = body.get("ts"), body.get("n")
        if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
            raise _bad("missing or bad timestamp")
        if not isinstance(nonce, str) or _NONCE.fullmatch(nonce) is None:
            raise _bad("missing or bad nonce")
        return body

    @staticmethod
    def _build(body: dict[str, Any]) -> Message:
        kind = body.get("t")
        cls = _TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise _bad("unknown message type", type=repr(kind)[:40])
        schema = _SCHEMA[cls]
        fields = {k: v for k, v in body.items() if k not in ("t", "ts", "n")}
        if set(fields) != set(schema):
            raise _bad("field set does not match the message type", type=cls.TYPE,
                       unknown=sorted(set(fields) - set(schema))[:8],
                       missing=sorted(set(schema) - set(fields)))
        values: dict[str, Any] = {name: _check_kind(name, schema[name], value)
                                  for name, value in fields.items()}
        try:
            return cls(**values)
        except LocalProtocolError as e:
            raise _bad(f"invalid {cls.TYPE}: {e.message}", **e.fields) from e

    def _check_fresh(self, sender: str, nonce: str, ts: float, now: float) -> None:
        if self._window is None:
            return
        if abs(ts - now) > self._window:
            raise _bad("timestamp outside the replay window", skew=round(ts - now, 3),
                       window=self._window)
        horizon = now - self._window
        while self._seen:
            key, seen_ts = next(iter(self._seen.items()))
            if seen_ts >= horizon and len(self._seen) < self._max_seen:
                break
            del self._seen[key]
        key = (sender, nonce)
        if key in self._seen:
            raise _bad("replayed datagram", sender=sender)
        self._seen[key] = ts
