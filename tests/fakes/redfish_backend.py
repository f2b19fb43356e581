"""An in-memory :class:`RedfishBackend` for the Redfish service's tests.

Packages are tiny text files: a header line ``FWPKG target=bios version=2.0.0 svn=2
sig=good`` followed by image bytes. The fake applies the agent's rules: a bad signature or a
security version below the floor is refused synchronously (``SignatureError`` /
``RollbackError``), reinstalling the same version needs ``force``; ``fail=late`` in the header
makes the update fail later, as an ``Exception`` event.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from fwrescue.errors import ManifestError, RollbackError, SignatureError
from fwrescue.host.base import PowerState
from fwrescue.redfish.backend import (
    ApplyTime,
    ImageInfo,
    OperationEvent,
    ResetType,
    SystemIdentity,
    TargetInfo,
    Unsubscribe,
)

__all__ = ["FakeBackend", "make_package"]


def make_package(
    path: Path,
    *,
    target: str = "bios",
    version: str = "2.0.0",
    svn: int = 2,
    sig: str = "good",
    fail: str = "",
    payload: bytes = b"\xa5" * 4096,
) -> Path:
    header = f"FWPKG target={target} version={version} svn={svn} sig={sig} fail={fail}\n"
    path.write_bytes(header.encode() + payload)
    return path


class FakeBackend:
    def __init__(self, step_delay: float = 0.0) -> None:
        self.step_delay = step_delay
        self.power = PowerState.ON
        self.resets: list[str] = []
        self.cancelled: list[str] = []
        self.received: list[tuple[bytes, list[str] | None, bool, str]] = []
        self.gate: asyncio.Event | None = None  # when set by a test, updates wait on it
        self._targets: dict[str, TargetInfo] = {
            "bios": TargetInfo(
                name="bios",
                version="1.0.0",
                lowest_supported_version="1.0.0",
                security_version=1,
            ),
            "cpld": TargetInfo(
                name="cpld",
                version="0.3",
                lowest_supported_version="0.1",
                security_version=0,
                updateable=False,
            ),
        }
        self._callbacks: list[Callable[[OperationEvent], None]] = []
        self._ids = itertools.count(1)
        self._running: set[asyncio.Task[None]] = set()

    # --- RedfishBackend ----------------------------------------------------------------

    def identity(self) -> SystemIdentity:
        return SystemIdentity(
            system_id="system",
            manager_id="bmc",
            chassis_id="chassis",
            machine_name="rack1-node3",
            serial="SN123",
            model="FakeBoard X1",
            manager_firmware_version="0.1.0",
        )

    async def power_state(self) -> PowerState:
        return self.power

    async def reset(self, kind: ResetType) -> str | None:
        self.resets.append(kind)
        self.power = PowerState.OFF if kind in ("ForceOff", "GracefulShutdown") else PowerState.ON
        return None

    def cancel_operation(self, op_id: str) -> bool:
        self.cancelled.append(op_id)
        return False

    def targets(self) -> list[TargetInfo]:
        return list(self._targets.values())

    def donatable(self) -> list[ImageInfo]:
        bios = self._targets["bios"]
        return [
            ImageInfo(
                target="bios",
                version=bios.version,
                machine_names=("rack1-node3",),
                sha256="ab" * 32,
                size=4096,
            )
        ]

    async def start_update(
        self, package: Path, targets: list[str] | None, force: bool, apply_time: ApplyTime
    ) -> str:
        raw = package.read_bytes()
        header, _, image = raw.partition(b"\n")
        self.received.append((image, targets, force, apply_time))
        fields = dict(
            kv.split("=", 1) for kv in header.decode(errors="replace").split()[1:] if "=" in kv
        )
        if not header.startswith(b"FWPKG ") or "target" not in fields:
            raise ManifestError("not an fwrescue package")
        if fields.get("sig") != "good":
            raise SignatureError("manifest signature is not from a trusted key")
        target = self._targets.get(fields["target"])
        if target is None or (targets and target.name not in targets):
            raise ManifestError("package targets another component", target=fields["target"])
        if int(fields.get("svn", "0")) < target.security_version:
            raise RollbackError(
                "security version below the anti-rollback floor", floor=target.security_version
            )
        if fields.get("version") == target.version and not force:
            raise RollbackError("same version already installed; use ForceUpdate")
        op_id = f"upd-{next(self._ids)}"
        package.unlink()
        run = asyncio.get_running_loop().create_task(
            self._run(
                op_id,
                target.name,
                fields["version"],
                int(fields["svn"]),
                fields.get("fail") == "late",
            )
        )
        self._running.add(run)
        run.add_done_callback(self._running.discard)
        return op_id

    def subscribe(self, callback: Callable[[OperationEvent], None]) -> Unsubscribe:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    # --- test helpers ------------------------------------------------------------------

    def emit(self, event: OperationEvent) -> None:
        for cb in list(self._callbacks):
            cb(event)

    def emit_recovery(self, op_id: str = "rec-1", *, fail: bool = False) -> None:
        """An automatic recovery negotiated with a peer, start to finish."""
        self.emit(
            OperationEvent(
                op_id=op_id,
                kind="recovery",
                state="Running",
                percent=5,
                target="bios",
                message_id="Update.1.3.UpdateInProgress",
                message="Recovery started: flash corrupt",
                transcript_entry={"event": "SOLICIT", "xid": "0x1234"},
            )
        )
        self.emit(
            OperationEvent(
                op_id=op_id,
                kind="recovery",
                state="Running",
                percent=40,
                target="bios",
                message_id="Update.1.3.TransferringToComponent",
                message="Receiving from peer-7",
                args=("bios-1.0.0", "bios"),
                transcript_entry={"event": "ACCEPT", "donor": "peer-7", "reason": "newest"},
            )
        )
        self.emit(
            OperationEvent(
                op_id=op_id,
                kind="recovery",
                state="Exception" if fail else "Completed",
                percent=100 if not fail else 60,
                target="bios",
                message_id="Update.1.3.ApplyFailed" if fail else "Update.1.3.UpdateSuccessful",
                message="Recovery failed" if fail else "bios recovered from peer-7",
                args=("bios-1.0.0", "bios") if fail else ("bios", "bios-1.0.0"),
            )
        )

    async def _run(self, op_id: str, target: str, version: str, svn: int, fail: bool) -> None:
        image = f"{target}-{version}"
        self._targets[target] = replace(self._targets[target], state="Updating")
        self.emit(
            OperationEvent(
                op_id=op_id,
                kind="update",
                state="Running",
                percent=10,
                target=target,
                message_id="Update.1.3.UpdateInProgress",
                message="An update is in progress.",
            )
        )
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.step_delay)
        self.emit(
            OperationEvent(
                op_id=op_id,
                kind="update",
                state="Running",
                percent=50,
                target=target,
                message_id="Update.1.3.InstallingOnComponent",
                message="",
                args=(image, target),
            )
        )
        await asyncio.sleep(self.step_delay)
        if fail:
            self._targets[target] = replace(self._targets[target], state="Enabled")
            self.emit(
                OperationEvent(
                    op_id=op_id,
                    kind="update",
                    state="Exception",
                    percent=50,
                    target=target,
                    message_id="Update.1.3.ApplyFailed",
                    message="",
                    args=(image, target),
                )
            )
            return
        self._targets[target] = replace(
            self._targets[target],
            version=version,
            security_version=svn,
            state="Enabled",
            lowest_supported_version=version,
        )
        self.emit(
            OperationEvent(
                op_id=op_id,
                kind="update",
                state="Completed",
                percent=100,
                target=target,
                message_id="Update.1.3.UpdateSuccessful",
                message="",
                args=(target, image),
            )
        )
