"""QemuHost without booting anything: command line, validation, start errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fwrescue.errors import HostError
from fwrescue.host.accel import PROBE_EXIT_CODE, probe_image
from fwrescue.host.base import Host, PowerState
from fwrescue.host.qemu import (
    FirmwareFilesMissing,
    HostConfigError,
    QemuHost,
    QemuLaunch,
    QemuNotStarted,
    build_argv,
    find_ovmf,
    prepare_firmware_hub,
)


def launch(tmp_path: Path, **overrides: object) -> QemuLaunch:
    fields: dict[str, object] = {
        "qemu_binary": "qemu-system-x86_64",
        "code_path": tmp_path / "code.fd",
        "vars_path": tmp_path / "vars.fd",
        "log_path": tmp_path / "boot-0001.log",
        "qmp_path": tmp_path / "qmp.sock",
        "accel": "tcg",
        "memory_mb": 256,
        "held": False,
    }
    fields.update(overrides)
    return QemuLaunch(**fields)  # type: ignore[arg-type]


def firmware_files(tmp_path: Path) -> tuple[Path, Path]:
    code, vars_ = tmp_path / "code.fd", tmp_path / "vars.fd"
    code.write_bytes(b"\xff" * 4096)
    vars_.write_bytes(b"\xff" * 4096)
    return code, vars_


def test_command_line_maps_code_read_only_vars_writable_serial_and_qmp(tmp_path: Path) -> None:
    argv = build_argv(launch(tmp_path))
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={tmp_path}/code.fd" in argv
    assert f"if=pflash,format=raw,unit=1,file={tmp_path}/vars.fd" in argv
    assert f"file:{tmp_path}/boot-0001.log" in argv
    assert f"unix:{tmp_path}/qmp.sock,server=on,wait=off" in argv
    assert "-accel tcg" in joined and "-machine q35" in joined and "-nodefaults" in argv
    assert "-S" not in argv


def test_held_start_stops_the_cpu_and_kvm_uses_the_host_cpu(tmp_path: Path) -> None:
    argv = build_argv(launch(tmp_path, held=True, accel="kvm", extra_args=("-smp", "2")))
    assert "-S" in argv
    assert "-accel kvm -cpu host" in " ".join(argv)
    assert argv[-2:] == ["-smp", "2"]


def test_commas_in_firmware_paths_are_escaped_for_drive_options(tmp_path: Path) -> None:
    argv = build_argv(launch(tmp_path, code_path=Path("/a,b/code.fd")))
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/a,,b/code.fd" in argv


def test_find_ovmf_names_where_it_looked_when_missing(tmp_path: Path) -> None:
    with pytest.raises(FirmwareFilesMissing, match="ovmf") as info:
        find_ovmf([tmp_path])
    assert isinstance(info.value, HostError)
    assert str(tmp_path) in str(info.value)


def test_prepare_firmware_hub_copies_and_never_aliases_the_source(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "OVMF_CODE_4M.fd").write_bytes(b"code")
    (src / "OVMF_VARS_4M.fd").write_bytes(b"vars")
    code, vars_ = prepare_firmware_hub(tmp_path / "hub", source=find_ovmf([src]))
    code.write_bytes(b"rewritten by the BMC")
    assert (src / "OVMF_CODE_4M.fd").read_bytes() == b"code"
    assert vars_.read_bytes() == b"vars"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"accel": "xen"}, "accel"),
        ({"memory_mb": 8}, "memory_mb"),
        ({"boot_pattern": "(unclosed"}, "boot_pattern"),
        ({"start_timeout": 0}, "start_timeout"),
        ({"vars_path": Path("/usr/share/OVMF/OVMF_VARS_4M.fd")}, "copy"),
    ],
)
def test_bad_constructor_arguments_raise_host_error(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    code, vars_ = firmware_files(tmp_path)
    args: dict[str, object] = {"code_path": code, "vars_path": vars_, "workdir": tmp_path}
    args.update(kwargs)
    with pytest.raises(HostConfigError, match=message) as info:
        QemuHost(**args)  # type: ignore[arg-type]
    assert isinstance(info.value, HostError) and not info.value.retryable


async def test_qemu_host_satisfies_the_host_protocol_and_starts_off(tmp_path: Path) -> None:
    code, vars_ = firmware_files(tmp_path)
    host = QemuHost(code_path=code, vars_path=vars_, workdir=tmp_path)
    assert isinstance(host, Host)
    assert await host.power_state() is PowerState.OFF
    assert not (await host.wait_boot(0.01)).booted
    await host.close()


async def test_missing_binary_is_a_host_error_saying_qemu_did_not_start(tmp_path: Path) -> None:
    code, vars_ = firmware_files(tmp_path)
    host = QemuHost(
        code_path=code, vars_path=vars_, workdir=tmp_path, accel="tcg",
        qemu_binary=str(tmp_path / "no-such-qemu"),
    )
    with pytest.raises(QemuNotStarted, match="QEMU did not start"):
        await host.power_on()
    assert await host.power_state() is PowerState.OFF
    await host.close()


async def test_qemu_dying_at_start_reports_its_last_stderr_lines(tmp_path: Path) -> None:
    fake = tmp_path / "fake-qemu"
    fake.write_text("#!/bin/sh\necho 'qemu: could not load PC BIOS' >&2\nexit 1\n")
    fake.chmod(0o755)
    code, vars_ = firmware_files(tmp_path)
    host = QemuHost(
        code_path=code, vars_path=vars_, workdir=tmp_path, accel="tcg", qemu_binary=str(fake)
    )
    with pytest.raises(QemuNotStarted) as info:
        await host.hold_reset()
    assert info.value.fields["exit_code"] == 1
    assert "could not load PC BIOS" in str(info.value.fields["stderr"])
    assert await host.power_state() is PowerState.OFF
    await host.close()


async def test_missing_firmware_file_fails_before_launching(tmp_path: Path) -> None:
    code, vars_ = firmware_files(tmp_path)
    code.unlink()
    host = QemuHost(code_path=code, vars_path=vars_, workdir=tmp_path, accel="tcg")
    with pytest.raises(QemuNotStarted, match="code pflash file is missing"):
        await host.power_on()
    assert host.boots == 0


def test_probe_image_puts_finit_and_debug_exit_at_the_reset_vector() -> None:
    image = probe_image()
    assert len(image) == 65536
    vector = image[-16:]
    assert vector[:3] == bytes([0x9B, 0xDB, 0xE3])  # finit: what broken nested KVM trips on
    assert vector[3:5] == bytes([0xB0, (PROBE_EXIT_CODE - 1) // 2])  # mov al, value
    assert vector[5:7] == bytes([0xE6, 0xF4])  # out 0xf4, al


def test_workdir_socket_path_falls_back_to_a_short_directory(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    code, vars_ = firmware_files(tmp_path)
    host = QemuHost(code_path=code, vars_path=vars_, workdir=deep)
    sock = host._socket_path()
    assert len(str(sock)) < 108
    host._cleanup_socket()
    assert not sock.parent.exists() or sock.parent == deep
    assert os.path.basename(sock) == "qmp.sock"
