"""The agent's side of the Redfish seam: :class:`AgentBackend` implements
:class:`~fwrescue.redfish.backend.RedfishBackend` over a running :class:`~fwrescue.agent.Agent`.

Policies that Redfish can never bypass live in the engine and the verifier: an
update package passes every trust step (signature, board, anti-rollback) before a
Task exists; ``ForceUpdate`` only allows reinstalling the version already installed;
``Reset`` to On powers the host only onto verified flash (recovering first).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import re
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fwrescue import __version__
from fwrescue import agent_progress as progress
from fwrescue.atomicfile import atomic_write
from fwrescue.errors import CompatibilityError, ConfigError, HostError, PackageError
from fwrescue.host.base import PowerState
from fwrescue.image.package import open_package, stage_package
from fwrescue.protocol.events import ImageWithheld
from fwrescue.recovery.ports import Located
from fwrescue.recovery.ports import OperationEvent as EngineEvent
from fwrescue.recovery.ports import OperationState as EngineState
from fwrescue.redfish.backend import (
    ApplyTime,
    ImageInfo,
    OperationEvent,
    ResetType,
    ResourceNotice,
    SystemIdentity,
    TargetInfo,
    Unsubscribe,
    WithheldImage,
)

if TYPE_CHECKING:
    from fwrescue.agent import Agent

__all__ = ["AgentBackend", "AlreadyInstalled"]

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_MAX_PENDING_BYTES = 64 * 1024


class AlreadyInstalled(CompatibilityError):
    """The package's version is already installed and ForceUpdate was not set."""

    message_id = "Update.1.3.UpdateSkippedSameVersion"


# Transcript values are small records (offers, reasons, counters); nesting beyond this is a
# bug upstream, shown as text rather than followed.
_MAX_DEPTH = 4


def _json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON: enums by value, mappings and sequences converted member by
    member (so a client reads an offer's ``donor_id`` instead of a Python repr), anything
    else as text."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str | int | float | bool | type(None)):
        return value
    if depth < _MAX_DEPTH and isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if depth < _MAX_DEPTH and isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v, depth + 1) for v in value]
    return str(value)


