"""What the agent's collaborators see of it: its parts, as a Protocol.

The Redfish backend and the fleet policy depend on :class:`AgentParts`, not on the
:class:`~fwrescue.agent.core.Agent` class, so ``core`` imports them and nothing imports
``core`` back (no import circle). :class:`~fwrescue.agent.core.Agent` satisfies it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from fwrescue.config import AgentConfig, TargetConfig
from fwrescue.flash.device import Flash
from fwrescue.host.base import Host
from fwrescue.image.store import PackageStore
from fwrescue.recovery.engine import OperationResult, RecoveryEngine
from fwrescue.recovery.ports import OperationEvent
from fwrescue.trust.verifier import Verifier

if TYPE_CHECKING:
    from fwrescue.donor.service import DonorService
    from fwrescue.trust.policy import FleetPolicy

__all__ = ["AgentParts", "EventListeners", "FleetPolicyDesk", "TargetRuntime"]

log = logging.getLogger(__name__)


@dataclass
class TargetRuntime:
    """One target's flash, host and recovery engine."""

    config: TargetConfig
    flash: Flash
    host: Host | None
    engine: RecoveryEngine


@dataclass
class EventListeners:
    """The agent's operation events, fanned out to every callback; a failing callback is
    logged and never stops a recovery."""

    callbacks: list[Callable[[OperationEvent], None]] = field(default_factory=list)

    def __call__(self, event: OperationEvent) -> None:
        for callback in list(self.callbacks):
            try:
                callback(event)
            except Exception:  # a display or Redfish bug must never stop a recovery
                log.exception("event listener failed")


class FleetPolicyDesk(Protocol):
    """The fleet policy in force, as Redfish uses it; ``AgentFleetPolicy`` is one."""

    def apply(self, raw: bytes) -> FleetPolicy: ...

    def describe(self) -> dict[str, Any]: ...


class AgentParts(Protocol):
    """The parts of a running agent its Redfish backend and fleet policy use ."""

    config: AgentConfig
    events: EventListeners
    verifier: Verifier
    store: PackageStore
    targets: dict[str, TargetRuntime]
    results: dict[str, OperationResult]
    donor: DonorService

    @property
    def fleet_policy(self) -> FleetPolicyDesk: ...
