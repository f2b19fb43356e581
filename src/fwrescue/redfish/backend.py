"""The seam between the Redfish service and the agent: what the service needs to know and do.

The agent implements :class:`RedfishBackend`; the service never reaches past it. All values
crossing the seam are frozen dataclasses that validate themselves on construction.

Ownership of update packages: the service streams an upload (or an ``ImageURI`` download) to
a file and hands its path to :meth:`RedfishBackend.start_update`. When ``start_update``
returns, the backend owns the file (it may move or delete it). When it raises, the service
deletes the file itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from fwrescue.host.base import PowerState

__all__ = [
    "APPLY_TIMES",
    "HEALTH_VALUES",
    "OPERATION_KINDS",
    "OPERATION_STATES",
    "RESET_TYPES",
    "TARGET_STATES",
    "ApplyTime",
    "CancellableBackend",
    "FleetNotices",
    "ImageInfo",
    "OperationEvent",
    "OperationKind",
    "OperationState",
    "RedfishBackend",
    "ResetType",
    "ResourceNotice",
    "SystemIdentity",
    "TargetInfo",
    "Unsubscribe",
    "WithheldImage",
]

ApplyTime = Literal["Immediate", "OnReset"]
APPLY_TIMES: tuple[ApplyTime, ...] = ("Immediate", "OnReset")

ResetType = Literal["On", "ForceOff", "GracefulShutdown", "ForceRestart", "PowerCycle"]
RESET_TYPES: tuple[ResetType, ...] = (
    "On",
    "ForceOff",
    "GracefulShutdown",
    "ForceRestart",
    "PowerCycle",
)

OperationKind = Literal["update", "recovery"]
OPERATION_KINDS: tuple[OperationKind, ...] = ("update", "recovery")
OperationState = Literal["Running", "Completed", "Exception", "Cancelled"]
OPERATION_STATES: tuple[OperationState, ...] = ("Running", "Completed", "Exception", "Cancelled")
HEALTH_VALUES = ("OK", "Warning", "Critical")
TARGET_STATES = ("Enabled", "UnavailableOffline", "Updating")

# Identifiers end up in URIs; keep them short and URI-safe.
_MAX_ID = 64
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _check_id(what: str, value: str) -> None:
    if not value or len(value) > _MAX_ID or not set(value) <= _ID_CHARS:
        raise ValueError(f"{what} must be 1-{_MAX_ID} chars of [A-Za-z0-9._-], got {value!r}")


@dataclass(frozen=True, kw_only=True)
class SystemIdentity:
    """Who this BMC and its host are. Ids appear in URIs (``/redfish/v1/Systems/<system_id>``)."""

    system_id: str
    manager_id: str
    chassis_id: str
    machine_name: str
    serial: str
    model: str
    manager_firmware_version: str
    uuid: str = "00000000-0000-0000-0000-000000000000"

    def __post_init__(self) -> None:
        _check_id("system_id", self.system_id)
        _check_id("manager_id", self.manager_id)
        _check_id("chassis_id", self.chassis_id)


@dataclass(frozen=True, kw_only=True)
class TargetInfo:
    """One updatable firmware component (``bios``, ``cpld``…) as FirmwareInventory shows it."""

    name: str
    version: str
    lowest_supported_version: str
    security_version: int
    updateable: bool = True
    health: str = "OK"
    state: str = "Enabled"

    def __post_init__(self) -> None:
        _check_id("target name", self.name)
        if self.health not in HEALTH_VALUES:
            raise ValueError(f"health must be one of {HEALTH_VALUES}, got {self.health!r}")
        if self.state not in TARGET_STATES:
            raise ValueError(f"state must be one of {TARGET_STATES}, got {self.state!r}")
        if self.security_version < 0:
            raise ValueError("security_version must be >= 0")


@dataclass(frozen=True, kw_only=True)
class ImageInfo:
    """An image the agent can donate (its own image store)."""

    target: str
    version: str
    machine_names: tuple[str, ...]
    sha256: str
    size: int

    def __post_init__(self) -> None:
        _check_id("target", self.target)
        if len(self.sha256) != 64 or not set(self.sha256) <= set("0123456789abcdef"):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if self.size < 0:
            raise ValueError("size must be >= 0")


@dataclass(frozen=True, kw_only=True)
class OperationEvent:
    """Progress of an update or a recovery; each distinct ``op_id`` becomes one Redfish Task.

    ``message_id`` is a registry MessageId (``Update.1.3.UpdateInProgress``…) with ``args``
    filling its ``%1``… placeholders; ``message`` is the human text. ``transcript_entry`` is
    one record of the negotiation transcript (JSON-serialisable), appended to the task's.
    """

    op_id: str
    kind: OperationKind
    state: OperationState
    percent: int
    message_id: str
    message: str
    args: tuple[str, ...] = ()
    transcript_entry: Mapping[str, object] | None = None
    target: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_id("op_id", self.op_id)
        if self.kind not in OPERATION_KINDS:
            raise ValueError(f"kind must be one of {OPERATION_KINDS}, got {self.kind!r}")
        if self.state not in OPERATION_STATES:
            raise ValueError(f"state must be one of {OPERATION_STATES}, got {self.state!r}")
        if not 0 <= self.percent <= 100:
            raise ValueError(f"percent must be 0..100, got {self.percent}")
        if self.message_id.count(".") != 3:
            raise ValueError(f"message_id must look like Registry.M.m.Id, got {self.message_id!r}")


Unsubscribe = Callable[[], None]


@runtime_checkable
class RedfishBackend(Protocol):
    """Everything the Redfish service needs from the agent."""

    def identity(self) -> SystemIdentity:
        """Ids and descriptive fields of this system, manager and chassis."""
        ...

    async def power_state(self) -> PowerState:
        """The host's power state; raises ``HostError`` when it cannot be read."""
        ...

    async def reset(self, kind: ResetType) -> str | None:
        """ComputerSystem.Reset; raises ``HostError`` (or a subclass) on failure. Returns
        None when done, or the id of an operation started first (a recovery before the
        host may run), which the service answers 202 with a Task for."""
        ...

    def targets(self) -> list[TargetInfo]:
        """Installed firmware per target, for FirmwareInventory."""
        ...

    def donatable(self) -> list[ImageInfo]:
        """Images this agent holds and can donate, for SoftwareInventory."""
        ...

    async def start_update(
        self, package: Path, targets: list[str] | None, force: bool, apply_time: ApplyTime
    ) -> str:
        """Start updating from ``package``; return the operation id (the Task id).

        Raises a ``TrustError`` subclass synchronously when the package is bad (signature,
        anti-rollback, compatibility — never bypassed; ``force`` only allows reinstalling the
        same version), or a ``FwRescueError`` when the update cannot start. Later failures are
        reported as an :class:`OperationEvent` with ``state="Exception"``.
        """
        ...

    def subscribe(self, callback: Callable[[OperationEvent], None]) -> Unsubscribe:
        """Deliver every operation event (updates and automatic recoveries) to ``callback``,
        on the event loop thread; return a function that stops the delivery."""
        ...


