"""The transition tables: legal moves work, illegal ones raise and poison for good."""

from __future__ import annotations

import pytest

from fwrescue.errors import LocalProtocolError
from fwrescue.protocol.states import (
    DONOR_TRANSITIONS,
    RECIPIENT_TRANSITIONS,
    DonorInput,
    DonorState,
    RecipientInput,
    RecipientState,
    StateMachine,
)


def recipient() -> StateMachine[RecipientState, RecipientInput]:
    return StateMachine(RECIPIENT_TRANSITIONS, RecipientState.IDLE, RecipientState.ERROR)


def test_the_happy_path_is_legal() -> None:
    sm = recipient()
    for event, state in [(RecipientInput.START, RecipientState.STARTING),
                         (RecipientInput.SOLICIT, RecipientState.SOLICITING),
                         (RecipientInput.ACCEPT, RecipientState.ACCEPTING),
                         (RecipientInput.ACK, RecipientState.BOUND),
                         (RecipientInput.RELEASE, RecipientState.DONE)]:
        assert sm.fire(event) is state


def test_an_illegal_transition_raises_and_poisons_forever() -> None:
    sm = recipient()
    with pytest.raises(LocalProtocolError, match="illegal protocol transition"):
        sm.fire(RecipientInput.ACK)
    assert sm.state is RecipientState.ERROR
    for event in RecipientInput:
        with pytest.raises(LocalProtocolError):
            sm.fire(event)
        assert sm.state is RecipientState.ERROR


def test_terminal_states_have_no_way_out() -> None:
    for terminal in (RecipientState.DONE, RecipientState.GAVE_UP, RecipientState.ERROR):
        assert not [k for k in RECIPIENT_TRANSITIONS if k[0] is terminal]
    assert not [k for k in DONOR_TRANSITIONS if k[0] is DonorState.ERROR]


def test_donor_reservation_cannot_be_granted_twice() -> None:
    sm = StateMachine(DONOR_TRANSITIONS, DonorState.PENDING, DonorState.ERROR)
    sm.fire(DonorInput.GRANT)
    assert not sm.can(DonorInput.GRANT)
    assert not sm.can(DonorInput.RESOLICIT)
    sm.fire(DonorInput.END)
    assert sm.state is DonorState.ENDED
