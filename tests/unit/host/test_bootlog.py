"""The boot watchdog's pattern scanner and log follower."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fwrescue.host.bootlog import BootPatternScanner, follow_log
from fwrescue.host.qemu import DEFAULT_BOOT_PATTERN

# What OVMF prints: colour escapes around the prompt.
OVMF_TAIL = b"\x1b[1m\x1b[33m\x1b[40mShell> \x1b[0m\x1b[37m\x1b[40m"


def test_pattern_split_across_every_byte_boundary_is_found() -> None:
    stream = b"BdsDxe: starting Boot0001\r\n" + OVMF_TAIL
    for cut in range(len(stream)):
        scanner = BootPatternScanner(DEFAULT_BOOT_PATTERN)
        first = scanner.feed(stream[:cut])
        assert scanner.feed(stream[cut:]) == "Shell>"
        assert first is None or cut >= stream.index(b"Shell>") + len("Shell>")


def test_multibyte_character_split_between_reads_still_matches() -> None:
    scanner = BootPatternScanner("héllo")
    data = "say héllo".encode()
    split = data.index("é".encode()) + 1  # in the middle of the two-byte é
    assert scanner.feed(data[:split]) is None
    assert scanner.feed(data[split:]) == "héllo"


def test_invalid_utf8_noise_never_raises_and_does_not_hide_the_pattern() -> None:
    scanner = BootPatternScanner(DEFAULT_BOOT_PATTERN)
    assert scanner.feed(b"\xff\xfe\x80garbage") is None
    assert scanner.feed(b"UEFI Interactive Shell v2.2") == "UEFI Interactive Shell"


def test_memory_stays_bounded_by_the_window_on_endless_output() -> None:
    scanner = BootPatternScanner("NEVER", window=128)
    for _ in range(1000):
        scanner.feed(b"x" * 1000)
    assert len(scanner._tail) <= 128
    assert scanner.bytes_seen == 1_000_000


def test_tiny_window_is_rejected() -> None:
    with pytest.raises(ValueError):
        BootPatternScanner("x", window=10)


async def test_follow_log_sees_output_appended_after_it_started(tmp_path: Path) -> None:
    log = tmp_path / "boot.log"

    async def firmware() -> None:
        await asyncio.sleep(0.02)
        log.write_bytes(b"booting...\n")
        await asyncio.sleep(0.02)
        with log.open("ab") as f:
            f.write(OVMF_TAIL)

    writer = asyncio.create_task(firmware())
    watch = await follow_log(
        log, BootPatternScanner(DEFAULT_BOOT_PATTERN), timeout=5.0, alive=lambda: True,
        poll_seconds=0.01,
    )
    await writer
    assert watch.matched == "Shell>"


async def test_follow_log_gives_up_at_the_deadline_without_raising(tmp_path: Path) -> None:
    watch = await follow_log(
        tmp_path / "never-created.log", BootPatternScanner("Shell>"), timeout=0.05,
        alive=lambda: True, poll_seconds=0.01,
    )
    assert watch.matched is None
    assert "no boot pattern" in watch.reason


async def test_follow_log_stops_when_the_host_dies_but_reads_its_last_words(
    tmp_path: Path,
) -> None:
    log = tmp_path / "boot.log"
    log.write_bytes(b"Shell>")
    watch = await follow_log(log, BootPatternScanner("Shell>"), timeout=5.0, alive=lambda: False)
    assert watch.matched == "Shell>"
    log.write_bytes(b"crash")
    watch = await follow_log(log, BootPatternScanner("Shell>"), timeout=5.0, alive=lambda: False)
    assert watch.matched is None and watch.reason == "host stopped running"