class AgentBackend:
    """RedfishBackend over one agent."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._tasks: set[asyncio.Task[Any]] = set()
        # target -> manifest digest of a verified image in the store, applied at the next
        # reset; persisted so a restart does not forget what a Task promised
        self._pending_path = agent.config.state_dir / "pending-updates.json"
        self._pending: dict[str, str] = self._load_pending()

    def _load_pending(self) -> dict[str, str]:
        try:
            raw = self._pending_path.read_bytes()[:_MAX_PENDING_BYTES + 1]
            data = json.loads(raw)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.error("pending updates unreadable, ignored: %s", e)
            return {}
        if len(raw) > _MAX_PENDING_BYTES or not isinstance(data, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and _DIGEST.match(v)
                for k, v in data.items()):
            log.error("pending updates malformed, ignored")
            return {}
        return data

    def _save_pending(self) -> None:
        atomic_write(self._pending_path, json.dumps(self._pending, sort_keys=True).encode())

    async def close(self) -> None:
        """Cancel and await updates this service started (the agent is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- identity and power ------------------------------------------------------------------

    def identity(self) -> SystemIdentity:
        config = self._agent.config
        return SystemIdentity(
            system_id=config.node_id, manager_id="bmc", chassis_id="chassis",
            machine_name=config.machine_name, serial=config.node_id,
            model=config.machine_name, manager_firmware_version=f"fwrescue {__version__}")

    def _bios(self) -> Any:
        for runtime in self._agent.targets.values():
            if runtime.host is not None:
                return runtime
        return None

    async def power_state(self) -> PowerState:
        runtime = self._bios()
        if runtime is None:
            return PowerState.OFF
        return await runtime.host.power_state()  # type: ignore[no-any-return]

    async def reset(self, kind: ResetType) -> str | None:
        """Power the host (the engine serializes every power request with operations). To
        On onto flash that does not verify: the recovery starts in the background and its
        operation id is returned at once (a Task), instead of holding the request."""
        runtime = self._bios()
        if runtime is None:
            raise HostError("this agent manages no host")
        engine = runtime.engine
        if kind in ("ForceOff", "GracefulShutdown", "ForceRestart", "PowerCycle"):
            await engine.guarded_power_off()
        if kind in ("On", "ForceRestart", "PowerCycle"):
            digest = self._pending.pop(runtime.config.name, None)
            if digest is not None:  # OnReset apply time: install before running the host
                self._save_pending()
                located = self._pending_image(runtime.config.name, digest)
                result = await engine.apply(located, reason="update applied at reset")
                if not result.ok:  # the Task shows why; the reset must not look successful
                    raise HostError("the update staged for this reset failed; the host is "
                                    "held", op_id=result.op_id, reason=result.reason)
                return None
            if not (await engine.check_integrity()).ok:
                op_id: str = engine.new_op_id("recovery")
                self._spawn(engine.guarded_power_on(op_id=op_id))
                return op_id
            if not await engine.guarded_power_on():
                raise HostError("the host did not boot")
        return None

    def cancel_operation(self, op_id: str) -> bool:
        return any(runtime.engine.cancel(op_id) for runtime in self._agent.targets.values())

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` in the background; :meth:`close` cancels and awaits it."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- inventory ---------------------------------------------------------------------------

    def targets(self) -> list[TargetInfo]:
        infos = []
        verifier = self._agent.verifier
        for name, runtime in self._agent.targets.items():
            engine = runtime.engine
            installed = engine.installed()
            floor = verifier.floor(name)
            result = engine.last_result
            health = "Critical" if result is not None and not result.ok else "OK"
            state = "Updating" if engine.current is not None else "Enabled"
            infos.append(TargetInfo(
                name=name,
                version=installed.manifest.version if installed else "unknown",
                lowest_supported_version=self._lowest_version(name, floor),
                security_version=installed.manifest.security_version if installed else 0,
                updateable=True, health=health, state=state))
        return infos

    def _lowest_version(self, target: str, floor: int) -> str:
        """The oldest known version still at or above the anti-rollback floor."""
        candidates = [s.manifest for s in self._agent.store.list()
                      if s.manifest.fits(target, self._agent.config.machine_name)
                      and s.manifest.security_version >= floor]
        if not candidates:
            return f"security-version-{floor}"
        return min(candidates, key=lambda m: m.security_version).version

    def donatable(self) -> list[ImageInfo]:
        return [ImageInfo(target=s.manifest.target, version=s.manifest.version,
                          machine_names=s.manifest.machine_names, sha256=s.manifest.sha256,
                          size=s.manifest.size)
                for s in self._agent.store.list()]

    # --- updates -----------------------------------------------------------------------------

    async def start_update(self, package: Path, targets: list[str] | None, force: bool,
                           apply_time: ApplyTime) -> str:
        target = await asyncio.to_thread(self._package_target, package)
        if targets and target not in targets:
            raise CompatibilityError("package is for another target", package_target=target,
                                     targets=targets)
        if target not in self._agent.targets:
            raise CompatibilityError("this agent does not manage the package's target",
                                     target=target)
        engine = self._agent.targets[target].engine
        try:
            located = await engine.verify_package(package, stage=stage_package)
        finally:
            with contextlib.suppress(OSError):
                package.unlink()
        installed = engine.installed()
        if (not force and installed is not None
                and installed.manifest.sha256 == located.verified.manifest.sha256):
            # A refused update leaves nothing behind: drop the image staged while verifying.
            located.image.unlink(missing_ok=True)
            raise AlreadyInstalled("this image is already installed; set ForceUpdate to "
                                   "reinstall it", version=installed.manifest.version)
        op_id = engine.new_op_id("update")
        if apply_time == "OnReset":
            # Into the store (verified again on the way) so it survives a restart; a newer
            # request for the same target supersedes an older one.
            await asyncio.to_thread(self._agent.store.put, located.verified, located.image)
            self._pending[target] = located.verified.digest
            self._save_pending()
            self._emit_pending(op_id, target, located.verified.manifest.version)
            return op_id
        task = asyncio.create_task(engine.apply(located, op_id=op_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return op_id

    def _pending_image(self, target: str, digest: str) -> Located:
        """The stored image a pending update named; every manifest check runs again (the
        floor may have risen since it was staged), and the engine re-hashes the bytes."""
        stored = self._agent.store.get(digest)
        if stored is None:
            raise HostError("the update staged for this reset is no longer stored",
                            digest=digest)
        verified = self._agent.verifier.verify_signed(
            stored.signed, target=target, machine_name=self._agent.config.machine_name)
        return Located(verified=verified, image=Path(stored.image_path), origin="operator")

    @staticmethod
    def _package_target(package: Path) -> str:
        try:
            return open_package(package).manifest.target
        except OSError as e:
            raise PackageError("cannot read the uploaded package", detail=str(e)) from e

    def _emit_pending(self, op_id: str, target: str, version: str) -> None:
        self._agent.events(EngineEvent(
            op_id=op_id, kind="update", target=target, state=EngineState.COMPLETED,
            phase="staged", entered=True,
            message=f"{version} verified and staged; it is applied at the next reset"))

    # --- fleet policy (redfish/routes_policy.py) ------------------------------------------

    def apply_fleet_policy(self, raw: bytes) -> dict[str, Any]:
        self._agent.fleet_policy.apply(raw)
        return self._agent.fleet_policy.describe()

    def fleet_policy(self) -> dict[str, Any]:
        return self._agent.fleet_policy.describe()

    # --- events ------------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[OperationEvent], None]) -> Unsubscribe:
        def forward(event: EngineEvent) -> None:
            converted = self._convert(event)
            if converted is not None:
                callback(converted)

        self._agent.events.callbacks.append(forward)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._agent.events.callbacks.remove(forward)

        return unsubscribe

    # --- the fleet circuit breaker ------------------------------------------------------

    def withheld_images(self) -> list[WithheldImage]:
        return [WithheldImage(manifest_digest=w.manifest_digest, target=w.target,
                              failures=w.failures, recipients=w.recipients)
                for w in self._agent.donor.withheld.values()]

    def subscribe_notices(self, callback: Callable[[ResourceNotice], None]) -> Unsubscribe:
        """A ``ResourceEvent`` on UpdateService for each image the breaker withholds."""
        def forward(event: ImageWithheld) -> None:
            callback(ResourceNotice(
                message_id="ResourceEvent.1.4.ResourceErrorThresholdExceeded",
                args=(f"BootFailures of image {event.manifest_digest}", str(event.failures)),
                origin="/redfish/v1/UpdateService"))

        listeners = self._agent.donor.on_withheld
        listeners.append(forward)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                listeners.remove(forward)

        return unsubscribe

    @staticmethod
    def _convert(event: EngineEvent) -> OperationEvent | None:
        percent = max(0, min(100, progress.percent(event)))
        msg_id = progress.message_id(event)
        try:
            return OperationEvent(
                op_id=event.op_id, kind="update" if event.kind == "update" else "recovery",
                state=event.state.value, percent=percent,
                message_id=msg_id, message=event.message[:500],
                args=progress.message_args(event, msg_id, percent),
                transcript_entry=_json_safe(event.transcript_entry)
                if event.transcript_entry else None,
                target=event.target, extra={"phase": event.phase})
        except ValueError as e:
            log.warning("dropping an event Redfish cannot represent: %s", e)
            return None


def redfish_accounts(users: tuple[tuple[str, str, str], ...]) -> Any:
    from fwrescue.redfish.settings import AccountSpec

    if not users:
        raise ConfigError("redfish.enabled needs at least one [[redfish.users]] account")
    return tuple(AccountSpec(username=u, password=p, role=r) for u, p, r in users)
