"""A small QMP (QEMU Machine Protocol) client over an asyncio unix-socket stream.

QMP is newline-delimited JSON. On connect QEMU sends a greeting
(``{"QMP": {...}}``); the client must send ``qmp_capabilities`` before any other
command. Each command is ``{"execute": NAME, "arguments": {...}, "id": ID}`` and is
answered by ``{"return": ..., "id": ID}`` or ``{"error": {"class", "desc"}, "id": ID}``;
asynchronous ``{"event": ...}`` messages may arrive in between and are kept in a
bounded buffer (:attr:`QmpClient.events`).

Every failure is a :class:`fwrescue.errors.HostError` subclass:

* :class:`QmpConnectError` — the socket could not be opened;
* :class:`QmpTimeout` — QEMU did not answer in time;
* :class:`QmpConnectionLost` — the socket closed before the answer;
* :class:`QmpProtocolError` — a message was not QMP (bad JSON, oversize, no greeting);
* :class:`QmpCommandError` — QEMU answered with an error (``fields['error_class']``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from pathlib import Path
from typing import Any

from fwrescue.errors import HostError

__all__ = [
    "MAX_EVENTS",
    "MAX_LINE_BYTES",
    "QmpClient",
    "QmpCommandError",
    "QmpConnectError",
    "QmpConnectionLost",
    "QmpError",
    "QmpProtocolError",
    "QmpTimeout",
]

#: Longest QMP line accepted. QEMU's answers to the few commands we send
#: (query-status, stop, cont, system_reset, quit) are < 1 KiB; query-block on a
#: big machine is a few KiB. 1 MiB leaves room while bounding a misbehaving peer.
MAX_LINE_BYTES = 1 << 20
#: Events kept for inspection; older ones are dropped (QEMU emits a handful per boot).
MAX_EVENTS = 256


class QmpError(HostError):
    """Base of QMP failures."""


class QmpConnectError(QmpError):
    """The QMP socket could not be opened."""


class QmpTimeout(QmpError):
    """QEMU did not answer a QMP command (or the greeting) within the timeout."""


class QmpConnectionLost(QmpError):
    """The QMP socket closed before the answer arrived."""


class QmpProtocolError(QmpError):
    """QEMU sent something that is not QMP (bad JSON, oversize line, missing greeting)."""


class QmpCommandError(QmpError):
    """QEMU answered a command with an error; ``fields`` hold its class and description."""

    retryable = False


class QmpClient:
    """One QMP session on an open stream. Build it with :meth:`connect`.

    Commands are serialized (one in flight at a time); the client is not safe to
    share across event loops.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        self._next_id = 0
        self._closed = False
        self.greeting: dict[str, Any] = {}
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_EVENTS)

    @classmethod
    async def connect(cls, path: Path | str, *, timeout: float = 5.0) -> QmpClient:
        """Open the unix socket at ``path``, read the greeting, negotiate capabilities.

        Raises :class:`QmpConnectError` if the socket cannot be opened,
        :class:`QmpTimeout`/:class:`QmpProtocolError`/:class:`QmpConnectionLost`
        if the greeting or the ``qmp_capabilities`` answer is missing or wrong.
        """
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(path), limit=MAX_LINE_BYTES), timeout
            )
        except (OSError, TimeoutError) as e:
            raise QmpConnectError(
                "could not open the QMP socket", path=str(path), reason=repr(e)
            ) from e
        client = cls(reader, writer)
        try:
            greeting = await client._read_message(timeout, what="QMP greeting")
            if not isinstance(greeting.get("QMP"), dict):
                raise QmpProtocolError("peer did not send a QMP greeting", got=_short(greeting))
            client.greeting = greeting
            await client.execute("qmp_capabilities", timeout=timeout)
        except BaseException:
            await client.close()
            raise
        return client

    async def execute(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float = 5.0,
        allow_eof: bool = False,
    ) -> Any:
        """Run ``command`` and return its ``return`` value.

        ``allow_eof`` is for ``quit``: QEMU may close the socket right after (or
        before) answering, which then counts as success and returns ``None``.
        Raises :class:`QmpCommandError` on an error answer, :class:`QmpTimeout`,
        :class:`QmpConnectionLost`, :class:`QmpProtocolError`.
        """
        async with self._lock:
            if self._closed:
                raise QmpConnectionLost("QMP session is closed", command=command)
            self._next_id += 1
            msg_id = f"fwr-{self._next_id}"
            request: dict[str, Any] = {"execute": command, "id": msg_id}
            if arguments:
                request["arguments"] = arguments
            try:
                self._writer.write(json.dumps(request).encode() + b"\n")
                await asyncio.wait_for(self._writer.drain(), timeout)
            except (OSError, ConnectionError) as e:
                if allow_eof:
                    return None
                raise QmpConnectionLost(
                    "QMP socket closed while sending", command=command
                ) from e
            except TimeoutError as e:
                raise QmpTimeout("QMP did not accept the command in time", command=command) from e
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            # Bounded: each pass consumes one line; the deadline ends a flood of events.
            while True:
                remaining = deadline - loop.time()
                try:
                    reply = await self._read_message(remaining, what=f"answer to {command}")
                except QmpConnectionLost:
                    if allow_eof:
                        return None
                    raise
                if "event" in reply:
                    self.events.append(reply)
                    continue
                if reply.get("id") != msg_id:
                    raise QmpProtocolError(
                        "QMP answer for another command", command=command, got=_short(reply)
                    )
                if "error" in reply:
                    err = reply["error"] if isinstance(reply["error"], dict) else {}
                    raise QmpCommandError(
                        f"QEMU refused {command}",
                        command=command,
                        error_class=str(err.get("class", "?")),
                        desc=str(err.get("desc", "?")),
                    )
                if "return" not in reply:
                    raise QmpProtocolError(
                        "QMP answer without return or error", command=command, got=_short(reply)
                    )
                return reply["return"]

    async def _read_message(self, timeout: float, *, what: str) -> dict[str, Any]:
        if timeout <= 0:
            raise QmpTimeout(f"QMP did not answer: no {what} in time")
        try:
            line = await asyncio.wait_for(self._reader.readuntil(b"\n"), timeout)
        except TimeoutError as e:
            raise QmpTimeout(f"QMP did not answer: no {what} within {timeout:.1f}s") from e
        except asyncio.IncompleteReadError as e:
            self._closed = True
            raise QmpConnectionLost(f"QMP socket closed before the {what}") from e
        except asyncio.LimitOverrunError as e:
            self._closed = True
            raise QmpProtocolError(
                f"QMP line longer than {MAX_LINE_BYTES} bytes", what=what
            ) from e
        except (OSError, ConnectionError) as e:
            self._closed = True
            raise QmpConnectionLost(f"QMP socket failed before the {what}") from e
        try:
            message = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise QmpProtocolError("QMP sent invalid JSON", what=what, got=line[:200]) from e
        if not isinstance(message, dict):
            raise QmpProtocolError("QMP sent a non-object message", what=what, got=line[:200])
        return message

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Close the socket; idempotent, never raises."""
        self._closed = True
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)


def _short(message: dict[str, Any]) -> str:
    return json.dumps(message)[:200]
