"""How the engine's progress facts read on Redfish: MessageIds and ``PercentComplete``.

The recovery engine emits :class:`~fwrescue.recovery.ports.OperationEvent` facts (phase
entered, bytes done of total, the error an operation ended with); this module is the one
place that turns them into what an operator sees in a Task: a registry MessageId (the
DMTF Update and TaskEvent registries) and a monotone percentage. Pure functions.
"""

from __future__ import annotations

from fwrescue.recovery.journal import Phase
from fwrescue.recovery.ports import OperationEvent, OperationState
from fwrescue.redfish.tasks import TASKS_URI

__all__ = ["PROGRESS_CHANGED", "message_args", "message_id", "percent"]

PROGRESS_CHANGED = "TaskEvent.1.0.TaskProgressChanged"
APPLY_FAILED = "Update.1.3.ApplyFailed"
TRANSITIONED_TO_JOB = "Update.1.3.OperationTransitionedToJob"

#: the MessageId of the event that enters each phase
_PHASE_MESSAGE_IDS: dict[str, str] = {
    Phase.DETECTED.value: PROGRESS_CHANGED,
    Phase.LOCATING.value: PROGRESS_CHANGED,
    Phase.SOLICITING.value: "Update.1.3.TransferringToComponent",
    Phase.STAGED.value: "Update.1.3.VerifyingAtComponent",
    Phase.FLASHING.value: "Update.1.3.InstallingOnComponent",
    Phase.BOOTING.value: "Update.1.3.ApplyingOnComponent",
    Phase.RECOVERED.value: "Update.1.3.UpdateSuccessful",
    Phase.FAILED.value: APPLY_FAILED,
}

#: where each phase starts on the 0–100 scale, and the span its byte progress fills
_PHASE_PERCENT: dict[str, tuple[int, int]] = {
    Phase.DETECTED.value: (0, 0),
    Phase.LOCATING.value: (5, 0),
    Phase.SOLICITING.value: (10, 45),  # negotiation and transfer: 10–55
    "transferring": (10, 45),
    Phase.STAGED.value: (55, 0),
    Phase.FLASHING.value: (60, 25),  # erase, program, read back: 60–85
    Phase.BOOTING.value: (90, 0),
    Phase.RECOVERED.value: (100, 0),
    Phase.FAILED.value: (100, 0),
}
_UNKNOWN_PHASE = (50, 0)
_ENDED = (OperationState.COMPLETED, OperationState.EXCEPTION, OperationState.CANCELLED)


def percent(event: OperationEvent) -> int:
    """0–100: 100 once the operation ended, else the phase's start plus its byte progress."""
    if event.state in _ENDED:
        return 100
    start, span = _PHASE_PERCENT.get(event.phase, _UNKNOWN_PHASE)
    done, total = event.done_bytes, event.total_bytes
    if span and done is not None and total:
        return start + span * done // total
    return start


def message_id(event: OperationEvent) -> str:
    """The event's registry MessageId: the phase's for the event entering it (an ended
    operation's error names its own; one that ended staged became a job for the next reset),
    TaskProgressChanged for progress and notes."""
    if not event.entered:
        return PROGRESS_CHANGED
    if event.error is not None and event.state in _ENDED:
        return event.error.message_id
    if event.state is OperationState.COMPLETED and event.phase == Phase.STAGED.value:
        return TRANSITIONED_TO_JOB  # ended staged: applied by a job at the next reset
    return _PHASE_MESSAGE_IDS.get(event.phase, PROGRESS_CHANGED)


def message_args(event: OperationEvent, msg_id: str, pct: int) -> tuple[str, ...]:
    """The ``%1``… arguments of ``msg_id`` for ``event`` (the engine sends none)."""
    if msg_id == PROGRESS_CHANGED:
        return (event.op_id, str(pct))
    if msg_id.startswith("TaskEvent.1.0.Task"):
        return (event.op_id,)  # TaskStarted, TaskCompletedOK, TaskAborted…: the task's Id
    if msg_id == TRANSITIONED_TO_JOB:
        return (f"{TASKS_URI}/{event.op_id}",)  # the task that applies it
    if msg_id == APPLY_FAILED and event.error is None:
        return (event.target,)  # a failure reported outside the engine: the component
    return ()
