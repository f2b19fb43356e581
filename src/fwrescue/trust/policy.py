"""Signed fleet policy: per board and target, a baseline version and a fleet anti-rollback floor.

A policy document is JSON, at most :data:`MAX_POLICY_BYTES`::

    {"policy": {"type": "fwrescue-fleet-policy", "board": "board-a", "version": 3,
                "key_id": "<32 hex>", "issued_at": 1767000000,
                "targets": {"bios": {"baseline": "1.1.0", "floor": 2}}},
     "signature": "<base64 Ed25519 over canonical_json(policy)>"}

It is signed by the release tooling (``fwrescue policy sign``) with a key of the same trust
store that signs packages, so a console that is compromised cannot invent one: it only stores
and delivers documents. One document covers one board; ``version`` grows per board.

This module is pure: :func:`verify_policy` takes bytes and the agent's facts (trust store,
board, targets, the version in force) and returns a :class:`FleetPolicy` or raises a
:class:`PolicyError` whose ``reason`` names the refusal (``malformed``, ``unsigned``,
``unknown-key``, ``bad-signature``, ``not-newer``, ``unknown-board``, ``unknown-target``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from fwrescue.errors import SignatureError, TrustError
from fwrescue.trust.keys import SigningKey, TrustStore
from fwrescue.trust.manifest import canonical_json

__all__ = [
    "MAX_POLICY_BYTES",
    "POLICY_TYPE",
    "FleetPolicy",
    "PolicyError",
    "TargetPolicy",
    "parse_policy",
    "sign_policy",
    "verify_policy",
]

POLICY_TYPE = "fwrescue-fleet-policy"
MAX_POLICY_BYTES = 64 * 1024
_MAX_TARGETS = 64
_MAX_VERSION = 2**31 - 1
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_FW_VERSION = re.compile(r"^[A-Za-z0-9.+_-]{1,64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{32}$")


class PolicyError(TrustError):
    """A fleet policy was refused; ``reason`` is a stable code, the message says why."""

    message_id = "Base.1.22.PropertyValueError"

    def __init__(self, reason: str, message: str, **fields: object) -> None:
        super().__init__(message, reason=reason, **fields)
        self.reason = reason


@dataclass(frozen=True)
class TargetPolicy:
    """What the fleet requires of one target on one board."""

    baseline: str | None  # the version every node should run at least (None: no baseline)
    floor: int  # the fleet anti-rollback floor (security version)


@dataclass(frozen=True)
class FleetPolicy:
    """A verified (or merely parsed) policy document and its exact signed bytes."""

    board: str
    version: int
    key_id: str
    issued_at: int
    targets: Mapping[str, TargetPolicy]
    raw: bytes

    def floor(self, target: str) -> int:
        entry = self.targets.get(target)
        return entry.floor if entry else 0

    def to_dict(self) -> dict[str, Any]:
        return {"board": self.board, "version": self.version, "key_id": self.key_id,
                "issued_at": self.issued_at,
                "targets": {t: {"baseline": p.baseline, "floor": p.floor}
                            for t, p in sorted(self.targets.items())}}


def _fail(message: str, **fields: object) -> PolicyError:
    return PolicyError("malformed", f"policy malformed: {message}", **fields)


def _body(policy: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": POLICY_TYPE, **policy}


def _parse_targets(value: object) -> dict[str, TargetPolicy]:
    if not isinstance(value, dict) or not value or len(value) > _MAX_TARGETS:
        raise _fail(f"targets must be an object of 1-{_MAX_TARGETS} entries")
    targets: dict[str, TargetPolicy] = {}
    for name, entry in value.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise _fail("target names are 1-64 chars of [A-Za-z0-9._-]", target=str(name)[:64])
        if not isinstance(entry, dict) or set(entry) - {"baseline", "floor"}:
            raise _fail("a target entry has only baseline and floor", target=name)
        baseline, floor = entry.get("baseline"), entry.get("floor", 0)
        if baseline is not None and (not isinstance(baseline, str)
                                     or not _FW_VERSION.match(baseline)):
            raise _fail("baseline must be a version string or null", target=name)
        if isinstance(floor, bool) or not isinstance(floor, int) or not 0 <= floor <= 2**32 - 1:
            raise _fail("floor must be an integer 0..2^32-1", target=name)
        targets[name] = TargetPolicy(baseline=baseline, floor=floor)
    return targets


def parse_policy(raw: bytes) -> tuple[FleetPolicy, bytes | None, bytes]:
    """Strictly parse a document (no signature check); return it, its signature bytes (None
    when unsigned) and the bytes the signature covers. Raises :class:`PolicyError`
    ``malformed``."""
    if not isinstance(raw, bytes | bytearray) or len(raw) > MAX_POLICY_BYTES:
        raise _fail(f"a policy is at most {MAX_POLICY_BYTES} bytes")
    try:
        doc = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail("not UTF-8 JSON", detail=str(e)[:200]) from e
    if not isinstance(doc, dict) or set(doc) - {"policy", "signature"} or "policy" not in doc:
        raise _fail("the document has exactly 'policy' and 'signature'")
    body = doc["policy"]
    keys = {"type", "board", "version", "key_id", "issued_at", "targets"}
    if not isinstance(body, dict) or set(body) != keys:
        raise _fail(f"policy fields must be exactly {sorted(keys)}")
    if body["type"] != POLICY_TYPE:
        raise _fail(f"type must be {POLICY_TYPE!r}")
    board, version, key_id, issued = (body["board"], body["version"], body["key_id"],
                                      body["issued_at"])
    if not isinstance(board, str) or not _NAME.match(board):
        raise _fail("board is 1-64 chars of [A-Za-z0-9._-]")
    if (isinstance(version, bool) or not isinstance(version, int)
            or not 1 <= version <= _MAX_VERSION):
        raise _fail("version must be an integer >= 1")
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        raise _fail("key_id must be 32 lowercase hex digits")
    if isinstance(issued, bool) or not isinstance(issued, int) or issued < 0:
        raise _fail("issued_at must be seconds since the epoch")
    signature: bytes | None = None
    sig = doc.get("signature")
    if sig is not None:
        if not isinstance(sig, str) or len(sig) > 200:
            raise _fail("signature must be base64 text")
        try:
            signature = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _fail("signature is not base64") from e
    policy = FleetPolicy(board=board, version=version, key_id=key_id, issued_at=issued,
                         targets=_parse_targets(body["targets"]), raw=bytes(raw))
    return policy, signature, canonical_json(body)


def verify_policy(raw: bytes, trust: TrustStore, *, board: str, targets: Collection[str],
                  current_version: int = 0) -> FleetPolicy:
    """The verified policy in ``raw`` for an agent of ``board`` managing ``targets``, newer
    than ``current_version`` (the one in force; 0 for none). Checks, in order: bounded strict
    parse, signed, by a trusted key, signature valid, for this board, only known targets,
    newer. Raises :class:`PolicyError` with the first failing reason."""
    policy, signature, signed_bytes = parse_policy(raw)
    if signature is None:
        raise PolicyError("unsigned", "policy is unsigned; only release tooling signs "
                          "policies (fwrescue policy sign)")
    if policy.key_id not in trust.key_ids:
        raise PolicyError("unknown-key", "policy signed by a key this agent does not trust",
                          key_id=policy.key_id)
    try:
        trust.verify(policy.key_id, signature, signed_bytes)
    except SignatureError as e:
        raise PolicyError("bad-signature", "policy signature does not verify",
                          key_id=policy.key_id) from e
    if policy.board != board:
        raise PolicyError("unknown-board", f"policy is for board {policy.board!r}, this agent "
                          f"is {board!r}", board=policy.board)
    unknown = sorted(set(policy.targets) - set(targets))
    if unknown:
        raise PolicyError("unknown-target", f"policy names targets this agent does not "
                          f"manage: {', '.join(unknown)}", targets=unknown)
    if policy.version <= current_version:
        raise PolicyError("not-newer", f"policy version {policy.version} is not newer than "
                          f"version {current_version} in force", version=policy.version,
                          in_force=current_version)
    return policy


def sign_policy(key: SigningKey, *, board: str, version: int, issued_at: int,
                targets: Mapping[str, TargetPolicy]) -> bytes:
    """The signed document (release tooling only). Validates by parsing its own output."""
    body = {"board": board, "version": version, "key_id": key.key_id, "issued_at": issued_at,
            "targets": {t: {"baseline": p.baseline, "floor": p.floor}
                        for t, p in targets.items()}}
    signature = key.sign(canonical_json(_body(body)))
    raw = json.dumps({"policy": _body(body),
                      "signature": base64.b64encode(signature).decode()},
                     sort_keys=True, indent=1).encode()
    parse_policy(raw)
    return raw
