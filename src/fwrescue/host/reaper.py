"""Children that die with the agent: Linux's parent-death signal for the QEMU process.

A host process (QEMU) outliving a SIGKILLed agent would keep a host running on flash
nobody watches. :func:`die_with_parent` returns a ``preexec_fn`` that, in the forked
child before ``exec``, asks the kernel (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) to kill
the child when the thread that forked it exits — which for the agent means when the
agent process dies, however it dies (SIGKILL included; ``atexit`` hooks would not run).

Contract:

* Linux only; elsewhere it returns None (the child is then reaped only by an orderly
  :meth:`~fwrescue.host.qemu.QemuHost.close`).
* The fork must come from a thread that lives as long as the agent (the event-loop
  thread: asyncio's subprocess spawning forks from the caller's thread). A fork from a
  short-lived worker thread would kill the child when that thread ends.
* A parent that died between ``fork`` and ``prctl`` is caught by comparing the parent
  pid after the call: the child exits at once instead of running orphaned.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["PR_SET_PDEATHSIG", "die_with_parent"]

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child receive ``sig`` when its parent dies (module doc),
    or None where the kernel offers no parent-death signal."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec
        if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            os._exit(127)
        if os.getppid() != parent:  # the parent died before the call took effect
            os._exit(127)

    return preexec
