"""The QMP client against a tiny fake QMP server on a unix socket."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fwrescue.errors import HostError
from fwrescue.host.qmp import (
    MAX_LINE_BYTES,
    QmpClient,
    QmpCommandError,
    QmpConnectError,
    QmpConnectionLost,
    QmpProtocolError,
    QmpTimeout,
)

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def send(writer: asyncio.StreamWriter, message: Any) -> None:
    writer.write(json.dumps(message).encode() + b"\r\n")


async def recv(reader: asyncio.StreamReader) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await reader.readline())
    return message


async def qemu_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Behaves like QEMU for the commands the host uses."""
    send(writer, GREETING)
    # Bounded by the client: each pass handles one command; EOF ends it.
    while line := await reader.readline():
        request = json.loads(line)
        cmd, msg_id = request["execute"], request.get("id")
        if cmd == "query-status":
            send(writer, {"event": "RESUME", "timestamp": {"seconds": 0, "microseconds": 0}})
            send(writer, {"return": {"status": "running", "running": True}, "id": msg_id})
        elif cmd == "quit":
            send(writer, {"return": {}, "id": msg_id})
            await writer.drain()
            writer.close()
            return
        elif cmd in ("qmp_capabilities", "stop", "cont", "system_reset"):
            send(writer, {"return": {}, "id": msg_id})
        else:
            error = {"class": "CommandNotFound", "desc": f"The command {cmd} has not been found"}
            send(writer, {"error": error, "id": msg_id})
        await writer.drain()


@pytest.fixture
async def socket_dir() -> AsyncIterator[Path]:
    # Short path: unix socket paths are limited to 108 bytes, pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="fwr-qmp-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def serve(socket_dir: Path) -> AsyncIterator[Callable[[Handler], Awaitable[Path]]]:
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: Handler) -> Path:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await handler(reader, writer)

        path = socket_dir / "qmp.sock"
        servers.append(await asyncio.start_unix_server(tracked, str(path)))
        return path

    yield start
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_greeting_capabilities_and_command_round_trip(serve: Any) -> None:
    client = await QmpClient.connect(await serve(qemu_like), timeout=2.0)
    try:
        assert client.greeting["QMP"]["version"]["qemu"]["major"] == 7
        status = await client.execute("query-status", timeout=2.0)
        assert status == {"status": "running", "running": True}
        assert [e["event"] for e in client.events] == ["RESUME"]
    finally:
        await client.close()


async def test_error_answer_raises_command_error_with_class_and_description(serve: Any) -> None:
    client = await QmpClient.connect(await serve(qemu_like), timeout=2.0)
    try:
        with pytest.raises(QmpCommandError) as info:
            await client.execute("bogus-command", timeout=2.0)
        assert isinstance(info.value, HostError)
        assert info.value.fields["error_class"] == "CommandNotFound"
        assert "bogus-command" in str(info.value.fields["desc"])
    finally:
        await client.close()


async def test_quit_succeeds_when_qemu_closes_the_socket(serve: Any) -> None:
    client = await QmpClient.connect(await serve(qemu_like), timeout=2.0)
    await client.execute("quit", timeout=2.0, allow_eof=True)
    with pytest.raises(QmpConnectionLost):
        await client.execute("query-status", timeout=2.0)
    await client.close()


async def test_silent_server_gives_a_timeout_saying_qmp_did_not_answer(serve: Any) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never greets

    path = await serve(silent)
    with pytest.raises(QmpTimeout, match="QMP did not answer"):
        await QmpClient.connect(path, timeout=0.1)


async def test_command_without_answer_times_out(serve: Any) -> None:
    async def mute_after_caps(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        send(writer, GREETING)
        caps = await recv(reader)
        send(writer, {"return": {}, "id": caps["id"]})
        await reader.read()

    client = await QmpClient.connect(await serve(mute_after_caps), timeout=2.0)
    try:
        with pytest.raises(QmpTimeout):
            await client.execute("query-status", timeout=0.1)
    finally:
        await client.close()


async def test_server_closing_mid_command_is_connection_lost(serve: Any) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        send(writer, GREETING)
        caps = await recv(reader)
        send(writer, {"return": {}, "id": caps["id"]})
        await recv(reader)
        writer.close()

    client = await QmpClient.connect(await serve(hang_up), timeout=2.0)
    try:
        with pytest.raises(QmpConnectionLost):
            await client.execute("stop", timeout=2.0)
    finally:
        await client.close()


@pytest.mark.parametrize(
    "greeting",
    [b"not json\n", b"[1, 2]\n", b'{"hello": "world"}\n', b"\xff\xfe\n"],
    ids=["garbage", "array", "no-qmp-key", "bad-utf8"],
)
async def test_a_peer_that_is_not_qemu_is_a_protocol_error(serve: Any, greeting: bytes) -> None:
    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        await reader.read()

    with pytest.raises(QmpProtocolError):
        await QmpClient.connect(await serve(impostor), timeout=2.0)


async def test_oversize_line_is_rejected_not_buffered(serve: Any) -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x" * (MAX_LINE_BYTES + 10))
        await writer.drain()
        await reader.read()

    with pytest.raises(QmpProtocolError, match="longer than"):
        await QmpClient.connect(await serve(flood), timeout=5.0)


async def test_answer_with_a_foreign_id_is_a_protocol_error(serve: Any) -> None:
    async def confused(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        send(writer, GREETING)
        await recv(reader)
        send(writer, {"return": {}, "id": "someone-else"})
        await reader.read()

    with pytest.raises(QmpProtocolError, match="another command"):
        await QmpClient.connect(await serve(confused), timeout=2.0)


async def test_missing_socket_is_a_connect_error(socket_dir: Path) -> None:
    with pytest.raises(QmpConnectError):
        await QmpClient.connect(socket_dir / "nothing.sock", timeout=1.0)
