"""Everything that affects the negotiation state machines lives in this file.

Two literal transition tables (after h11's ``_state.py``): one for the recipient session,
one for a donor's per-solicit state. The diagrams below show every pair of each table
(``tests/unit/protocol/test_proto_states.py`` parses their arrows and compares). A pair
missing from a table is an illegal transition: :meth:`StateMachine.fire` raises
:class:`~fwrescue.errors.LocalProtocolError` and moves the machine to ``ERROR``, which
has no way out (the session is poisoned).

Recipient (RFC 2131 §4.4 client states, renamed)::

    IDLE --START--> STARTING --SOLICIT--> SOLICITING --SOLICIT (retransmit)--> SOLICITING
    SOLICITING --ACCEPT--> ACCEPTING --ACK--> BOUND --RELEASE--> DONE
    ACCEPTING --ACCEPT (NAK/timeout: next offer)--> ACCEPTING
    ACCEPTING --SOLICIT (offers exhausted, after backoff)--> SOLICITING
    BOUND --ACCEPT (donor failed / declined: next offer)--> ACCEPTING
    BOUND --SOLICIT (donor failed / declined, no offer left)--> SOLICITING
    SOLICITING|ACCEPTING|BOUND --GIVE_UP--> GAVE_UP
    any --(illegal)--> ERROR

Inputs that are *remote* (an ACK for an unknown xid, a stray NAK) never reach the table:
the session drops and counts them. Only the session's own decisions and the caller's API
calls fire transitions, so an illegal one is always a local bug.

Donor, per (recipient_id, xid)::

    PENDING --SEND--> OFFERED --GRANT--> RESERVED --END--> ENDED
    PENDING --SUPPRESS--> SUPPRESSED        (enough offers overheard, or no longer able)
    PENDING|OFFERED --LOSE--> LOST          (the recipient's ACCEPT named another donor)
    PENDING|SUPPRESSED --GRANT--> RESERVED  (an ACCEPT may name us before our offer left)
    LOST|ENDED --GRANT--> RESERVED          (the recipient moved on to us on the same xid:
                                             its next offer after a NAK, or after our
                                             reservation ended)
    OFFERED|SUPPRESSED|LOST|ENDED --RESOLICIT--> PENDING   (a retransmitted SOLICIT)
    RESERVED --LOSE--> ENDED                (superseded: the recipient moved on)
"""

from __future__ import annotations

from enum import Enum
from typing import Final, Generic, TypeVar

from fwrescue.errors import LocalProtocolError

__all__ = [
    "DONOR_TRANSITIONS",
    "RECIPIENT_TRANSITIONS",
    "DonorInput",
    "DonorState",
    "RecipientInput",
    "RecipientState",
    "StateMachine",
]


class RecipientState(Enum):
    IDLE = "idle"
    STARTING = "starting"
    SOLICITING = "soliciting"
    ACCEPTING = "accepting"
    BOUND = "bound"
    DONE = "done"
    GAVE_UP = "gave-up"
    ERROR = "error"


class RecipientInput(Enum):
    START = "start"
    SOLICIT = "solicit"
    ACCEPT = "accept"
    ACK = "ack"
    RELEASE = "release"
    GIVE_UP = "give-up"


class DonorState(Enum):
    PENDING = "pending"
    OFFERED = "offered"
    SUPPRESSED = "suppressed"
    LOST = "lost"
    RESERVED = "reserved"
    ENDED = "ended"
    ERROR = "error"


class DonorInput(Enum):
    SEND = "send"
    SUPPRESS = "suppress"
    LOSE = "lose"
    GRANT = "grant"
    END = "end"
    RESOLICIT = "resolicit"


_R, _RI = RecipientState, RecipientInput
RECIPIENT_TRANSITIONS: Final[dict[tuple[RecipientState, RecipientInput], RecipientState]] = {
    (_R.IDLE, _RI.START): _R.STARTING,
    (_R.STARTING, _RI.SOLICIT): _R.SOLICITING,
    (_R.SOLICITING, _RI.SOLICIT): _R.SOLICITING,
    (_R.SOLICITING, _RI.ACCEPT): _R.ACCEPTING,
    (_R.SOLICITING, _RI.GIVE_UP): _R.GAVE_UP,
    (_R.ACCEPTING, _RI.ACK): _R.BOUND,
    (_R.ACCEPTING, _RI.ACCEPT): _R.ACCEPTING,
    (_R.ACCEPTING, _RI.SOLICIT): _R.SOLICITING,
    (_R.ACCEPTING, _RI.GIVE_UP): _R.GAVE_UP,
    (_R.BOUND, _RI.ACCEPT): _R.ACCEPTING,
    (_R.BOUND, _RI.SOLICIT): _R.SOLICITING,
    (_R.BOUND, _RI.RELEASE): _R.DONE,
    (_R.BOUND, _RI.GIVE_UP): _R.GAVE_UP,
}

_D, _DI = DonorState, DonorInput
DONOR_TRANSITIONS: Final[dict[tuple[DonorState, DonorInput], DonorState]] = {
    (_D.PENDING, _DI.SEND): _D.OFFERED,
    (_D.PENDING, _DI.SUPPRESS): _D.SUPPRESSED,
    (_D.PENDING, _DI.LOSE): _D.LOST,
    (_D.PENDING, _DI.GRANT): _D.RESERVED,
    (_D.OFFERED, _DI.LOSE): _D.LOST,
    (_D.OFFERED, _DI.GRANT): _D.RESERVED,
    (_D.OFFERED, _DI.RESOLICIT): _D.PENDING,
    (_D.SUPPRESSED, _DI.GRANT): _D.RESERVED,
    (_D.SUPPRESSED, _DI.RESOLICIT): _D.PENDING,
    (_D.LOST, _DI.GRANT): _D.RESERVED,
    (_D.LOST, _DI.RESOLICIT): _D.PENDING,
    (_D.RESERVED, _DI.END): _D.ENDED,
    (_D.RESERVED, _DI.LOSE): _D.ENDED,
    (_D.ENDED, _DI.GRANT): _D.RESERVED,
    (_D.ENDED, _DI.RESOLICIT): _D.PENDING,
}

S = TypeVar("S", bound=Enum)
I = TypeVar("I", bound=Enum)  # noqa: E741 - mirrors S; "I" for input


class StateMachine(Generic[S, I]):
    """One machine over one table; illegal transitions poison it (state becomes ``error``)."""

    def __init__(self, table: dict[tuple[S, I], S], initial: S, error: S) -> None:
        self._table = table
        self._error = error
        self.state: S = initial

    def can(self, event: I) -> bool:
        return (self.state, event) in self._table

    def expect(self, *states: S, action: str) -> None:
        """Raise LocalProtocolError (and poison) unless the machine is in one of ``states``."""
        if self.state not in states:
            old, self.state = self.state, self._error
            raise LocalProtocolError(f"{action} is not allowed now", state=old.value)

    def fire(self, event: I) -> S:
        """Apply ``event``; raise LocalProtocolError (and poison) if the table forbids it."""
        new = self._table.get((self.state, event))
        if new is None:
            old, self.state = self.state, self._error
            raise LocalProtocolError("illegal protocol transition", state=old.value,
                                     event=event.value)
        self.state = new
        return new
