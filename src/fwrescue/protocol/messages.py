"""The seven negotiation messages (DHCP-shaped, RFC 2131 §3.1) as frozen, self-validating values.

Every message is a frozen keyword-only dataclass whose constructor checks every field and
raises :class:`~fwrescue.errors.LocalProtocolError` on a bad one, so an invalid message never
exists. :mod:`fwrescue.protocol.codec` turns that error into a
:class:`~fwrescue.errors.RemoteProtocolError` when the bad field came off the wire.

============  ==========================  =============================================
message       sent from → to              DHCP analogue (RFC 2131 §3.1)
============  ==========================  =============================================
``Solicit``   recipient → group           DHCPDISCOVER
``Offer``     donor → group               DHCPOFFER (to the group, for suppression)
``Accept``    recipient → group           DHCPREQUEST naming the chosen server
``Ack``       donor → recipient unicast   DHCPACK
``Nak``       donor → recipient unicast   DHCPNAK
``Decline``   recipient → donor unicast   DHCPDECLINE
``Release``   recipient → donor unicast   DHCPRELEASE
``Report``    recipient → group           (none: the fleet circuit breaker's input)
============  ==========================  =============================================

Offers are hints, never trust: the recipient trusts only the signed manifest they name.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from fwrescue.errors import LocalProtocolError

__all__ = [
    "MAX_DECLINED",
    "MAX_REASON",
    "Accept",
    "Ack",
    "Decline",
    "DonorKind",
    "Message",
    "Nak",
    "Offer",
    "Release",
    "Report",
    "ReportOutcome",
    "Solicit",
]

U32 = 2**32
# The offer/ACK carry sizes and byte counts; 2^48 bytes is far beyond any firmware part.
MAX_BYTES = 2**48
# A lease longer than a day is a configuration mistake, not a lease.
MAX_LEASE_S = 86_400.0
# Reasons are for humans and transcripts; 200 characters keeps every datagram small.
MAX_REASON = 200
# Digests a recipient asks donors not to offer again; 8 x 66 bytes keeps SOLICIT < 1200 bytes.
MAX_DECLINED = 8
MAX_URL = 200
MAX_LOAD = 65_535
# A partial donor's verified chunk count: 2^24 chunks of 4 KiB already covers 64 GiB.
MAX_HELD = 2**24

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,63}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TOKEN = re.compile(r"[0-9a-f]{32}")
_OUTCOME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_REASON = re.compile(rf"[\x20-\x7e]{{1,{MAX_REASON}}}")
# http(s)://host[:port][/path]; host is a DNS name, an IPv4 address or a bracketed IPv6 address.
_URL = re.compile(
    r"https?://(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?::(?P<port>[0-9]{1,5}))?(?:/[A-Za-z0-9._~/%-]*)?"
)


class DonorKind(StrEnum):
    """Who is offering: a peer BMC or the site's management console."""

    PEER = "peer"
    CONSOLE = "console"


def _fail(message: str, **fields: object) -> None:
    raise LocalProtocolError(message, **fields)


def _str(name: str, value: object, pattern: re.Pattern[str]) -> None:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        _fail(f"bad {name}", field=name, value=repr(value)[:80])


def _opt_str(name: str, value: object, pattern: re.Pattern[str]) -> None:
    if value is not None:
        _str(name, value, pattern)


