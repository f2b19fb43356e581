"""A :class:`~fwrescue.flash.device.Flash` that drives the real ``flashrom`` tool.

Works with any programmer string: ``dummy:emulate=W25Q128FV,image=FILE`` in tests,
``linux_mtd:dev=N`` or ``linux_spi:dev=/dev/spidevX.Y`` on a BMC, ``internal`` on a host.
Every call is an argv list run with :class:`subprocess.Popen` (never a shell) under a
timeout, with ``LC_ALL=C`` so the output parses the same everywhere.

* read: ``-l LAYOUT -i fwrescue:DEST -r /dev/null`` reads only the span into DEST
  (plain ``-r DEST`` for a whole chip).
* write: flashrom reads the chip, erases and writes only what differs and verifies.
  A span smaller than the chip is written through a one-entry layout file,
  ``-i fwrescue:IMAGE`` and a sparse chip-sized placeholder for ``-w`` (flashrom
  insists on a chip-sized file), with ``-N`` so only the span is verified.
* progress: ``-V`` prints one token per erase block as it goes; the tokens are
  parsed while flashrom runs and drive ``progress(done, total)`` live.
* report: with ``erase_accounting="log"`` (default) the WriteReport comes from
  ``-V`` output, where this flashrom prints one ``0xSTART-0xEND:FLAGS`` token per
  erase block (``S`` skipped, ``E`` erased, ``W`` written). Byte counts are
  block-granular. If a future flashrom prints no tokens, the report falls back to
  the pessimistic bound (every block of the span erased and written) rather than
  guess. ``erase_accounting="diff"`` instead reads the span first (one more
  flashrom run) and computes which blocks needed erasing by diffing old and new
  contents — slower, independent of flashrom's output format.

Failures raise :class:`FlashromError` with ``exit_code`` and the last output lines
(``stderr``); a missing binary or a timeout too. A failed flashrom verify raises
:class:`FlashromVerifyError`, which is both a FlashromError and a FlashVerifyError.
"""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from fwrescue.errors import ConfigError, FlashError, FlashromError, FlashVerifyError
from fwrescue.flash._bounds import check_span
from fwrescue.flash.device import Progress, WriteReport

__all__ = ["FlashromFlash", "FlashromVerifyError", "parse_erase_log"]

_BLOCK = re.compile(rb"0x([0-9a-fA-F]+)-0x([0-9a-fA-F]+):([A-Z]+)")
_IDENTICAL = b"Chip content is identical"
_VERIFIED = b"VERIFIED"
_REGION = "fwrescue"
#: Lines of flashrom output kept in an error (enough for the reason, bounded).
_ERROR_LINES = 6
#: Cap on captured stdout. ``-V -w`` on a 32 MiB chip prints about 200 KB (one token
#: per 4 KiB block); far more means something is wrong, so the run is stopped.
_MAX_OUTPUT = 64 << 20


class FlashromVerifyError(FlashromError, FlashVerifyError):
    """flashrom wrote but its own read-back verify failed."""


def parse_erase_log(output: bytes, start: int, end: int) -> tuple[dict[int, int], int, int] | None:
    """(erased blocks by size, bytes written, bytes skipped) within ``[start, end)`` from a
    ``flashrom -V -w`` log, or None if it holds no per-block decisions."""
    erased: dict[int, int] = {}
    written = skipped = 0
    seen = False
    for m in _BLOCK.finditer(output):
        lo, hi, flags = int(m[1], 16), int(m[2], 16) + 1, m[3]
        if hi <= lo:
            continue
        seen = True
        overlap = max(0, min(hi, end) - max(lo, start))
        if b"E" in flags:
            erased[hi - lo] = erased.get(hi - lo, 0) + 1
        if b"W" in flags:
            written += overlap
        elif b"E" not in flags:
            skipped += overlap
    return (erased, written, skipped) if seen else None


