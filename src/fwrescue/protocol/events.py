"""Events the sans-IO sessions report: the negotiation transcript is made of these.

Every decision carries a human-readable ``reason``. Events are frozen keyword-only
dataclasses; sessions hand them out through ``next_event()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .messages import Offer

__all__ = [
    "AcceptTimedOut",
    "Declined",
    "DonorAcked",
    "DonorEvent",
    "DonorNaked",
    "DonorSelected",
    "Event",
    "GaveUp",
    "ImageWithheld",
    "OfferReceived",
    "OfferRejected",
    "OfferSent",
    "RecipientEvent",
    "Released",
    "ReservationEnded",
    "ReservationGranted",
    "SolicitSent",
]


# --- recipient ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SolicitSent:
    """A SOLICIT went to the group; ``attempt`` counts from 1 over the whole session."""

    xid: int
    attempt: int


@dataclass(frozen=True, kw_only=True)
class OfferReceived:
    offer: Offer


@dataclass(frozen=True, kw_only=True)
class OfferRejected:
    """An offer failed the recipient's filter (before policy) — ``reason`` says which check."""

    offer: Offer
    reason: str


@dataclass(frozen=True, kw_only=True)
class DonorSelected:
    """The policy chose ``offer`` (= ``ranked[0]``); ``ranked`` are the candidates in order."""

    offer: Offer
    reason: str
    ranked: tuple[Offer, ...]


@dataclass(frozen=True, kw_only=True)
class DonorAcked:
    """The chosen donor reserved a slot; ``token`` authorizes one transfer until the lease ends."""

    offer: Offer
    token: str
    lease_expires_at: float


@dataclass(frozen=True, kw_only=True)
class DonorNaked:
    offer: Offer
    reason: str


@dataclass(frozen=True, kw_only=True)
class AcceptTimedOut:
    """The chosen donor did not ACK within ``accept_timeout``; the next offer is tried."""

    offer: Offer
    reason: str


@dataclass(frozen=True, kw_only=True)
class GaveUp:
    """The session ended without a donor (``max_solicits`` used up)."""

    reason: str


RecipientEvent = (
    SolicitSent | OfferReceived | OfferRejected | DonorSelected | DonorAcked | DonorNaked
    | AcceptTimedOut | GaveUp
)


# --- donor -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class OfferSent:
    xid: int
    recipient_id: str
    manifest_digest: str


@dataclass(frozen=True, kw_only=True)
class ReservationGranted:
    """The transfer server must accept ``token`` once, for ``image_sha256``, until expiry."""

    token: str
    manifest_digest: str
    image_sha256: str
    recipient_id: str
    expires_at: float


@dataclass(frozen=True, kw_only=True)
class ReservationEnded:
    token: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class Declined:
    xid: int
    recipient_id: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class Released:
    xid: int
    outcome: str
    bytes_received: int


@dataclass(frozen=True, kw_only=True)
class ImageWithheld:
    """The fleet circuit breaker tripped: ``failures`` distinct recipients reported that
    ``manifest_digest`` did not boot; this donor no longer offers or ACKs it."""

    manifest_digest: str
    target: str
    failures: int
    recipients: tuple[str, ...]


DonorEvent = (
    OfferSent | ReservationGranted | ReservationEnded | Declined | Released | ImageWithheld
)

Event = RecipientEvent | DonorEvent
