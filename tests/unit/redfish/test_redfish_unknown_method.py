"""An HTTP method the service has never heard of gets 405 + Allow, not the parser's 400
(redfish/methods.py), on the real server start_redfish_server runs."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

from tests.fakes.redfish_backend import FakeBackend

from fwrescue.redfish import (
    AccountSpec,
    RedfishServiceSettings,
    create_redfish_app,
    start_redfish_server,
)


async def raw_request(url: str, request_line: str) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        auth = base64.b64encode(b"admin:admin-pw-1").decode()
        writer.write(f"{request_line}\r\nHost: {host}\r\nAuthorization: Basic {auth}\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def test_unknown_method_is_405_with_allow_and_a_redfish_error(tmp_path: Path) -> None:
    settings = RedfishServiceSettings(
        accounts=(AccountSpec(username="admin", password="admin-pw-1"),),
        upload_dir=tmp_path / "uploads")
    app = create_redfish_app(FakeBackend(), settings)
    runner, url = await start_redfish_server(app, "127.0.0.1", 0, False, tmp_path / "state")
    try:
        status, headers, body = await raw_request(url, "FAKEMETHODFORTEST /redfish/v1 HTTP/1.1")
        assert status == 405
        assert "GET" in headers["allow"] and "FAKEMETHODFORTEST" not in headers["allow"]
        info = json.loads(body)["error"]["@Message.ExtendedInfo"][0]
        assert info["MessageId"].endswith("OperationNotAllowed")
        # a known method and a malformed request line behave as before
        status, _, _ = await raw_request(url, "GET /redfish/v1 HTTP/1.1")
        assert status == 200
        status, _, _ = await raw_request(url, "GET\x01 /redfish/v1 HTTP/1.1")
        assert status == 400
    finally:
        await runner.cleanup()
