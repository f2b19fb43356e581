"""Minimal in-memory stand-ins for the flash and host seams (unit tests only)."""

from __future__ import annotations

from pathlib import Path

from fwrescue.errors import FlashError, FlashPowerLoss
from fwrescue.flash.device import Progress, WriteReport
from fwrescue.host.base import BootResult, PowerState


class MemoryFlash:
    """A region-level Flash over a bytearray; can lose power after N bytes written."""

    def __init__(self, size: int, fill: int = 0xFF) -> None:
        self.data = bytearray([fill]) * size
        self.writes = 0
        self.power_cut_after: int | None = None
        self.fail_writes = 0

    @property
    def size(self) -> int:
        return len(self.data)

    def read_to(self, offset: int, length: int, dest: Path) -> None:
        if offset + length > len(self.data):
            raise FlashError("read past the end")
        dest.write_bytes(bytes(self.data[offset:offset + length]))

    def write(self, offset: int, image: Path, progress: Progress | None = None) -> WriteReport:
        payload = image.read_bytes()
        self.writes += 1
        if self.fail_writes:
            self.fail_writes -= 1
            raise FlashError("program failed")
        if self.power_cut_after is not None:
            cut = self.power_cut_after
            self.power_cut_after = None
            self.data[offset:offset + cut] = payload[:cut]
            raise FlashPowerLoss("power lost", offset=offset + cut)
        self.data[offset:offset + len(payload)] = payload
        if progress:
            progress(len(payload), len(payload))
        return WriteReport(bytes_total=len(payload), bytes_programmed=len(payload),
                           erased_blocks={65536: -(-len(payload) // 65536)}, skipped_bytes=0)


class RecordingHost:
    """A host that boots when ``firmware_ok()`` and records what it ran on."""

    def __init__(self, firmware_ok: object) -> None:
        self._ok = firmware_ok
        self.state = PowerState.ON
        self.runs: list[bool] = []

    async def power_state(self) -> PowerState:
        return self.state

    async def power_on(self) -> None:
        if self.state is not PowerState.ON:
            self.state = PowerState.ON
            self.runs.append(bool(self._ok()))  # type: ignore[operator]

    async def power_off(self) -> None:
        self.state = PowerState.OFF

    async def hold_reset(self) -> None:
        self.state = PowerState.RESET_HELD

    async def release_reset(self) -> None:
        self.state = PowerState.ON
        self.runs.append(bool(self._ok()))  # type: ignore[operator]

    async def wait_boot(self, timeout: float) -> BootResult:
        booted = self.state is PowerState.ON and bool(self.runs) and self.runs[-1]
        return BootResult(booted=booted, seconds=0.0)

    async def close(self) -> None:
        return None
