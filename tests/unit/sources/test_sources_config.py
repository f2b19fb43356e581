"""build_sources: config specs to the ladder, ConfigError for bad specs."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from fwrescue.errors import ConfigError
from fwrescue.flash.device import Progress, WriteReport
from fwrescue.sources import (
    DirectorySource,
    GoldenRegionSource,
    HttpSource,
    ImageSource,
    build_sources,
)


class TinyFlash:
    size = 1 << 20

    def read_to(self, offset: int, length: int, dest: Path) -> None:
        dest.write_bytes(b"\xff" * length)

    def write(self, offset: int, image: Path, progress: Progress | None = None) -> WriteReport:
        raise NotImplementedError


def test_specs_build_the_ladder_in_order(tmp_path: Path) -> None:
    sources = build_sources([
        {"kind": "golden", "offset": 0, "size": 4096, "manifest_path": str(tmp_path / "m")},
        {"kind": "bmc-storage", "path": str(tmp_path / "store")},
        {"kind": "usb", "path": "/media/usb0", "max_files": 8},
        {"kind": "share", "path": "/mnt/share"},
        {"kind": "http", "url": "https://fw.example/{target}/{machine}.fwpkg",
         "timeout": 30, "max_bytes": 1 << 20},
    ], flash=TinyFlash())
    assert [type(s) for s in sources] == [GoldenRegionSource, DirectorySource, DirectorySource,
                                          DirectorySource, HttpSource]
    assert [s.name for s in sources][1:4] == [f"bmc-storage:{tmp_path / 'store'}",
                                              "usb:/media/usb0", "share:/mnt/share"]
    assert all(isinstance(s, ImageSource) for s in sources)
    http = sources[4]
    assert isinstance(http, HttpSource)
    assert http.url_for("bios", "board a/b") == "https://fw.example/bios/board%20a%2Fb.fwpkg"


@pytest.mark.parametrize(("spec", "match"), [
    ({"kind": "floppy", "path": "/x"}, "unknown source kind"),
    ({"path": "/x"}, "unknown source kind"),
    ({"kind": "usb"}, "lacks keys"),
    ({"kind": "usb", "path": "/x", "recursive": True}, "unknown keys"),
    ({"kind": "usb", "path": 7}, "non-empty string"),
    ({"kind": "usb", "path": "/x", "max_files": -1}, "non-negative integer"),
    ({"kind": "usb", "path": "/x", "max_files": True}, "non-negative integer"),
    ({"kind": "http", "url": "ftp://x/p.fwpkg"}, "http:// or https://"),
    ({"kind": "http", "url": "https://x/{board}.fwpkg"}, "only use"),
    ({"kind": "http", "url": "https://x/p", "timeout": 0}, "positive number"),
    ({"kind": "http", "url": "https://x/p", "ca_file": "/nonexistent/ca.pem"}, "CA file"),
    ({"kind": "golden", "offset": 0, "size": 1 << 30, "manifest_path": "/m"}, "outside"),
])
def test_bad_specs_are_config_errors(spec: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_sources([spec], flash=TinyFlash())


def test_golden_spec_without_a_flash_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs the host flash"):
        build_sources([{"kind": "golden", "offset": 0, "size": 4096, "manifest_path": "/m"}])


def test_a_non_table_spec_and_an_endless_ladder_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="table"):
        build_sources(["usb:/media"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="too many"):
        build_sources([{"kind": "usb", "path": f"/m{n}"} for n in range(100)])


async def test_source_ladder_is_the_engines_locator(
        tmp_path: Path, make_package: Any, verifier: Any, events: Any,
        image_bytes: bytes) -> None:
    from fwrescue.recovery.ports import Located
    from fwrescue.sources import SourceLadder

    usb = tmp_path / "usb"
    make_package(usb / "good.fwpkg")
    (usb / "dir.fwpkg").mkdir()
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ladder = SourceLadder.from_specs(
        [{"kind": "http", "url": f"http://127.0.0.1:{port}/p.fwpkg", "timeout": 2},
         {"kind": "usb", "path": str(usb)}], verifier)
    work = tmp_path / "work"
    found = await ladder.locate("bios", "board-a", work, events)
    assert isinstance(found, Located)
    assert found.image.parent == work and found.image.read_bytes() == image_bytes
    assert found.origin == f"usb:{usb}/good.fwpkg"
    assert [e for e, _ in events.events] == [
        "source_start", "source_failed",  # nothing listening on the HTTP port
        "source_start", "candidate_skipped", "candidate_accepted"]
    assert list((work / "sources").iterdir()) == []
