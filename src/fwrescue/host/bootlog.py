"""The boot watchdog's eyes: find a boot-success pattern in a growing serial log.

:class:`BootPatternScanner` is sans-IO: feed it bytes as they appear, it says
when the pattern matched. :func:`follow_log` is the thin I/O shell that tails a
file (QEMU's ``-serial file:LOG``) until the pattern appears, a deadline passes,
or the producer dies.
"""

from __future__ import annotations

import asyncio
import codecs
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fwrescue.errors import HostError

__all__ = [
    "DEFAULT_WINDOW_CHARS",
    "MAX_READ_BYTES",
    "BootPatternScanner",
    "LogWatch",
    "follow_log",
]

#: Text kept from earlier chunks so a match split across two reads is still found.
#: A boot banner is one line; 4 KiB is many lines of slack.
DEFAULT_WINDOW_CHARS = 4096
#: Bytes read from the log per poll; a chatty firmware cannot make one poll unbounded.
MAX_READ_BYTES = 1 << 20


class BootPatternScanner:
    """Matches a regular expression against a byte stream fed in arbitrary pieces.

    Bytes are decoded as UTF-8 (invalid bytes replaced, so firmware noise never
    raises). Matches spanning at most ``window`` characters are found however
    the stream is split. After the first match, :attr:`matched` holds the text.
    Raises :class:`ValueError` for a window smaller than 64 characters.
    """

    def __init__(self, pattern: str | re.Pattern[str], *, window: int = DEFAULT_WINDOW_CHARS):
        if window < 64:
            raise ValueError("window must be at least 64 characters")
        self._pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        self._window = window
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._tail = ""
        self.matched: str | None = None
        self.bytes_seen = 0

    def feed(self, data: bytes) -> str | None:
        """Add ``data``; return the matched text once the pattern has matched, else None."""
        if self.matched is not None:
            return self.matched
        self.bytes_seen += len(data)
        text = self._tail + self._decoder.decode(data)
        found = self._pattern.search(text)
        if found is not None:
            self.matched = found.group(0)
            return self.matched
        self._tail = text[-self._window :]
        return None


@dataclass(frozen=True)
class LogWatch:
    """Outcome of :func:`follow_log`: ``matched`` text or None, and why it stopped."""

    matched: str | None
    reason: str
    bytes_seen: int


async def follow_log(
    path: Path,
    scanner: BootPatternScanner,
    *,
    timeout: float,
    alive: Callable[[], bool],
    poll_seconds: float = 0.05,
) -> LogWatch:
    """Tail ``path`` into ``scanner`` until it matches, ``timeout`` passes or ``alive()``
    turns False. A file that does not exist yet counts as empty.

    Never raises on timeout; raises :class:`HostError` if the file cannot be read.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, timeout)
    offset = 0
    # Bounded by the deadline: every pass sleeps or ends.
    while True:
        # Sample liveness before reading, so output written just before the end is seen.
        running = alive()
        try:
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read(MAX_READ_BYTES)
        except FileNotFoundError:
            data = b""
        except OSError as e:
            raise HostError("cannot read the serial log", path=str(path), reason=repr(e)) from e
        remaining = deadline - loop.time()
        if data:
            offset += len(data)
            if scanner.feed(data) is not None:
                return LogWatch(scanner.matched, "pattern matched", scanner.bytes_seen)
            if len(data) == MAX_READ_BYTES and remaining > 0:
                await asyncio.sleep(0)  # more is waiting; read it before sleeping
                continue
        if not running:
            return LogWatch(None, "host stopped running", scanner.bytes_seen)
        if remaining <= 0:
            return LogWatch(None, f"no boot pattern within {timeout:.1f}s", scanner.bytes_seen)
        await asyncio.sleep(min(poll_seconds, remaining))
