"""The host seam: the server the BMC powers, resets and watches boot.

Backends: :class:`fwrescue.host.virtual.VirtualHost` (a model that boots only
if its flash holds a genuine image) and :class:`fwrescue.host.qemu.QemuHost`
(QEMU + OVMF from a pflash file, driven through QMP, watched on its serial log).

Contract used by the recovery engine: it holds the host (off or in reset) before
touching flash and releases it only after the flash verified. Every failure
raises :class:`fwrescue.errors.HostError` (``BootTimeout`` for the watchdog).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["BootResult", "FlashMode", "Host", "PowerState"]


class PowerState(enum.Enum):
    OFF = "Off"
    ON = "On"
    #: powered but held in reset (DC-on flashing)
    RESET_HELD = "ResetHeld"


class FlashMode(enum.Enum):
    """How the host is kept off its flash while the BMC writes it."""

    DC_OFF = "dc-off"  # powered off
    DC_ON = "dc-on"  # powered, held in reset


@dataclass(frozen=True)
class BootResult:
    booted: bool
    seconds: float
    detail: str = ""
    log_path: Path | None = None


@runtime_checkable
class Host(Protocol):
    async def power_state(self) -> PowerState: ...

    async def power_on(self) -> None:
        """Power on (from OFF) and let it run."""
        ...

    async def power_off(self) -> None:
        """Force power off; idempotent."""
        ...

    async def hold_reset(self) -> None:
        """Keep the host powered but in reset (DC-on flashing); idempotent."""
        ...

    async def release_reset(self) -> None:
        """Leave reset and start running from flash."""
        ...

    async def wait_boot(self, timeout: float) -> BootResult:
        """Wait for the boot-success signal after power-on/release; never raises on timeout,
        returns ``booted=False`` instead."""
        ...

    async def close(self) -> None:
        """Release processes and files."""
        ...
