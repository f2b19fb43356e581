"""What the recovery engine needs from the rest of the agent, typed as Protocols.

The engine is the only module that joins protocol, trust, flash and host; it
reaches the parts it does not own through these seams, wired in ``agent.py``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fwrescue.errors import FwRescueError
from fwrescue.trust.manifest import SignedManifest
from fwrescue.trust.verifier import VerifiedManifest

__all__ = [
    "EventSink",
    "FetchRequest",
    "ImageStore",
    "Located",
    "Locator",
    "NetworkFetcher",
    "OperationEvent",
    "OperationState",
    "StoredImageLike",
    "TranscriptLog",
]

#: log(event, **fields): one line of an operation's transcript
TranscriptLog = Callable[..., None]


class OperationState(enum.Enum):
    RUNNING = "Running"
    COMPLETED = "Completed"
    EXCEPTION = "Exception"
    CANCELLED = "Cancelled"


@dataclass(frozen=True)
class OperationEvent:
    """A fact about a recovery or update: its phase, how far it got, what failed.

    Presentation is the consumer's: the agent's Redfish backend maps these facts to
    Redfish MessageIds and ``PercentComplete`` (``fwrescue.agent_progress``), the demo to
    its table. ``phase`` is a :class:`~fwrescue.recovery.journal.Phase` value, or
    ``"transferring"`` / ``"flashing"`` for byte progress within a phase. ``entered`` marks
    the event that enters ``phase`` (a journal step, or the operation's end); the others
    are progress within it and transcript notes. ``done_bytes``/``total_bytes`` are the
    latest byte progress of the current phase (repeated on its notes), ``error`` the error
    an operation ended with."""

    op_id: str
    kind: str  # "recovery" | "update"
    target: str
    state: OperationState
    phase: str
    message: str
    entered: bool = False
    done_bytes: int | None = None
    total_bytes: int | None = None
    error: FwRescueError | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    #: one line of the operation's transcript (negotiation, transfer, flash, boot), if any
    transcript_entry: dict[str, Any] | None = None


EventSink = Callable[[OperationEvent], None]


class StoredImageLike(Protocol):
    @property
    def signed(self) -> SignedManifest: ...

    @property
    def image_path(self) -> Path: ...


class ImageStore(Protocol):
    def put(self, verified: VerifiedManifest, image: Path, *, move: bool = True) -> Any: ...

    def get(self, digest: str) -> Any: ...

    def list(self) -> list[Any]: ...


@dataclass(frozen=True)
class Located:
    """A verified image staged on BMC storage, and where it came from."""

    verified: VerifiedManifest
    image: Path
    origin: str  # "usb:/media/usb0", "peer:node-3", "console:console-1", "operator", …
    donor_id: str | None = None
    donor_kind: str | None = None  # "peer" | "console" | None for a predetermined source


class Locator(Protocol):
    """The predetermined-locations ladder (backup region, BMC storage, USB, web, share)."""

    async def locate(self, target: str, machine_name: str, workdir: Path,
                     log: TranscriptLog) -> Located | None: ...


@dataclass(frozen=True)
class FetchRequest:
    target: str
    machine_name: str
    installed_version: str | None
    security_version: int
    min_security_version: int


class NetworkFetcher(Protocol):
    """Negotiates with donors and transfers a verified image to staging."""

    async def fetch(self, request: FetchRequest, log: TranscriptLog,
                    progress: Callable[[int, int], None]) -> Located:
        """Raise RecoveryFailed when no donor could deliver a verified image."""
        ...
