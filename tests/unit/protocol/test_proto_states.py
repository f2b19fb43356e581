"""The transition tables: legal moves work, illegal ones raise and poison for good."""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import Enum

import pytest

import fwrescue.protocol.states as states_module
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


Arrow = tuple[str, str, str]


def diagram_arrows(block: str) -> set[Arrow]:
    """(state, input, state) for every ``A|B --INPUT (why)--> C --INPUT2--> D`` chain in
    ``block``; ``any --(illegal)--> ERROR`` names no input and is skipped."""
    arrows: set[Arrow] = set()
    for line in block.splitlines():
        head = re.match(r"\s*([A-Z_|]+|any)\s+(.*)", line)
        if head is None:
            continue
        sources, rest = head.group(1), head.group(2)
        while (arrow := re.match(r"--([A-Z_]*)[^>]*?-->\s+([A-Z_]+)\s*(.*)", rest)):
            event, target, rest = arrow.groups()
            if event and sources != "any":
                arrows |= {(source, event, target) for source in sources.split("|")}
            sources = target
    return arrows


def table_arrows(pairs: Iterable[tuple[tuple[Enum, Enum], Enum]]) -> set[Arrow]:
    return {(state.name, event.name, new.name) for (state, event), new in pairs}


def test_the_module_diagrams_show_exactly_the_tables() -> None:
    doc = states_module.__doc__ or ""
    recipient_block = doc.split("Recipient (")[1].split("Inputs that")[0]
    donor_block = doc.split("Donor, per")[1]
    assert diagram_arrows(recipient_block) == table_arrows(
        RECIPIENT_TRANSITIONS.items())
    assert diagram_arrows(donor_block) == table_arrows(DONOR_TRANSITIONS.items())


def test_the_diagram_parser_reads_chains_and_alternatives() -> None:
    assert diagram_arrows("    A --GO--> B --STOP (why)--> C\n    B|C --GO--> A\n"
                          "    any --(illegal)--> ERROR") == {
        ("A", "GO", "B"), ("B", "STOP", "C"), ("B", "GO", "A"), ("C", "GO", "A")}
