"""FlashromFlash against stand-in executables (the process boundary); the real tool
is exercised in tests/integration/test_flashrom.py."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from fwrescue.errors import ConfigError, FlashError, FlashromError, FlashVerifyError
from fwrescue.flash import FlashromFlash, FlashromVerifyError
from fwrescue.flash.flashrom import _ProgressTracker, parse_erase_log

SIZE = 1 << 20


def _fake(tmp_path: Path, body: str) -> str:
    """A stand-in flashrom: a Python script with ``body`` (argv in ``args``)."""
    path = tmp_path / "fake-flashrom"
    path.write_text(f"#!{sys.executable}\nimport sys, time\nargs = sys.argv[1:]\n{body}\n")
    path.chmod(0o755)
    return str(path)


def _image(tmp_path: Path, n: int = SIZE) -> Path:
    p = tmp_path / "img.bin"
    p.write_bytes(b"\x00" * n)
    return p


def test_log_tokens_become_erase_counts_by_block_size() -> None:
    log = (
        b"Erasing and writing flash chip... Trying erase function 0... "
        b"0x000000-0x000fff:S, 0x001000-0x001fff:EW, 0x002000-0x002fff:W, "
        b"0x010000-0x01ffff:E\nErase/write done.\n"
    )
    erased, written, skipped = parse_erase_log(log, 0, 0x3000) or ({}, 0, 0)
    assert erased == {4096: 1, 65536: 1}
    assert written == 8192 and skipped == 4096
    assert parse_erase_log(b"nothing here", 0, 100) is None


def test_nonzero_exit_becomes_flashrom_error_with_exit_code_and_reason(tmp_path: Path) -> None:
    fake = _fake(
        tmp_path, "print('noise'); print('Error: no chip found', file=sys.stderr); sys.exit(3)"
    )
    flash = FlashromFlash("linux_mtd:dev=0", flashrom=fake, workdir=tmp_path, chip_size=SIZE)
    with pytest.raises(FlashromError) as err:
        flash.read_to(0, 16, tmp_path / "out.bin")
    assert err.value.fields["exit_code"] == 3
    assert "no chip found" in str(err.value.fields["stderr"])
    assert not (tmp_path / "out.bin").exists()


def test_verify_failure_is_both_flashrom_and_verify_error(tmp_path: Path) -> None:
    fake = _fake(tmp_path, "print('Verifying flash... FAILED at 0x00001000!'); sys.exit(1)")
    flash = FlashromFlash("linux_mtd:dev=0", flashrom=fake, workdir=tmp_path, chip_size=SIZE)
    with pytest.raises(FlashromVerifyError) as err:
        flash.write(0, _image(tmp_path))
    assert isinstance(err.value, FlashVerifyError) and isinstance(err.value, FlashromError)


def test_write_without_a_verified_marker_is_not_trusted(tmp_path: Path) -> None:
    fake = _fake(tmp_path, "print('Erase/write done.')")
    flash = FlashromFlash("linux_mtd:dev=0", flashrom=fake, workdir=tmp_path, chip_size=SIZE)
    with pytest.raises(FlashVerifyError):
        flash.write(0, _image(tmp_path))


def test_unparseable_log_reports_the_pessimistic_bound(tmp_path: Path) -> None:
    fake = _fake(tmp_path, "print('Erasing and writing flash chip... done. VERIFIED.')")
    flash = FlashromFlash("linux_mtd:dev=0", flashrom=fake, workdir=tmp_path, chip_size=SIZE)
    report = flash.write(0, _image(tmp_path))
    assert report.erased_blocks == {4096: SIZE // 4096}
    assert report.bytes_programmed == SIZE and report.skipped_bytes == 0


def test_timeout_is_a_flashrom_error(tmp_path: Path) -> None:
    fake = _fake(tmp_path, "time.sleep(5)")
    flash = FlashromFlash(
        "linux_mtd:dev=0", flashrom=fake, workdir=tmp_path, chip_size=SIZE, timeout=0.3
    )
    with pytest.raises(FlashromError, match="timed out"):
        flash.read_to(0, 16, tmp_path / "o.bin")


def test_missing_binary_is_a_flashrom_error(tmp_path: Path) -> None:
    flash = FlashromFlash(
        "linux_mtd:dev=0",
        flashrom=str(tmp_path / "no-flashrom"),
        workdir=tmp_path,
        chip_size=SIZE,
    )
    with pytest.raises(FlashromError, match="not found") as err:
        flash.read_to(0, 16, tmp_path / "o.bin")
    assert err.value.fields["exit_code"] is None


def test_argv_is_a_list_with_layout_and_region_file(tmp_path: Path) -> None:
    log = tmp_path / "argv.txt"
    body = (
        f"open({str(log)!r}, 'w').write(repr(args))\n"
        "i = args.index('-i'); dest = args[i + 1].split(':', 1)[1]\n"
        "open(dest, 'wb').write(b'\\x00' * 4096)"
    )
    fake = _fake(tmp_path, body)
    flash = FlashromFlash(
        "linux_spi:dev=/dev/spidev0.0,spispeed=50000",
        flashrom=fake,
        chip="W25Q128.V",
        region=(0x100000, 0x10000),
        workdir=tmp_path / "work",
        chip_size=16 << 20,
    )
    flash.read_to(0x1000, 4096, tmp_path / "r.bin")
    argv = ast.literal_eval(log.read_text())
    assert argv[:4] == ["-p", "linux_spi:dev=/dev/spidev0.0,spispeed=50000", "-c", "W25Q128.V"]
    assert "-l" in argv and argv[-2:] == ["-r", "/dev/null"]
    assert list((tmp_path / "work").iterdir()) == []  # temp layout removed


def test_chip_size_is_probed_once_with_flash_size(tmp_path: Path) -> None:
    fake = _fake(tmp_path, "print('flashrom v1'); print(16777216)")
    flash = FlashromFlash("internal", flashrom=fake, workdir=tmp_path)
    assert flash.size == 16777216 and flash.size == 16777216
    assert flash.runs == 1


def test_dummy_programmer_with_a_missing_image_file_is_refused(tmp_path: Path) -> None:
    flash = FlashromFlash(
        f"dummy:emulate=W25Q128FV,image={tmp_path / 'none.bin'}",
        workdir=tmp_path,
        chip_size=16 << 20,
    )
    with pytest.raises(FlashromError, match="missing"):
        flash.read_to(0, 16, tmp_path / "o.bin")
    assert flash.runs == 0


@pytest.mark.parametrize("programmer", ["", "-w /etc/passwd", "dummy:emulate=W25Q128FV\nx"])
def test_option_like_or_control_character_programmers_are_config_errors(
    programmer: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError):
        FlashromFlash(programmer, workdir=tmp_path)


def test_write_outside_the_region_is_refused_before_running(tmp_path: Path) -> None:
    flash = FlashromFlash(
        "internal", flashrom="/bin/false", region=(0, 4096), workdir=tmp_path, chip_size=SIZE
    )
    with pytest.raises(FlashError):
        flash.write(0, _image(tmp_path, 8192))
    assert flash.runs == 0


def test_progress_follows_block_tokens_even_when_split_across_reads() -> None:
    seen: list[tuple[int, int]] = []
    tracker = _ProgressTracker(lambda d, t: seen.append((d, t)), start=0x1000, length=0x3000)
    tracker.feed(b"Trying erase function 0... 0x001000-0x001fff:S, 0x0020")
    tracker.feed(b"00-0x002fff:EW, 0x003000-0x003fff:W")
    assert seen == [(0x1000, 0x3000), (0x3000, 0x3000)]


def test_streamed_progress_reaches_the_total(tmp_path: Path) -> None:
    body = (
        "for i in range(16):\n"
        "    print(f'0x{i * 4096:06x}-0x{i * 4096 + 4095:06x}:EW, ', end='', flush=True)\n"
        "print('VERIFIED')"
    )
    fake = _fake(tmp_path, body)
    flash = FlashromFlash("internal", flashrom=fake, workdir=tmp_path, chip_size=65536)
    seen: list[int] = []
    report = flash.write(0, _image(tmp_path, 65536), lambda d, t: seen.append(d))
    assert seen[0] == 0 and seen[-1] == 65536 and seen == sorted(seen) and len(seen) > 2
    assert report.erased_blocks == {4096: 16}