@dataclass(frozen=True, kw_only=True)
class ResourceNotice:
    """A registry message about a resource (not a Task), e.g. an image the fleet circuit
    breaker withheld: published through the EventService as a ``ResourceEvent``."""

    message_id: str
    args: tuple[str, ...]
    origin: str  # the @odata.id of the resource the message is about


@dataclass(frozen=True, kw_only=True)
class WithheldImage:
    """An image this agent no longer donates: ``failures`` distinct recipients reported
    that it did not boot (docs/protocol.md, REPORT and the fleet circuit breaker)."""

    manifest_digest: str
    target: str
    failures: int
    recipients: tuple[str, ...]


@runtime_checkable
class FleetNotices(Protocol):
    """Optional backend side: the circuit breaker's withheld images, and notices of them."""

    def withheld_images(self) -> list[WithheldImage]:
        """Images withheld, in the order they were withheld."""
        ...

    def subscribe_notices(self, callback: Callable[[ResourceNotice], None]) -> Unsubscribe:
        """Call ``callback`` for each new notice until unsubscribed."""


@runtime_checkable
class CancellableBackend(Protocol):
    """A backend whose operations can be cancelled (``DELETE`` on a Task); optional."""

    def cancel_operation(self, op_id: str) -> bool:
        """Ask operation ``op_id`` to stop at its next safe point (never inside an erase);
        True when accepted (its Task then ends ``Cancelled``), False when it is not running
        or is past its last safe point."""
        ...
