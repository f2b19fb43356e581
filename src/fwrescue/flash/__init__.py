"""Flash backends: NOR chips (file, memory, timed, faulty), the erase-aware writer,
dual-bank layouts, and the flashrom tool. The seams live in :mod:`fwrescue.flash.device`;
docs/flash.md explains the design."""

from fwrescue.flash._bounds import FlashAddressError
from fwrescue.flash.device import Flash, FlashChip, FlashGeometry, Progress, WriteReport
from fwrescue.flash.faults import FaultPlan, FaultyChip
from fwrescue.flash.filechip import ChipCounters, FileChip, MemoryChip
from fwrescue.flash.flashrom import FlashromFlash, FlashromVerifyError
from fwrescue.flash.layout import BankedFlash, BankState, FlashLayout, FlashRegion, RegionReader
from fwrescue.flash.timing import CHIP_TIMINGS, W25Q_JV, ChipTiming, TimedChip, timing_for
from fwrescue.flash.writer import EraseAwareFlash

__all__ = [
    "CHIP_TIMINGS",
    "W25Q_JV",
    "BankState",
    "BankedFlash",
    "ChipCounters",
    "ChipTiming",
    "EraseAwareFlash",
    "FaultPlan",
    "FaultyChip",
    "FileChip",
    "Flash",
    "FlashAddressError",
    "FlashChip",
    "FlashGeometry",
    "FlashLayout",
    "FlashRegion",
    "FlashromFlash",
    "FlashromVerifyError",
    "MemoryChip",
    "Progress",
    "RegionReader",
    "TimedChip",
    "WriteReport",
    "timing_for",
]
