"""The negotiation protocol, sans-IO: messages, codec, state tables, recipient, policy.

The donor's side of the negotiation (``DonorResponder``, also sans-IO) lives with the
rest of the donor in :mod:`fwrescue.donor.responder`.

Transports (``fwrescue.transport``) are thin shells that drive these sessions.
"""

from .codec import MAX_DATAGRAM, Codec
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
    "DonorKind",
    "Event",
    "Message",
    "Nak",
    "Offer",
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
