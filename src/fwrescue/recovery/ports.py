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
    """Progress of a recovery or update, for Redfish Tasks, events and the demo's display."""

    op_id: str
    kind: str  # "recovery" | "update"
    target: str
    state: OperationState
    phase: str
    percent: int
    message: str
    message_id: str = "TaskEvent.1.0.TaskProgressChanged"
    args: tuple[str, ...] = ()
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
