"""``fwrescue demo`` on the real path, as a user runs it: QEMU + OVMF hosts whose BIOS is
the first region of a 16 MiB W25Q128FV chip driven through flashrom's dummy programmer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fwrescue.host.qemu import find_ovmf

pytestmark = pytest.mark.slow

CHIP = 16 * 1024 * 1024
#: QEMU boots under TCG (~4 s each, two nodes) plus flashrom runs; generous for CI.
TIMEOUT = 240


def test_demo_on_the_real_path(tmp_path: Path) -> None:
    for tool in ("flashrom", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed")
    report_path = tmp_path / "report.json"
    workdir = tmp_path / "fleet"
    argv = [sys.executable, "-m", "fwrescue.cli", "demo", "--nodes", "2", "--corrupt", "1",
            "--host", "qemu", "--flash", "flashrom", "--json", str(report_path),
            "--workdir", str(workdir), "--timeout", "180"]
    env = dict(os.environ, TERM="dumb", COLUMNS="120")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    report = json.loads(report_path.read_text())
    assert report["ok"] is True
    nodes = {n["id"]: n for n in report["nodes"]}
    assert len(nodes) == 2
    (sick,) = [n for n in nodes.values() if n["corrupted"]]
    (healthy,) = [n for n in nodes.values() if not n["corrupted"]]
    assert sick["recovered"] is True and sick["booted"] is True and sick["error"] is None
    assert sick["donor_kind"] in ("peer", "console")
    assert healthy["booted"] is True
    for node in (sick, healthy):
        log = Path(node["boot_log"]).read_text(errors="replace")
        assert "UEFI Interactive Shell" in log, node["id"]

    # The chip is 16 MiB; its first region holds the OVMF code the host booted from.
    code = find_ovmf()[0].read_bytes()
    chip = (workdir / "nodes" / sick["id"] / "flash.bin").read_bytes()
    assert len(chip) == CHIP
    assert chip[:len(code)] == code
    assert chip[len(code):] == b"\xff" * (CHIP - len(code))
