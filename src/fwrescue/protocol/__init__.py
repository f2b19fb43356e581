"""The negotiation protocol, sans-IO: messages, codec, state tables, recipient, donor, policy.

Transports (``fwrescue.transport``) are thin shells that drive these sessions.
"""

from .codec import MAX_DATAGRAM, Codec
from .donor import DonorIdentity, DonorLimits, DonorResponder, OfferableImage
from .events import Event
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
from .policy import Policy, Selection, SelectionContext, get_policy
from .recipient import RecipientIdentity, RecipientSession, RecipientTimers
from .session import GROUP, DatagramSession, Destination

__all__ = [
    "GROUP",
    "MAX_DATAGRAM",
    "Accept",
    "Ack",
    "Codec",
    "DatagramSession",
    "Decline",
    "Destination",
    "DonorIdentity",
    "DonorKind",
    "DonorLimits",
    "DonorResponder",
    "Event",
    "Message",
    "Nak",
    "Offer",
    "OfferableImage",
    "Policy",
    "RecipientIdentity",
    "RecipientSession",
    "RecipientTimers",
    "Release",
    "Report",
    "ReportOutcome",
    "Selection",
    "SelectionContext",
    "Solicit",
    "get_policy",
]
