"""A SIGKILLed agent never leaves its host running: the QEMU child it started dies with it
(PR_SET_PDEATHSIG, host/reaper.py).

The "agent" is a real Python process driving a real :class:`QemuHost` (QEMU held in reset,
as the engine starts it for a DC-on flash, so the guest CPU never runs), killed with
SIGKILL so no cleanup code of it can run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fwrescue.host.qemu import find_ovmf

QEMU = "qemu-system-x86_64"
#: bound on waiting for the kernel to deliver the death signal (not a timing assertion)
REAP_WAIT_S = 20.0

AGENT_LIKE = """
import asyncio, sys
from pathlib import Path
from fwrescue.host.qemu import QemuHost

async def main() -> None:
    work = Path(sys.argv[1])
    host = QemuHost(code_path=work / "code.fd", vars_path=work / "vars.fd", workdir=work,
                    accel="tcg")
    await host.hold_reset()
    print(host._proc.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_sigkilled_agent_takes_its_qemu_with_it(tmp_path: Path) -> None:
    if shutil.which(QEMU) is None:
        pytest.fail(f"{QEMU} is not installed (Debian package qemu-system-x86)")
    code, vars_template = find_ovmf()
    shutil.copy(code, tmp_path / "code.fd")
    shutil.copy(vars_template, tmp_path / "vars.fd")
    agent = subprocess.Popen([sys.executable, "-c", AGENT_LIKE, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    qemu_pid = 0
    try:
        assert agent.stdout is not None
        qemu_pid = int(agent.stdout.readline())
        assert _alive(qemu_pid)
        assert Path(f"/proc/{qemu_pid}/cmdline").read_bytes().startswith(QEMU.encode())
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        deadline = time.monotonic() + REAP_WAIT_S
        while _alive(qemu_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(qemu_pid), "QEMU outlived the SIGKILLed agent"
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if qemu_pid and _alive(qemu_pid):
            os.kill(qemu_pid, signal.SIGKILL)
