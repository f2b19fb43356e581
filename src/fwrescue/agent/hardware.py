"""Build the concrete flash and host of a target from its settings.

The only place that knows which class backs ``flash.kind`` and ``host.kind``;
the agent calls it once per target.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from fwrescue.config import FlashSettings, TargetConfig
from fwrescue.errors import ConfigError
from fwrescue.flash.device import Flash, FlashChip, FlashGeometry
from fwrescue.flash.filechip import FileChip
from fwrescue.flash.flashrom import FlashromFlash
from fwrescue.flash.layout import BankedFlash, FlashLayout, FlashRegion
from fwrescue.flash.timing import TimedChip, timing_for
from fwrescue.flash.writer import EraseAwareFlash
from fwrescue.host.base import Host

__all__ = ["build_flash", "build_host"]

#: emulated parts whose flashrom name and size we know (others are probed, a little slower)
_DUMMY_CHIPS = {"W25Q128FV": ("W25Q128.V", 16 << 20)}


def build_flash(settings: FlashSettings, *, workdir: Path) -> Flash:
    """A region-level Flash for ``settings``; ConfigError when the chip cannot be opened."""
    workdir.mkdir(parents=True, exist_ok=True)
    if settings.kind == "flashrom":
        if not settings.programmer:
            raise ConfigError("a flashrom flash needs flash.programmer")
        chip_name, chip_size = _dummy_chip(settings.programmer)
        region = None
        if settings.region_offset or settings.region_size:
            size = settings.region_size or (chip_size or 0) - settings.region_offset
            if size <= 0:
                raise ConfigError("a flashrom region at an offset needs flash.region_size")
            region = (settings.region_offset, size)
        return FlashromFlash(settings.programmer, region=region, chip=chip_name,
                             chip_size=chip_size, workdir=workdir)
    if settings.path is None or not settings.path.exists():
        raise ConfigError("flash file does not exist", path=str(settings.path))
    size = settings.chip_size or settings.path.stat().st_size
    erase_sizes = tuple(e for e in (4096, 32768, 65536) if size % e == 0)
    if not erase_sizes:
        raise ConfigError("flash size must be a multiple of 4 KiB", size=size)
    chip: FlashChip = FileChip(settings.path, FlashGeometry(size=size, erase_sizes=erase_sizes))
    timing = timing_for(settings.timing_chip or "W25Q256JV")
    if settings.timing_chip and settings.timing_scale > 0:
        import time

        chip = TimedChip(chip, timing, scale=settings.timing_scale, sleep=time.sleep)
    if settings.bank_b_offset:
        sector = chip.geometry.min_erase
        layout = FlashLayout(
            bank_a=FlashRegion("bank-a", settings.region_offset, settings.region_size),
            bank_b=FlashRegion("bank-b", settings.bank_b_offset, settings.region_size),
            marker=FlashRegion("marker", settings.marker_offset, 2 * sector))
        return BankedFlash(chip, layout, timing=timing)
    return EraseAwareFlash(chip, region_offset=settings.region_offset,
                           region_size=settings.region_size or None, timing=timing)


def _dummy_chip(programmer: str) -> tuple[str | None, int | None]:
    if not programmer.startswith("dummy:"):
        return None, None
    for emulate, (name, size) in _DUMMY_CHIPS.items():
        if f"emulate={emulate}" in programmer:
            return name, size
    return None, None


def build_host(target: TargetConfig, *, workdir: Path, flash_path: Path | None,
               firmware_ok: Callable[[], bool]) -> Host | None:
    """The host behind ``target`` (only a BIOS target has one); ``firmware_ok`` lets the
    virtual host model a machine that runs only genuine firmware."""
    settings = target.host
    if settings.kind == "none":
        return None
    if settings.kind == "virtual":
        from fwrescue.host.virtual import VirtualHost

        return VirtualHost(firmware_ok=firmware_ok)
    from fwrescue.host.qemu import QemuHost, find_ovmf

    if flash_path is None:
        raise ConfigError("a QEMU host needs the flash file as its firmware hub")
    if target.flash.bank_b_offset:
        raise ConfigError("a QEMU host maps one fixed BIOS region; dual banks need a "
                          "virtual host")
    workdir.mkdir(parents=True, exist_ok=True)
    vars_path = workdir / "vars.fd"
    if not vars_path.exists():
        shutil.copy(settings.vars_path or find_ovmf()[1], vars_path)
    region = None
    offset, file_size = target.flash.region_offset, flash_path.stat().st_size
    size = target.flash.region_size or file_size - offset
    if offset or size != file_size:  # the BIOS region is part of a larger chip image
        region = (offset, size)
    accel = settings.accel if settings.accel in ("kvm", "tcg") else "auto"
    return QemuHost(code_path=flash_path, vars_path=vars_path, workdir=workdir,
                    accel=accel,  # type: ignore[arg-type]
                    boot_pattern=settings.boot_pattern, code_region=region)