class FlashromFlash:
    """Region-level flash through the flashrom binary (module doc).

    ``region=(offset, size)`` restricts every access to that span of the chip
    (offsets given to read_to/write are relative to it). ``chip`` is passed as
    ``-c`` (saves probing time). ``chip_size`` avoids a ``--flash-size`` probe.
    ``erase_block`` is the smallest erase size, used by the fallbacks.
    Raises ConfigError for a bad argument.
    """

    def __init__(
        self,
        programmer: str,
        *,
        flashrom: str = "flashrom",
        region: tuple[int, int] | None = None,
        chip: str | None = None,
        workdir: Path,
        chip_size: int | None = None,
        timeout: float = 600.0,
        erase_accounting: Literal["log", "diff"] = "log",
        erase_block: int = 4096,
    ) -> None:
        _check_arg("programmer", programmer)
        if chip is not None:
            _check_arg("chip", chip)
        if region is not None and (region[0] < 0 or region[1] <= 0):
            raise ConfigError("flashrom region needs offset >= 0 and size > 0", region=region)
        if timeout <= 0 or erase_block <= 0 or (chip_size is not None and chip_size <= 0):
            raise ConfigError("timeout, erase_block and chip_size must be positive")
        if erase_accounting not in ("log", "diff"):
            raise ConfigError("erase_accounting is 'log' or 'diff'", value=erase_accounting)
        self._programmer = programmer
        self._flashrom = flashrom
        self._region = region
        self._chip = chip
        self._workdir = Path(workdir)
        self._chip_size = chip_size
        self._timeout = timeout
        self._accounting = erase_accounting
        self._erase_block = erase_block
        self.runs = 0  # flashrom invocations, for tests and benches

    # --- geometry ---------------------------------------------------------------------------

    @property
    def chip_size(self) -> int:
        """Size of the whole chip (asks ``flashrom --flash-size`` once if not given)."""
        if self._chip_size is None:
            out = self._run(["--flash-size"]).stdout
            lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
            if not lines or not lines[-1].isdigit():
                raise FlashromError("cannot parse flashrom --flash-size", exit_code=0)
            self._chip_size = int(lines[-1])
        return self._chip_size

    @property
    def size(self) -> int:
        if self._region is not None:
            return self._region[1]
        return self.chip_size

    def _base(self) -> int:
        if self._region is not None:
            if self._region[0] + self._region[1] > self.chip_size:
                raise FlashError("flashrom region beyond the chip", region=self._region)
            return self._region[0]
        return 0

    # --- Flash ------------------------------------------------------------------------------

    def read_to(self, offset: int, length: int, dest: Path) -> None:
        """Read ``length`` bytes at region ``offset`` into ``dest`` (removed on failure)."""
        check_span(offset, length, self.size, "flashrom read")
        start = self._base() + offset
        dest = Path(dest)
        try:
            if start == 0 and length == self.chip_size:
                self._run(["-r", str(dest)])
            else:
                with self._layout(start, length) as layout:
                    self._run(["-l", str(layout), "-i", f"{_REGION}:{dest}", "-r", os.devnull])
            got = dest.stat().st_size
            if got != length:
                raise FlashromError("flashrom read returned short data", length=got, want=length)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    def write(self, offset: int, image: Path, progress: Progress | None = None) -> WriteReport:
        """Write ``image`` at region ``offset`` with flashrom (module doc)."""
        try:
            length = Path(image).stat().st_size
        except OSError as e:
            raise FlashError("cannot open image", path=str(image)) from e
        check_span(offset, length, self.size, "flashrom write")
        if progress is not None:
            progress(0, length)
        if length == 0:
            return WriteReport(0, 0, {}, 0)
        start = self._base() + offset
        feed = None if progress is None else _ProgressTracker(progress, start, length).feed
        before: Path | None = None
        try:
            if self._accounting == "diff":
                before = self._tempfile(".before")
                self.read_to(offset, length, before)
            if start == 0 and length == self.chip_size:
                out = self._run(["-V", "-w", str(image)], feed).stdout
            else:
                out = self._write_span(start, length, Path(image), feed)
            if _IDENTICAL not in out and _VERIFIED not in out:
                raise FlashromVerifyError("flashrom did not report a verified write", exit_code=0)
            if before is not None:
                report = _diff_report(before, Path(image), start, self._erase_block)
            else:
                report = self._log_report(out, start, length)
        finally:
            if before is not None:
                before.unlink(missing_ok=True)
        if progress is not None:
            progress(length, length)  # verified: done, whatever the log showed
        return report

    # --- internals --------------------------------------------------------------------------

    def _write_span(
        self, start: int, length: int, image: Path, feed: Callable[[bytes], None] | None
    ) -> bytes:
        placeholder = self._tempfile(".full")
        try:
            with open(placeholder, "r+b") as f:
                f.truncate(self.chip_size)  # sparse: no data, no disk
            with self._layout(start, length) as layout:
                argv = ["-V", "-l", str(layout), "-i", f"{_REGION}:{image}", "-N"]
                return self._run([*argv, "-w", str(placeholder)], feed).stdout
        finally:
            placeholder.unlink(missing_ok=True)

    def _log_report(self, out: bytes, start: int, length: int) -> WriteReport:
        parsed = parse_erase_log(out, start, start + length)
        if parsed is None:
            if _IDENTICAL in out:
                return WriteReport(length, 0, {}, length)
            # Unknown output format: report the pessimistic bound, never a guess.
            eb = self._erase_block
            blocks = -(-(start + length) // eb) - start // eb
            return WriteReport(length, length, {eb: blocks}, 0)
        erased, written, skipped = parsed
        return WriteReport(length, written, erased, skipped)

    def _tempfile(self, suffix: str) -> Path:
        try:
            self._workdir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="flashrom-", suffix=suffix, dir=self._workdir)
        except OSError as e:
            raise FlashError("cannot create flashrom work file", workdir=str(self._workdir)) from e
        os.close(fd)
        return Path(name)

    @contextmanager
    def _layout(self, start: int, length: int) -> Iterator[Path]:
        path = self._tempfile(".layout")
        try:
            path.write_text(f"{start:08x}:{start + length - 1:08x} {_REGION}\n")
            yield path
        finally:
            path.unlink(missing_ok=True)

    def _check_dummy_image(self) -> None:
        # flashrom's dummy programmer silently starts from an erased chip when its
        # image file is missing; that would hide a misconfigured test or demo.
        name, _, params = self._programmer.partition(":")
        if name != "dummy":
            return
        for item in params.split(","):
            key, _, value = item.partition("=")
            if key == "image":
                p = Path(value)
                if not p.is_file():
                    raise FlashromError("dummy programmer image file missing", path=value)
                if self._chip_size is not None and p.stat().st_size != self._chip_size:
                    raise FlashromError("dummy image size differs from chip size", path=value)

    def _run(
        self, args: Sequence[str], on_output: Callable[[bytes], None] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run flashrom with ``args``; stdout is streamed to ``on_output`` as it arrives.

        Raises FlashromError for a missing binary, the timeout (the process is killed)
        or a non-zero exit (FlashromVerifyError if flashrom's verify FAILED).
        """
        self._check_dummy_image()
        argv = [self._flashrom, "-p", self._programmer]
        if self._chip is not None:
            argv += ["-c", self._chip]
        argv += list(args)
        env = dict(os.environ, LC_ALL="C")
        self.runs += 1
        # stderr goes to a file, so a chatty stderr can never block the stdout reader.
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env)
            except FileNotFoundError as e:
                raise FlashromError(
                    "flashrom binary not found", exit_code=None, stderr=str(e)
                ) from e
            except OSError as e:
                raise FlashromError(
                    "flashrom could not be run", exit_code=None, stderr=str(e)
                ) from e
            try:
                out = self._collect(proc, on_output)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                if proc.stdout is not None:
                    proc.stdout.close()
            err.seek(0)
            stderr = err.read(1 << 20)
        if proc.returncode != 0:
            reason = _tail(stderr) or _tail(out)
            cls = FlashromVerifyError if b"FAILED" in out + stderr else FlashromError
            raise cls(
                f"flashrom failed: {reason.splitlines()[-1] if reason else 'no output'}",
                exit_code=proc.returncode,
                stderr=reason,
            )
        return subprocess.CompletedProcess(argv, proc.returncode, out, stderr)

    def _collect(
        self, proc: subprocess.Popen[bytes], on_output: Callable[[bytes], None] | None
    ) -> bytes:
        """Read stdout to EOF and reap the process, both within the timeout."""
        assert proc.stdout is not None  # Popen(stdout=PIPE) always sets it
        deadline = time.monotonic() + self._timeout
        chunks: list[bytes] = []
        size = 0
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:  # bounded by the deadline
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timed_out(b"".join(chunks))
                if not sel.select(left):
                    continue
                data = os.read(fd, 1 << 16)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
                if size > _MAX_OUTPUT:
                    raise FlashromError("flashrom output exceeds the limit", limit=_MAX_OUTPUT)
                if on_output is not None:
                    on_output(data)
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as e:
            raise self._timed_out(b"".join(chunks)) from e
        return b"".join(chunks)

    def _timed_out(self, out: bytes) -> FlashromError:
        return FlashromError(
            "flashrom timed out", exit_code=None, timeout=self._timeout, stderr=_tail(out)
        )


class _ProgressTracker:
    """Turns streamed ``-V`` block tokens into progress(done, total) over a span."""

    def __init__(self, progress: Progress, start: int, length: int) -> None:
        self._progress = progress
        self._start = start
        self._length = length
        self._tail = b""
        self._done = 0

    def feed(self, data: bytes) -> None:
        buf = self._tail + data
        self._tail = buf[-48:]  # a token split across reads is seen whole next time
        best = self._done
        for m in _BLOCK.finditer(buf):
            end = int(m[2], 16) + 1 - self._start
            best = max(best, min(end, self._length))
        if best > self._done:
            self._done = best
            self._progress(best, self._length)


def _tail(data: bytes | str | None) -> str:
    if not data:
        return ""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    return "\n".join(ln[:300] for ln in lines[-_ERROR_LINES:])


def _check_arg(what: str, value: str) -> None:
    # argv is never a shell string, but a value starting with '-' would still be
    # read as an option, and control characters have no business in either.
    if not value or value.startswith("-") or any(c.isspace() or ord(c) < 32 for c in value):
        raise ConfigError(f"invalid flashrom {what}", value=value)


def _diff_report(before: Path, image: Path, start: int, eb: int) -> WriteReport:
    """Erase decisions at ``eb`` granularity from old vs new contents of the span."""
    erased = programmed = skipped = 0
    length = image.stat().st_size
    with open(before, "rb") as fo, open(image, "rb") as fn:
        pos = start
        end = start + length
        while pos < end:
            n = min(eb - pos % eb, end - pos)
            o, w = fo.read(n), fn.read(n)
            if len(o) != n or len(w) != n:
                raise FlashError("short file while diffing flash contents")
            if o == w:
                skipped += n
            else:
                programmed += n
                wi = int.from_bytes(w, "big")
                if int.from_bytes(o, "big") & wi != wi:
                    erased += 1
            pos += n
    return WriteReport(length, programmed, {eb: erased} if erased else {}, skipped)
