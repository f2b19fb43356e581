"""A real UEFI host: QEMU (q35) booting OVMF from a pflash file — the firmware hub.

The BMC writes the CODE pflash file while the host is off or held in reset;
QEMU reads it when the process starts. Power and reset map onto the process
and QMP:

===============  ===========================================================
Host operation   QEMU
===============  ===========================================================
power_on         start the process (fresh serial log ``boot-NNNN.log``)
power_off        QMP ``quit``; SIGKILL if it does not exit in time
hold_reset       from OFF: start with ``-S`` (CPU never runs);
                 from ON: QMP ``stop`` + ``system_reset`` (status prelaunch)
release_reset    ``quit`` + restart without ``-S``: QEMU caches pflash in RAM
                 and cannot reload it (``blockdev-change-medium`` answers
                 "Device 'pflash0' is not removable"), so a restart is how
                 "leaving reset re-reads the SPI flash" is modelled
power_state      no process → OFF; QMP ``query-status``: prelaunch/paused →
                 RESET_HELD, anything else → ON
wait_boot        tail the serial log until ``boot_pattern`` matches
===============  ===========================================================

Every failure raises a :class:`fwrescue.errors.HostError` subclass;
:meth:`QemuHost.wait_boot` returns ``booted=False`` instead of raising on timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from fwrescue.errors import HostError
from fwrescue.host.accel import ACCEL_ARGS, Accel, kvm_device_usable, probe_kvm
from fwrescue.host.base import BootResult, PowerState
from fwrescue.host.bootlog import BootPatternScanner, follow_log
from fwrescue.host.qmp import QmpClient, QmpError
from fwrescue.host.reaper import die_with_parent

__all__ = [
    "DEFAULT_BOOT_PATTERN",
    "OVMF_SEARCH_DIRS",
    "FirmwareFilesMissing",
    "HostConfigError",
    "QemuHost",
    "QemuLaunch",
    "QemuNotStarted",
    "build_argv",
    "find_ovmf",
    "prepare_firmware_hub",
]

DEFAULT_BOOT_PATTERN = r"Shell>|UEFI Interactive Shell"
#: Where Debian's ``ovmf`` package puts its files (``dpkg -L ovmf``).
OVMF_SEARCH_DIRS: tuple[Path, ...] = (Path("/usr/share/OVMF"), Path("/usr/share/ovmf"))
_OVMF_PAIRS = (("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"), ("OVMF_CODE.fd", "OVMF_VARS.fd"))

#: Largest pflash file accepted; real BIOS parts are 16–64 MiB.
MAX_PFLASH_BYTES = 64 << 20
#: Unix socket paths are limited to 108 bytes (sun_path); keep a margin.
_MAX_SOCKET_PATH = 100
#: Lines of QEMU's stderr quoted in a start error.
_STDERR_TAIL_LINES = 8


class QemuNotStarted(HostError):
    """The QEMU process could not be started or died before QMP answered."""


class HostConfigError(HostError):
    """A QemuHost argument is invalid; nothing was started."""

    retryable = False


class FirmwareFilesMissing(HostError):
    """The OVMF firmware files (Debian package ``ovmf``) are not installed."""

    retryable = False


def find_ovmf(search_dirs: Sequence[Path] = OVMF_SEARCH_DIRS) -> tuple[Path, Path]:
    """Return the pristine (CODE, VARS) OVMF files, preferring the 4 MiB build.

    Raises :class:`FirmwareFilesMissing` naming the places looked at.
    """
    for directory in search_dirs:
        for code_name, vars_name in _OVMF_PAIRS:
            code, vars_ = directory / code_name, directory / vars_name
            if code.is_file() and vars_.is_file():
                return code, vars_
    raise FirmwareFilesMissing(
        "OVMF firmware not found; install the Debian package 'ovmf'",
        searched=[str(d) for d in search_dirs],
    )


def prepare_firmware_hub(workdir: Path, *, source: tuple[Path, Path] | None = None) -> tuple[
    Path, Path
]:
    """Copy the pristine OVMF pair into ``workdir`` as ``code.fd`` and ``vars.fd``.

    The copies are what QEMU runs and what the BMC rewrites; the distribution
    files are never touched. Raises :class:`FirmwareFilesMissing` or
    :class:`HostError` if the copy fails.
    """
    code_src, vars_src = source if source is not None else find_ovmf()
    workdir.mkdir(parents=True, exist_ok=True)
    code, vars_ = workdir / "code.fd", workdir / "vars.fd"
    try:
        shutil.copyfile(code_src, code)
        shutil.copyfile(vars_src, vars_)
    except OSError as e:
        raise HostError("cannot copy the OVMF files", workdir=str(workdir)) from e
    return code, vars_


@dataclass(frozen=True)
class QemuLaunch:
    """Everything one QEMU start needs; :func:`build_argv` turns it into argv."""

    qemu_binary: str
    code_path: Path
    vars_path: Path
    log_path: Path
    qmp_path: Path
    accel: Accel
    memory_mb: int
    held: bool
    extra_args: tuple[str, ...] = ()
    #: (offset, size) of the BIOS region inside a larger chip file; None = the whole file
    code_region: tuple[int, int] | None = None


def build_argv(launch: QemuLaunch) -> list[str]:
    """The QEMU command line for ``launch`` (pure)."""
    if launch.code_region is None:
        code = _drive_path(launch.code_path)
        firmware = [
            "-machine", "q35",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={_drive_path(launch.vars_path)}",
        ]  # fmt: skip
    else:
        # The host reads its BIOS straight out of the (larger) SPI chip image: a raw view
        # of [offset, offset+size) — q35 maps at most 8 MiB of pflash in all.
        offset, size = launch.code_region
        firmware = [
            "-machine", "q35,pflash0=fwcode,pflash1=fwvars",
            "-blockdev", f"node-name=fwcode,driver=raw,read-only=on,offset={offset},size={size},"
                         f"file.driver=file,file.read-only=on,"
                         f"file.filename={_drive_path(launch.code_path)}",
            "-blockdev", "node-name=fwvars,driver=raw,file.driver=file,"
                         f"file.filename={_drive_path(launch.vars_path)}",
        ]  # fmt: skip
    argv = [
        launch.qemu_binary,
        *ACCEL_ARGS[launch.accel],
        *firmware,
        "-nodefaults",
        "-m", str(launch.memory_mb),
        "-serial", f"file:{launch.log_path}",
        "-display", "none",
        "-net", "none",
        "-qmp", f"unix:{launch.qmp_path},server=on,wait=off",
    ]  # fmt: skip
    if launch.held:
        argv.append("-S")
    argv.extend(launch.extra_args)
    return argv


def _drive_path(path: Path) -> str:
    # -drive splits on ','; QEMU's escape for a literal comma is ',,'.
    return str(path).replace(",", ",,")


class QemuHost:
    """A host backend running OVMF in QEMU from ``code_path`` (the firmware hub).

    ``code_path``/``vars_path`` must be writable copies (see
    :func:`prepare_firmware_hub`); serial logs, QEMU stderr and the QMP socket
    live in ``workdir``. ``accel="auto"`` picks KVM if the probe guest runs under
    it, else TCG, once per instance; :attr:`accel_used` records the choice.

    Raises :class:`HostConfigError` (a :class:`HostError`) for bad arguments.
    """

    def __init__(
        self,
        *,
        code_path: Path,
        vars_path: Path,
        workdir: Path,
        qemu_binary: str = "qemu-system-x86_64",
        accel: Literal["auto", "kvm", "tcg"] = "auto",
        boot_pattern: str = DEFAULT_BOOT_PATTERN,
        memory_mb: int = 256,
        extra_args: Sequence[str] = (),
        code_region: tuple[int, int] | None = None,
        start_timeout: float = 10.0,
        qmp_timeout: float = 5.0,
        quit_timeout: float = 3.0,
    ) -> None:
        if accel not in ("auto", "kvm", "tcg"):
            raise HostConfigError("accel must be 'auto', 'kvm' or 'tcg'", accel=accel)
        if not 32 <= memory_mb <= 65536:
            raise HostConfigError("memory_mb must be within 32..65536", memory_mb=memory_mb)
        try:
            self._pattern = re.compile(boot_pattern)
        except re.error as e:
            raise HostConfigError("boot_pattern is not a valid regular expression") from e
        for name, value in (("start", start_timeout), ("qmp", qmp_timeout), ("quit", quit_timeout)):
            if not 0 < value <= 600:
                raise HostConfigError(f"{name}_timeout must be within (0, 600] s", value=value)
        if vars_path.resolve().is_relative_to("/usr"):
            # QEMU writes the VARS file; never let it edit the distribution's copy.
            raise HostConfigError(
                "vars_path must be a copy, not a system file", vars_path=str(vars_path)
            )
        self.code_path = code_path
        self.vars_path = vars_path
        self.workdir = workdir
        self.qemu_binary = qemu_binary
        self.accel = accel
        self.memory_mb = memory_mb
        self.extra_args = tuple(extra_args)
        self.code_region = code_region
        self._start_timeout = start_timeout
        self._qmp_timeout = qmp_timeout
        self._quit_timeout = quit_timeout
        #: "kvm" or "tcg" once the first start decided; None before.
        self.accel_used: Accel | None = None
        #: Number of QEMU starts so far; the current serial log is boot-<boots>.log.
        self.boots = 0
        self.log_path: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._qmp: QmpClient | None = None
        self._qmp_path: Path | None = None
        self._sock_dir: Path | None = None
        self._started_at = 0.0
        # Serializes power operations (engine, Redfish reset, watchdog may overlap).
        self._lock = asyncio.Lock()

    # --- context manager -------------------------------------------------------------

    async def __aenter__(self) -> QemuHost:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- Host protocol ---------------------------------------------------------------

    async def power_state(self) -> PowerState:
        """OFF without a live process, else from QMP ``query-status``. Raises QmpError."""
        async with self._lock:
            return await self._state()

    async def power_on(self) -> None:
        """Start QEMU (from OFF); from RESET_HELD this is :meth:`release_reset`; no-op if ON."""
        async with self._lock:
            state = await self._state()
            if state is PowerState.OFF:
                await self._start(held=False)
            elif state is PowerState.RESET_HELD:
                await self._restart()

    async def power_off(self) -> None:
        """Stop the QEMU process (QMP ``quit``, then kill); idempotent."""
        async with self._lock:
            await self._stop()

    async def hold_reset(self) -> None:
        """From OFF start held (``-S``); from ON ``stop`` + ``system_reset``; idempotent."""
        async with self._lock:
            state = await self._state()
            if state is PowerState.OFF:
                await self._start(held=True)
            elif state is PowerState.ON:
                assert self._qmp is not None
                await self._qmp.execute("stop", timeout=self._qmp_timeout)
                await self._qmp.execute("system_reset", timeout=self._qmp_timeout)

    async def release_reset(self) -> None:
        """Leave reset: restart QEMU so it re-reads the pflash file. No-op if ON or OFF."""
        async with self._lock:
            if await self._state() is PowerState.RESET_HELD:
                await self._restart()

    async def wait_boot(self, timeout: float) -> BootResult:
        """Follow the current serial log until ``boot_pattern`` matches or ``timeout``.

        ``seconds`` counts from the process start. Returns ``booted=False`` (never
        raises) on timeout, when the host is off or held, or when QEMU exits.
        Raises :class:`HostError` only if the log cannot be read.
        """
        loop = asyncio.get_running_loop()
        state = await self.power_state()
        if state is not PowerState.ON or self.log_path is None:
            detail = "host is off" if state is PowerState.OFF else "host is held in reset"
            return BootResult(False, 0.0, detail, self.log_path)
        run = self.boots

        def same_run_alive() -> bool:
            return self._running() and self.boots == run

        watch = await follow_log(
            self.log_path, BootPatternScanner(self._pattern), timeout=timeout, alive=same_run_alive
        )
        seconds = loop.time() - self._started_at
        if watch.matched is not None:
            return BootResult(True, seconds, f"matched {watch.matched!r}", self.log_path)
        detail = f"{watch.reason}; {watch.bytes_seen} bytes of serial output"
        if self.boots != run:
            detail += "; the host was restarted during the wait"
        elif not self._running():
            detail += f"; QEMU exited with {self._proc.returncode if self._proc else '?'}"
        return BootResult(False, seconds, detail, self.log_path)

    async def close(self) -> None:
        """Kill QEMU if running and remove the socket; idempotent, never raises HostError.

        Does not wait for the lock: an operation stuck on a hung QEMU must not keep it alive.
        """
        with contextlib.suppress(HostError):
            await self._stop(graceful=False)
        self._cleanup_socket()

    # --- process management ----------------------------------------------------------

    async def _state(self) -> PowerState:
        if not self._running():
            await self._reap()
            return PowerState.OFF
        assert self._qmp is not None
        status = await self._qmp.execute("query-status", timeout=self._qmp_timeout)
        if not isinstance(status, dict):
            raise HostError("query-status answer is not an object", got=repr(status)[:200])
        if status.get("status") in ("prelaunch", "paused"):
            return PowerState.RESET_HELD
        return PowerState.ON

    async def _restart(self) -> None:
        await self._stop()
        await self._start(held=False)

    def _running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def _decide_accel(self) -> Accel:
        if self.accel_used is not None:
            return self.accel_used
        chosen: Accel
        if self.accel == "kvm":
            if not kvm_device_usable():
                raise HostError("accel='kvm' but /dev/kvm cannot be opened read-write")
            chosen = "kvm"
        elif self.accel == "tcg":
            chosen = "tcg"
        else:
            chosen = "kvm" if await probe_kvm(self.qemu_binary, self.workdir) else "tcg"
        self.accel_used = chosen
        return chosen

    async def _start(self, *, held: bool) -> None:
        for path, what in ((self.code_path, "code"), (self.vars_path, "vars")):
            try:
                size = path.stat().st_size
            except OSError as e:
                raise QemuNotStarted(f"the {what} pflash file is missing", path=str(path)) from e
            if not 0 < size <= MAX_PFLASH_BYTES:
                raise QemuNotStarted(f"the {what} pflash file has a bad size", size=size)
        self.workdir.mkdir(parents=True, exist_ok=True)
        accel = await self._decide_accel()
        self.boots += 1
        stem = f"boot-{self.boots:04d}"
        self.log_path = self.workdir / f"{stem}.log"
        stderr_path = self.workdir / f"{stem}.stderr"
        qmp_path = self._socket_path()
        qmp_path.unlink(missing_ok=True)
        argv = build_argv(
            QemuLaunch(
                qemu_binary=self.qemu_binary,
                code_path=self.code_path,
                vars_path=self.vars_path,
                log_path=self.log_path,
                qmp_path=qmp_path,
                accel=accel,
                memory_mb=self.memory_mb,
                held=held,
                extra_args=self.extra_args,
                code_region=self.code_region,
            )
        )
        loop = asyncio.get_running_loop()
        try:
            with stderr_path.open("wb") as err:
                self._proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=err,
                    # a SIGKILLed agent must not leave its host running (host/reaper.py)
                    preexec_fn=die_with_parent(),
                )
        except OSError as e:
            raise QemuNotStarted(
                "QEMU did not start: cannot execute the binary",
                binary=self.qemu_binary,
                reason=repr(e),
            ) from e
        self._started_at = loop.time()
        try:
            self._qmp = await self._connect_qmp(qmp_path, stderr_path)
        except BaseException:
            await self._kill()
            raise

    async def _connect_qmp(self, qmp_path: Path, stderr_path: Path) -> QmpClient:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout
        # Bounded by the start deadline; QEMU creates the socket within ~100 ms.
        while True:
            if not self._running():
                code = self._proc.returncode if self._proc else None
                raise QemuNotStarted(
                    "QEMU did not start",
                    exit_code=code,
                    stderr=_tail(stderr_path),
                )
            remaining = deadline - loop.time()
            if qmp_path.exists():
                try:
                    return await QmpClient.connect(
                        qmp_path, timeout=max(0.1, min(self._qmp_timeout, remaining))
                    )
                except QmpError as e:
                    if remaining <= 0:
                        raise QemuNotStarted(
                            "QEMU started but QMP did not answer",
                            stderr=_tail(stderr_path),
                            reason=str(e),
                        ) from e
            if remaining <= 0:
                raise QemuNotStarted(
                    f"QEMU did not open its QMP socket within {self._start_timeout:.1f}s",
                    stderr=_tail(stderr_path),
                )
            await asyncio.sleep(min(0.02, remaining))

    async def _stop(self, *, graceful: bool = True) -> None:
        """End the process: QMP quit (if ``graceful``), wait, then SIGKILL."""
        if self._running() and graceful and self._qmp is not None and not self._qmp.closed:
            with contextlib.suppress(QmpError):
                await self._qmp.execute("quit", timeout=self._quit_timeout, allow_eof=True)
            assert self._proc is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), self._quit_timeout)
        await self._kill()

    async def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await self._reap()

    async def _reap(self) -> None:
        if self._qmp is not None:
            await self._qmp.close()
            self._qmp = None
        if self._proc is not None:
            await self._proc.wait()
        if self._qmp_path is not None:
            self._qmp_path.unlink(missing_ok=True)

    def _socket_path(self) -> Path:
        if self._qmp_path is None:
            candidate = self.workdir / "qmp.sock"
            if len(str(candidate)) > _MAX_SOCKET_PATH:
                self._sock_dir = Path(tempfile.mkdtemp(prefix="fwr-qmp-"))
                candidate = self._sock_dir / "qmp.sock"
            self._qmp_path = candidate
        return self._qmp_path

    def _cleanup_socket(self) -> None:
        if self._qmp_path is not None:
            self._qmp_path.unlink(missing_ok=True)
        if self._sock_dir is not None:
            with contextlib.suppress(OSError):
                self._sock_dir.rmdir()
            self._sock_dir = None
            self._qmp_path = None


def _tail(path: Path, lines: int = _STDERR_TAIL_LINES) -> str:
    try:
        data = path.read_bytes()[-8192:]
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
