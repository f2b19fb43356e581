"""QemuHost with real QEMU booting real OVMF from a pflash copy (the firmware hub).

Full boots cost seconds under TCG, so the stories share them: two full boots in all.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fwrescue.host.accel import probe_kvm
from fwrescue.host.base import PowerState
from fwrescue.host.qemu import QemuHost, QemuNotStarted, find_ovmf, prepare_firmware_hub

pytestmark = pytest.mark.slow

QEMU = "qemu-system-x86_64"
#: OVMF reaches the shell in ~4 s under TCG on 2 cores; generous for a loaded CI box.
BOOT_TIMEOUT = 90.0
#: A corrupt reset vector prints nothing at all; a few seconds of silence proves it.
NO_BOOT_TIMEOUT = 3.0
CORRUPT_TAIL = 64 * 1024


@pytest.fixture
def hub(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """Writable copies of OVMF (code, vars) and the pristine code bytes."""
    if shutil.which(QEMU) is None:
        pytest.fail(f"{QEMU} is not installed (Debian package qemu-system-x86)")
    code, vars_ = prepare_firmware_hub(tmp_path / "hub")
    return code, vars_, code.read_bytes()


@pytest.fixture
async def host(tmp_path: Path, hub: tuple[Path, Path, bytes]) -> AsyncIterator[QemuHost]:
    code, vars_, _ = hub
    qemu_host = QemuHost(code_path=code, vars_path=vars_, workdir=tmp_path / "host")
    try:
        yield qemu_host
    finally:
        await qemu_host.close()


def corrupt_reset_vector(code: Path, pristine: bytes) -> None:
    code.write_bytes(pristine[:-CORRUPT_TAIL] + b"\xff" * CORRUPT_TAIL)


def test_find_ovmf_locates_the_debian_firmware_pair() -> None:
    code, vars_ = find_ovmf()
    assert code.stat().st_size > 1 << 20
    assert "VARS" in vars_.name


async def test_dc_off_corrupt_flash_stays_dark_then_restored_flash_boots_to_the_shell(
    host: QemuHost, hub: tuple[Path, Path, bytes]
) -> None:
    code, _, pristine = hub
    corrupt_reset_vector(code, pristine)

    await host.power_on()
    assert host.accel_used in ("kvm", "tcg")
    assert await host.power_state() is PowerState.ON
    dark = await host.wait_boot(NO_BOOT_TIMEOUT)
    assert not dark.booted
    assert dark.log_path is not None and dark.log_path.read_bytes() == b""

    # A running host can be held in reset (QMP stop + system_reset) …
    await host.hold_reset()
    assert await host.power_state() is PowerState.RESET_HELD
    # … and DC-off flashing powers it off; the BMC then rewrites the hub.
    await host.power_off()
    assert await host.power_state() is PowerState.OFF
    code.write_bytes(pristine)

    await host.power_on()
    result = await host.wait_boot(BOOT_TIMEOUT)
    assert result.booted, result.detail
    assert result.log_path is not None and result.log_path != dark.log_path
    log = result.log_path.read_text(errors="replace")
    assert "UEFI Interactive Shell" in log or "Shell>" in log
    assert dark.log_path.exists()  # earlier boots' logs are kept


async def test_dc_on_release_from_reset_rereads_the_rewritten_flash(
    host: QemuHost, hub: tuple[Path, Path, bytes]
) -> None:
    code, _, pristine = hub
    corrupt_reset_vector(code, pristine)
    # QEMU loads the corrupt image into its pflash cache here …
    await host.hold_reset()
    assert await host.power_state() is PowerState.RESET_HELD
    held = await host.wait_boot(0.1)
    assert not held.booted and "reset" in held.detail
    # … the BMC rewrites the hub while the host is held …
    code.write_bytes(pristine)
    # … and it boots, so leaving reset read the new contents, not the cache.
    await host.release_reset()
    result = await host.wait_boot(BOOT_TIMEOUT)
    assert result.booted, result.detail


async def test_close_kills_qemu_and_removes_the_qmp_socket(host: QemuHost) -> None:
    await host.hold_reset()
    proc = host._proc
    sock = host._socket_path()
    assert proc is not None and proc.returncode is None and sock.exists()
    await host.close()
    assert proc.returncode is not None
    assert not sock.exists()
    assert await host.power_state() is PowerState.OFF


async def test_bogus_qemu_binary_is_a_host_error_saying_qemu_did_not_start(
    tmp_path: Path, hub: tuple[Path, Path, bytes]
) -> None:
    code, vars_, _ = hub
    host = QemuHost(
        code_path=code, vars_path=vars_, workdir=tmp_path / "h", qemu_binary="/nonexistent/qemu"
    )
    with pytest.raises(QemuNotStarted, match="QEMU did not start"):
        await host.power_on()
    assert host.accel_used == "tcg"  # the KVM probe could not run either
    await host.close()


async def test_qemu_rejecting_its_command_line_reports_qemus_own_words(
    tmp_path: Path, hub: tuple[Path, Path, bytes]
) -> None:
    code, vars_, _ = hub
    host = QemuHost(
        code_path=code, vars_path=vars_, workdir=tmp_path / "h", accel="tcg",
        extra_args=("-no-such-option",),
    )
    with pytest.raises(QemuNotStarted) as info:
        await host.power_on()
    assert "no-such-option" in str(info.value.fields["stderr"])
    await host.close()


async def test_kvm_probe_answers_without_raising(tmp_path: Path) -> None:
    assert await probe_kvm(QEMU, tmp_path) in (True, False)
