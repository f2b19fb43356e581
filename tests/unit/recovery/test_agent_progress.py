"""The Redfish reading of the engine's progress facts: MessageIds, args and percentages."""

from __future__ import annotations

from typing import Any

import pytest

from fwrescue import agent_progress as progress
from fwrescue.errors import ChunkMismatch
from fwrescue.recovery.ports import OperationEvent, OperationState

RUN, DONE, FAIL = OperationState.RUNNING, OperationState.COMPLETED, OperationState.EXCEPTION


def ev(phase: str, state: OperationState = RUN, **kw: Any) -> OperationEvent:
    return OperationEvent(op_id="op-1", kind="recovery", target="bios", state=state,
                          phase=phase, message="m", **kw)


@pytest.mark.parametrize(("phase", "msg_id", "pct"), [
    ("detected", "TaskEvent.1.0.TaskProgressChanged", 0),
    ("locating", "TaskEvent.1.0.TaskProgressChanged", 5),
    ("soliciting", "Update.1.3.TransferringToComponent", 10),
    ("staged", "Update.1.3.VerifyingAtComponent", 55),
    ("flashing", "Update.1.3.InstallingOnComponent", 60),
    ("booting", "Update.1.3.ApplyingOnComponent", 90),
])
def test_entering_a_phase_names_its_message_and_starting_percent(
        phase: str, msg_id: str, pct: int) -> None:
    event = ev(phase, entered=True)
    assert (progress.message_id(event), progress.percent(event)) == (msg_id, pct)
    note = ev(phase)  # a transcript note in that phase: progress changed, same percent
    assert progress.message_id(note) == progress.PROGRESS_CHANGED
    assert progress.percent(note) == pct


def test_byte_progress_fills_the_transfer_and_flash_spans() -> None:
    assert progress.percent(ev("transferring", done_bytes=50, total_bytes=100)) == 32
    assert progress.percent(ev("soliciting", done_bytes=100, total_bytes=100)) == 55
    assert progress.percent(ev("flashing", done_bytes=1, total_bytes=4)) == 66
    assert progress.percent(ev("flashing", done_bytes=0, total_bytes=0)) == 60
    assert progress.percent(ev("booting", done_bytes=1, total_bytes=2)) == 90  # no span
    msg = progress.message_id(ev("flashing", done_bytes=1, total_bytes=4))
    assert progress.message_args(ev("flashing"), msg, 66) == ("op-1", "66")


def test_an_ended_operation_is_at_100_percent_and_names_its_outcome() -> None:
    done = ev("recovered", DONE, entered=True)
    assert (progress.message_id(done), progress.percent(done)) == (
        "Update.1.3.UpdateSuccessful", 100)
    error = ChunkMismatch("staged image digest does not match the manifest")
    failed = ev("failed", FAIL, entered=True, error=error)
    assert progress.message_id(failed) == error.message_id
    assert progress.percent(failed) == 100
    assert progress.message_args(failed, error.message_id, 100) == ()
    outside = ev("failed", FAIL, entered=True)  # a failure reported outside the engine
    assert progress.message_id(outside) == "Update.1.3.ApplyFailed"
    assert progress.message_args(outside, "Update.1.3.ApplyFailed", 100) == ("bios",)


def test_an_update_that_ended_staged_became_a_job_for_the_next_reset() -> None:
    pending = ev("staged", DONE, entered=True)
    msg_id = progress.message_id(pending)
    assert msg_id == "Update.1.3.OperationTransitionedToJob"
    assert progress.message_args(pending, msg_id, 100) == (
        "/redfish/v1/TaskService/Tasks/op-1",)
    no_op = ev("recovered", DONE)  # "no operation was needed": reported done, not entered
    assert progress.message_id(no_op) == progress.PROGRESS_CHANGED
    assert progress.percent(no_op) == 100
