"""Directory sources (BMC storage, USB, share) and the removable-media watcher."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fwrescue.image.package import open_package
from fwrescue.sources import DirectorySource, WatchedDirectory, locate
from fwrescue.trust.verifier import Verifier

Factory = Callable[..., Path]


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[open_package(path).image_offset + 100] ^= 0xFF
    path.write_bytes(bytes(data))


async def _locate(sources: list[Any], verifier: Verifier, dirs: tuple[Path, Path],
                  events: Any) -> Any:
    work, staging = dirs
    return await locate(sources, verifier, "bios", "board-a", work, staging, events)


async def test_package_on_a_usb_stick_is_staged(
        tmp_path: Path, make_package: Factory, verifier: Verifier, dirs: tuple[Path, Path],
        events: Any, image_bytes: bytes) -> None:
    make_package(tmp_path / "usb" / "bios.fwpkg")
    found = await _locate([DirectorySource(tmp_path / "usb", "usb")], verifier, dirs, events)
    assert found is not None
    verified, staged, origin = found
    assert verified.manifest.machine_names == ("board-a",)
    assert staged.read_bytes() == image_bytes
    assert origin == f"usb:{tmp_path / 'usb'}/bios.fwpkg"
    assert (tmp_path / "usb" / "bios.fwpkg").exists()  # media files are never deleted
    assert [e for e, _ in events.events] == ["source_start", "candidate_accepted"]


async def test_tampered_package_is_refused_and_the_next_candidate_used(
        tmp_path: Path, make_package: Factory, verifier: Verifier, dirs: tuple[Path, Path],
        events: Any) -> None:
    _tamper(make_package(tmp_path / "usb" / "a-first.fwpkg"))
    make_package(tmp_path / "usb" / "b-second.fwpkg")
    found = await _locate([DirectorySource(tmp_path / "usb", "usb")], verifier, dirs, events)
    assert found is not None and found[2].endswith("b-second.fwpkg")
    rejected = events.named("candidate_rejected")
    assert len(rejected) == 1 and rejected[0]["error"] == "ChunkMismatch"
    assert str(rejected[0]["candidate"]).endswith("a-first.fwpkg")
    assert [p for p in os.listdir(dirs[1]) if p.endswith(".partial")] == []


async def test_junk_never_stops_the_ladder(
        tmp_path: Path, make_package: Factory, verifier: Verifier, dirs: tuple[Path, Path],
        events: Any) -> None:
    usb = tmp_path / "usb"
    usb.mkdir()
    (usb / "0-garbage.fwpkg").write_bytes(os.urandom(3000))
    (usb / "1-empty.fwpkg").write_bytes(b"")
    (usb / "2-dir.fwpkg").mkdir()
    (usb / "3-link.fwpkg").symlink_to("/etc/passwd")
    (usb / "readme.txt").write_text("not a package")
    make_package(tmp_path / "bmc" / "good.fwpkg")
    sources = [DirectorySource(usb, "usb", log=events), DirectorySource(tmp_path / "bmc")]
    found = await _locate(sources, verifier, dirs, events)
    assert found is not None and found[2].endswith("good.fwpkg")
    skipped = {Path(str(f["candidate"])).name: f["reason"] for f in events.named(
        "candidate_skipped")}
    assert skipped == {"2-dir.fwpkg": "not a regular file",
                       "3-link.fwpkg": "not a regular file"}
    rejected = [Path(str(f["candidate"])).name for f in events.named("candidate_rejected")]
    assert sorted(rejected) == ["0-garbage.fwpkg", "1-empty.fwpkg"]


async def test_oversize_and_excess_files_are_skipped_with_a_reason(
        tmp_path: Path, make_package: Factory, verifier: Verifier, dirs: tuple[Path, Path],
        events: Any) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "a-huge.fwpkg").write_bytes(bytes(400_000))
    for n in range(3):
        make_package(share / f"b-{n}.fwpkg")
    source = DirectorySource(share, "share", max_files=2, max_package_bytes=300_000,
                             log=events)
    found = await _locate([source], verifier, dirs, events)
    assert found is not None
    reasons = [str(f["reason"]) for f in events.named("candidate_skipped")]
    assert any("larger than the limit" in r for r in reasons)
    assert any("more than 2 packages" in r for r in reasons)


async def test_fitting_newest_package_is_tried_first(
        tmp_path: Path, make_package: Factory, verifier: Verifier, dirs: tuple[Path, Path],
        events: Any) -> None:
    store = tmp_path / "bmc"
    make_package(store / "a-other-board.fwpkg", machines=("board-z",), security_version=9)
    make_package(store / "b-old.fwpkg", version="1.0", security_version=1)
    make_package(store / "c-new.fwpkg", version="2.0", security_version=2,
                 image=b"\x01" * 5000)
    found = await _locate([DirectorySource(store)], verifier, dirs, events)
    assert found is not None
    assert found[0].manifest.version == "2.0" and found[2].endswith("c-new.fwpkg")
    assert events.named("candidate_rejected") == []


async def test_missing_mount_point_fails_that_source_only(
        tmp_path: Path, make_package: Factory, verifier: Verifier, dirs: tuple[Path, Path],
        events: Any) -> None:
    make_package(tmp_path / "bmc" / "p.fwpkg")
    sources = [DirectorySource(tmp_path / "media" / "usb0", "usb"),
               DirectorySource(tmp_path / "bmc")]
    found = await _locate(sources, verifier, dirs, events)
    assert found is not None and found[2].startswith("bmc-storage:")
    failed = events.named("source_failed")
    assert len(failed) == 1 and "not mounted" in str(failed[0]["reason"])


async def test_nothing_usable_anywhere_returns_none(
        tmp_path: Path, make_package: Factory, verifier: Verifier, dirs: tuple[Path, Path],
        events: Any) -> None:
    make_package(tmp_path / "usb" / "p.fwpkg", machines=("board-z",))
    (tmp_path / "empty").mkdir()
    sources = [DirectorySource(tmp_path / "usb", "usb"), DirectorySource(tmp_path / "empty")]
    assert await _locate(sources, verifier, dirs, events) is None
    assert [f["error"] for f in events.named("candidate_rejected")] == ["CompatibilityError"]
    assert len(events.named("source_exhausted")) == 2
    assert os.listdir(dirs[1]) == []


# --- watcher -------------------------------------------------------------------------------


def test_watcher_reports_a_new_package_once_it_has_settled(tmp_path: Path) -> None:
    usb = tmp_path / "usb"
    usb.mkdir()
    (usb / "old.fwpkg").write_bytes(b"old")
    watcher = WatchedDirectory(usb)
    assert watcher.poll() == []  # baseline: what was already there is not news
    (usb / "new.fwpkg").write_bytes(b"partial")
    (usb / "notes.txt").write_bytes(b"ignored")
    assert watcher.poll() == []  # just appeared: may still be copying
    assert watcher.poll() == [usb / "new.fwpkg"]
    assert watcher.poll() == []


def test_watcher_reports_a_changed_package_and_a_reinserted_stick(tmp_path: Path) -> None:
    usb = tmp_path / "usb"
    usb.mkdir()
    pkg = usb / "p.fwpkg"
    pkg.write_bytes(b"v1")
    watcher = WatchedDirectory(usb)
    watcher.poll()
    pkg.write_bytes(b"version 2")
    watcher.poll()
    assert watcher.poll() == [pkg]
    pkg.unlink()
    usb.rmdir()  # stick pulled
    assert watcher.poll() == []
    usb.mkdir()
    pkg.write_bytes(b"version 2")  # and plugged in again
    watcher.poll()
    assert watcher.poll() == [pkg]


def test_watcher_can_report_what_is_already_there(tmp_path: Path) -> None:
    (tmp_path / "a.fwpkg").write_bytes(b"a")
    watcher = WatchedDirectory(tmp_path, report_existing=True)
    watcher.poll()
    assert watcher.poll() == [tmp_path / "a.fwpkg"]


async def test_watcher_changes_stream_yields_a_new_package(tmp_path: Path) -> None:
    usb = tmp_path / "usb"
    usb.mkdir()
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:  # the stick is plugged in between the first two polls
            (usb / "rescue.fwpkg").write_bytes(b"pkg")

    watcher = WatchedDirectory(usb, interval=0.5, sleep=fake_sleep)
    seen = [path async for path in watcher.changes(max_polls=5)]
    assert seen == [usb / "rescue.fwpkg"]
    assert sleeps == [0.5] * 5


def test_bad_kind_and_interval_are_config_errors(tmp_path: Path) -> None:
    from fwrescue.errors import ConfigError

    with pytest.raises(ConfigError):
        DirectorySource(tmp_path, "floppy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        WatchedDirectory(tmp_path, interval=0)