def _int(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value < hi:
        _fail(f"{name} must be an integer in [{lo}, {hi})", field=name, value=repr(value)[:80])


def _seconds(name: str, value: object, hi: float) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or not 0 < float(value) <= hi:  # type: ignore[arg-type]
        _fail(f"{name} must be seconds in (0, {hi}]", field=name, value=repr(value)[:80])


def _url(value: object) -> None:
    match = _URL.fullmatch(value) if isinstance(value, str) and len(value) <= MAX_URL else None
    if match is None or (match["port"] is not None and not 0 < int(match["port"]) < 65536):
        _fail("bad transfer_url", field="transfer_url", value=repr(value)[:80])


@dataclass(frozen=True, kw_only=True)
class Solicit:
    """Recipient → group: "who holds an image for this component of this board?"

    ``declined`` lists digests this recipient already declined so donors offer something
    else (at most :data:`MAX_DECLINED`). The reply address is the datagram's source address.
    """

    TYPE: ClassVar[str] = "solicit"
    xid: int
    recipient_id: str
    target: str
    machine_name: str
    installed_version: str | None
    security_version: int
    min_security_version: int
    topology: str | None = None
    declined: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _int("xid", self.xid, 0, U32)
        _str("recipient_id", self.recipient_id, _ID)
        _str("target", self.target, _NAME)
        _str("machine_name", self.machine_name, _NAME)
        _opt_str("installed_version", self.installed_version, _VERSION)
        _int("security_version", self.security_version, 0, U32)
        _int("min_security_version", self.min_security_version, 0, U32)
        _opt_str("topology", self.topology, _LABEL)
        if not isinstance(self.declined, tuple) or len(self.declined) > MAX_DECLINED:
            _fail(f"declined must be a tuple of at most {MAX_DECLINED} digests")
        for digest in self.declined:
            _str("declined digest", digest, _HEX64)

    @property
    def sender_id(self) -> str:
        return self.recipient_id


@dataclass(frozen=True, kw_only=True)
class Offer:
    """Donor → group: "I can serve the package with this manifest digest."

    ``load`` counts active uploads plus live reservations; ``capacity`` is the donor's
    admission limit; ``lease_s`` is how long an ACK would reserve the donor. ``held`` is
    ``None`` for a complete donor; a *partial donor* (a recipient still receiving) sets it
    to the number of chunks it has verified (at least 1: a donor holding none never offers).
    """

    TYPE: ClassVar[str] = "offer"
    xid: int
    recipient_id: str
    donor_id: str
    donor_kind: DonorKind
    target: str
    manifest_digest: str
    version: str
    security_version: int
    size: int
    load: int
    capacity: int
    transfer_url: str
    lease_s: float
    topology: str | None = None
    held: int | None = None

    def __post_init__(self) -> None:
        _int("xid", self.xid, 0, U32)
        _str("recipient_id", self.recipient_id, _ID)
        _str("donor_id", self.donor_id, _ID)
        if self.held is not None:
            _int("held", self.held, 1, MAX_HELD + 1)
        if not isinstance(self.donor_kind, DonorKind):
            _fail("bad donor_kind", field="donor_kind", value=repr(self.donor_kind)[:80])
        _str("target", self.target, _NAME)
        _str("manifest_digest", self.manifest_digest, _HEX64)
        _str("version", self.version, _VERSION)
        _int("security_version", self.security_version, 0, U32)
        _int("size", self.size, 1, MAX_BYTES)
        _int("capacity", self.capacity, 1, MAX_LOAD + 1)
        _int("load", self.load, 0, MAX_LOAD + 1)
        _url(self.transfer_url)
        _seconds("lease_s", self.lease_s, MAX_LEASE_S)
        _opt_str("topology", self.topology, _LABEL)

    @property
    def sender_id(self) -> str:
        return self.donor_id

    @property
    def load_ratio(self) -> float:
        """Load as a fraction of capacity (may exceed 1 for a lying donor)."""
        return self.load / self.capacity


@dataclass(frozen=True, kw_only=True)
class Accept:
    """Recipient → group: names the chosen donor; every other donor takes it as "you lost"."""

    TYPE: ClassVar[str] = "accept"
    xid: int
    recipient_id: str
    donor_id: str
    manifest_digest: str

    def __post_init__(self) -> None:
        _int("xid", self.xid, 0, U32)
        _str("recipient_id", self.recipient_id, _ID)
        _str("donor_id", self.donor_id, _ID)
        _str("manifest_digest", self.manifest_digest, _HEX64)

    @property
    def sender_id(self) -> str:
        return self.recipient_id


@dataclass(frozen=True, kw_only=True)
class Ack:
    """Chosen donor → recipient: reserved; ``token`` authorizes one transfer.

    ``lease_expires`` is relative (seconds from the moment the ACK was sent), so the two
    ends need not agree on the time of day.
    """

    TYPE: ClassVar[str] = "ack"
    xid: int
    recipient_id: str
    donor_id: str
    token: str
    lease_expires: float

    def __post_init__(self) -> None:
        _int("xid", self.xid, 0, U32)
        _str("recipient_id", self.recipient_id, _ID)
        _str("donor_id", self.donor_id, _ID)
        _str("token", self.token, _TOKEN)
        _seconds("lease_expires", self.lease_expires, MAX_LEASE_S)

    @property
    def sender_id(self) -> str:
        return self.donor_id


@dataclass(frozen=True, kw_only=True)
class Nak:
    """Chosen donor → recipient: refused (full, unknown digest, …); try the next offer."""

    TYPE: ClassVar[str] = "nak"
    xid: int
    recipient_id: str
    donor_id: str
    reason: str

    def __post_init__(self) -> None:
        _int("xid", self.xid, 0, U32)
        _str("recipient_id", self.recipient_id, _ID)
        _str("donor_id", self.donor_id, _ID)
        _str("reason", self.reason, _REASON)

    @property
    def sender_id(self) -> str:
        return self.donor_id


@dataclass(frozen=True, kw_only=True)
class Decline:
    """Recipient → donor: the package failed verification; the reservation ends."""

    TYPE: ClassVar[str] = "decline"
    xid: int
    recipient_id: str
    donor_id: str
    manifest_digest: str
    reason: str

    def __post_init__(self) -> None:
        _int("xid", self.xid, 0, U32)
        _str("recipient_id", self.recipient_id, _ID)
        _str("donor_id", self.donor_id, _ID)
        _str("manifest_digest", self.manifest_digest, _HEX64)
        _str("reason", self.reason, _REASON)

    @property
    def sender_id(self) -> str:
        return self.recipient_id


@dataclass(frozen=True, kw_only=True)
class Release:
    """Recipient → donor: done (``outcome`` e.g. ``recovered``, ``aborted``); reservation ends."""

    TYPE: ClassVar[str] = "release"
    xid: int
    recipient_id: str
    donor_id: str
    outcome: str
    bytes_received: int

    def __post_init__(self) -> None:
        _int("xid", self.xid, 0, U32)
        _str("recipient_id", self.recipient_id, _ID)
        _str("donor_id", self.donor_id, _ID)
        _str("outcome", self.outcome, _OUTCOME)
        _int("bytes_received", self.bytes_received, 0, MAX_BYTES)

    @property
    def sender_id(self) -> str:
        return self.recipient_id


class ReportOutcome(StrEnum):
    """What the boot check after a recovery saw."""

    BOOTED = "booted"
    BOOT_FAILED = "boot_failed"


@dataclass(frozen=True, kw_only=True)
class Report:
    """Recipient → group, after the boot check: how the image ``manifest_digest`` booted.

    Donors (peers and consoles) count distinct recipients reporting ``boot_failed`` per
    digest: the fleet circuit breaker (see :mod:`fwrescue.protocol.breaker`).
    """

    TYPE: ClassVar[str] = "report"
    xid: int
    recipient_id: str
    target: str
    manifest_digest: str
    outcome: ReportOutcome

    def __post_init__(self) -> None:
        _int("xid", self.xid, 0, U32)
        _str("recipient_id", self.recipient_id, _ID)
        _str("target", self.target, _NAME)
        _str("manifest_digest", self.manifest_digest, _HEX64)
        if not isinstance(self.outcome, ReportOutcome):
            _fail("bad outcome", field="outcome", value=repr(self.outcome)[:80])

    @property
    def sender_id(self) -> str:
        return self.recipient_id


Message = Solicit | Offer | Accept | Ack | Nak | Decline | Release | Report
