"""Flash benchmarks: ratios measured in one run (docs/flash.md, ARCHITECTURE.md §10).

(a) identical rewrite vs full write, EraseAwareFlash + TimedChip, modelled time (target ≤ 0.05)
(b) erases for a one-block change (EraseAwareFlash and flashrom; target 1)
(c) FlashromFlash vs bare ``flashrom -w`` on the same 16 MiB jobs, wall time (target ≤ 1.2)
(d) 4 KiB-only vs largest-aligned erase, modelled time of a full rewrite (REFERENCES: ~2.7×)

Also prints the wall time of a 16 MiB FileChip write+verify (the power-loss sweep's unit).
Runs in well under a minute; needs the flashrom binary for (c).
"""

from __future__ import annotations

import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fwrescue.flash import (
    W25Q_JV,
    EraseAwareFlash,
    FileChip,
    FlashGeometry,
    FlashromFlash,
    MemoryChip,
    TimedChip,
)

CHIP = 16 * 1024 * 1024
S4K = 4096
FLASHROM_CHIP = "W25Q128.V"


def _modelled_write(geo: FlashGeometry, old: bytes, image: Path) -> tuple[float, TimedChip]:
    chip = TimedChip(MemoryChip(geo, fill=old), W25Q_JV)
    EraseAwareFlash(chip).write(0, image)
    return chip.modelled_seconds, chip


def bench_model(work: Path, old: bytes, new: bytes) -> None:
    geo = FlashGeometry(CHIP)
    img = work / "new.bin"
    img.write_bytes(new)
    full, chip = _modelled_write(geo, old, img)
    chip.reset()
    EraseAwareFlash(chip).write(0, img)
    identical = chip.modelled_seconds
    print(
        f"(a) identical rewrite / full write (modelled W25Q): {identical / full:.4f}"
        f"  [{identical:.2f} s / {full:.1f} s]  target <= 0.05"
    )

    changed = bytearray(new)
    changed[0x123456] ^= 0xFF
    img2 = work / "changed.bin"
    img2.write_bytes(changed)
    chip2 = MemoryChip(geo, fill=new)
    report = EraseAwareFlash(chip2).write(0, img2)
    print(
        f"(b) one-block change, EraseAwareFlash: erased {report.erased_blocks}"
        f" ({report.erase_count} block)  target 1"
    )

    small_only, _ = _modelled_write(FlashGeometry(CHIP, erase_sizes=(S4K,)), old, img)
    print(
        f"(d) 4 KiB-only / largest-aligned erase, full rewrite (modelled): "
        f"{small_only / full:.2f}x  [{small_only:.1f} s / {full:.1f} s]  REFERENCES ~2.7x"
    )


def bench_filechip(work: Path, old: bytes, new: bytes) -> None:
    chip_file = work / "filechip.bin"
    chip_file.write_bytes(old)
    img = work / "new.bin"
    with FileChip(chip_file, FlashGeometry(CHIP)) as chip:
        t0 = time.perf_counter()
        EraseAwareFlash(chip).write(0, img)
        t1 = time.perf_counter()
        EraseAwareFlash(chip).write(0, img)
        t2 = time.perf_counter()
    print(
        f"    FileChip 16 MiB write+verify: {t1 - t0:.3f} s full, {t2 - t1:.3f} s identical "
        f"(wall, this machine)"
    )


def _bare(flashrom: str, programmer: str, image: Path) -> None:
    argv = [flashrom, "-p", programmer, "-c", FLASHROM_CHIP, "-w", str(image)]
    subprocess.run(argv, capture_output=True, check=True, timeout=120)


def bench_flashrom(work: Path, old: bytes, new: bytes) -> None:
    flashrom = shutil.which("flashrom") or "/usr/sbin/flashrom"
    if not Path(flashrom).exists():
        print("(c) skipped: flashrom not installed")
        return
    chip_file = work / "dummy.bin"
    programmer = f"dummy:emulate=W25Q128FV,image={chip_file}"
    img = work / "new.bin"
    ours = FlashromFlash(
        programmer,
        flashrom=flashrom,
        chip=FLASHROM_CHIP,
        chip_size=CHIP,
        workdir=work / "fr",
        timeout=120,
    )

    def timed(job: str, run: str) -> float:
        chip_file.write_bytes(old if job == "full" else new)
        t0 = time.perf_counter()
        if run == "ours":
            ours.write(0, img)
        else:
            _bare(flashrom, programmer, img)
        return time.perf_counter() - t0

    for job in ("full", "identical"):
        samples: dict[str, list[float]] = {"ours": [], "bare": []}
        for _ in range(3):  # interleaved so drift hits both alike
            for run in ("bare", "ours"):
                samples[run].append(timed(job, run))
        o, b = statistics.median(samples["ours"]), statistics.median(samples["bare"])
        print(
            f"(c) FlashromFlash / bare flashrom -w, {job} 16 MiB: {o / b:.2f}x"
            f"  [{o:.2f} s / {b:.2f} s median of 3]  target <= 1.2"
        )

    chip_file.write_bytes(new)
    changed = bytearray(new)
    changed[0x123456] ^= 0xFF
    img2 = work / "changed.bin"
    img2.write_bytes(changed)
    report = ours.write(0, img2)
    print(f"(b) one-block change, FlashromFlash: erased {report.erased_blocks}  target 1")


def main() -> int:
    rng = random.Random(2026)
    old, new = rng.randbytes(CHIP), rng.randbytes(CHIP)
    with tempfile.TemporaryDirectory(prefix="bench-flash-") as d:
        work = Path(d)
        t0 = time.perf_counter()
        bench_model(work, old, new)
        bench_filechip(work, old, new)
        bench_flashrom(work, old, new)
        print(f"    total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
