"""Choosing QEMU's accelerator: KVM when it really runs guests here, else TCG.

Opening ``/dev/kvm`` read-write is necessary but not sufficient: under nested
or sandboxed virtualization the device opens fine and QEMU then stops the guest
with "KVM internal error … emulation failure" on the first FPU instruction of
OVMF's SEC phase. So ``auto`` also runs a probe: a 64 KiB pflash image whose
reset vector executes ``finit`` and writes to QEMU's ``isa-debug-exit`` port.
If QEMU exits with the probe's code, KVM works; anything else (an error line
on stderr, a hang, another exit code) means TCG.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Literal

__all__ = [
    "ACCEL_ARGS",
    "PROBE_EXIT_CODE",
    "Accel",
    "kvm_device_usable",
    "probe_image",
    "probe_kvm",
]

Accel = Literal["kvm", "tcg"]

#: Command-line fragment per accelerator. ``-cpu host`` under KVM: the default
#: qemu64 model asks for features a nested host may lack.
ACCEL_ARGS: dict[Accel, tuple[str, ...]] = {
    "kvm": ("-accel", "kvm", "-cpu", "host"),
    "tcg": ("-accel", "tcg"),
}

_DEBUG_EXIT_PORT = 0xF4
_PROBE_VALUE = 0x20
#: isa-debug-exit makes QEMU exit with (value << 1) | 1.
PROBE_EXIT_CODE = (_PROBE_VALUE << 1) | 1


def kvm_device_usable(device: Path = Path("/dev/kvm")) -> bool:
    """True if ``device`` opens read-write (the first condition for KVM)."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def probe_image() -> bytes:
    """A 64 KiB pflash image whose reset vector runs ``finit`` then exits QEMU.

    Real mode at 0xFFFF_FFF0: ``9B DB E3`` finit; ``B0 20`` mov al,0x20;
    ``E6 F4`` out 0xF4,al; ``F4`` hlt; ``EB FD`` jmp back to hlt. The rest is hlt.
    """
    code = bytes([0x9B, 0xDB, 0xE3, 0xB0, _PROBE_VALUE, 0xE6, _DEBUG_EXIT_PORT, 0xF4, 0xEB, 0xFD])
    image = bytearray(b"\xf4" * 65536)
    image[-16 : -16 + len(code)] = code
    return bytes(image)


async def probe_kvm(qemu_binary: str, workdir: Path, *, timeout: float = 5.0) -> bool:
    """Run the probe guest under KVM; True only if it exits with :data:`PROBE_EXIT_CODE`.

    Never raises for a failing KVM (that is the answer False); a QEMU that cannot
    be started at all also gives False, and the real start reports the error.
    """
    if not kvm_device_usable():
        return False
    image = workdir / "accel-probe.bin"
    image.write_bytes(probe_image())
    argv = [
        qemu_binary,
        *ACCEL_ARGS["kvm"],
        "-machine", "q35",
        "-nodefaults",
        "-display", "none",
        "-net", "none",
        "-m", "16",
        "-device", f"isa-debug-exit,iobase={_DEBUG_EXIT_PORT:#x},iosize=0x04",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={image}",
    ]  # fmt: skip
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError:
        return False
    assert proc.stderr is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        # Bounded by the deadline and by EOF; a failing KVM prints an error line at once.
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            line = await asyncio.wait_for(proc.stderr.readline(), remaining)
            if not line:
                break
            if b"error" in line.lower():
                return False
        code = await asyncio.wait_for(proc.wait(), max(0.1, deadline - loop.time()))
        return code == PROBE_EXIT_CODE
    except TimeoutError:
        return False
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        with contextlib.suppress(OSError):
            image.unlink()
