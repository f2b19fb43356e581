"""The one atomic write: old bytes or new bytes, never a mix, whatever fails when."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fwrescue.atomicfile import atomic_replace, atomic_write


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_the_bytes_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "floor.json"
    target.write_bytes(b"old")
    atomic_write(target, b"new bytes")
    assert target.read_bytes() == b"new bytes"
    assert _leftovers(tmp_path) == []


def test_an_error_inside_the_block_keeps_the_old_bytes_and_removes_the_temp(
        tmp_path: Path) -> None:
    target = tmp_path / "journal.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_replace(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_a_failed_rename_keeps_the_old_bytes(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "installed.json"
    target.write_bytes(b"old")

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_mode_is_set_when_the_temp_file_is_created(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    atomic_write(key, b"secret", mode=0o600)
    assert key.stat().st_mode & 0o777 == 0o600


def test_concurrent_writers_never_share_a_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "pending.json"
    with atomic_replace(target) as first, atomic_replace(target) as second:
        first.write(b"first")
        second.write(b"second")
    assert target.read_bytes() == b"first"  # the outer block commits last
    assert _leftovers(tmp_path) == []


def test_a_process_killed_between_write_and_rename_leaves_the_old_bytes(
        tmp_path: Path) -> None:
    """SIGKILL after the new bytes are written and fsynced but before the rename."""
    target = tmp_path / "floor.json"
    target.write_bytes(b"the old floor")
    ready = tmp_path / "ready"
    child = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from fwrescue.atomicfile import atomic_replace
        with atomic_replace(Path({str(target)!r})) as f:
            f.write(b"the new floor, not yet renamed")
            f.flush()
            os.fsync(f.fileno())
            Path({str(ready)!r}).touch()
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child])
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), "the child never reached the point before the rename"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"the old floor"
    # the dead writer's temp file is left behind, under a name no reader ever opens
    assert len(_leftovers(tmp_path)) == 1
