"""Unknown HTTP methods reach the application, so they get 405 + ``Allow`` (DSP0266 §7.2,
the Redfish-Protocol-Validator's ``PROTO_HTTP_UNSUPPORTED_METHODS`` check).

aiohttp's default request parser is the C one (llhttp), which knows a fixed list of
method names: a request line with any other token (``FAKEMETHODFORTEST``) is refused with
400 before the application sees it. aiohttp also ships a pure-Python parser
(``aiohttp.http_parser.HttpRequestParserPy``, the one it uses under
``AIOHTTP_NO_EXTENSIONS``) that accepts every RFC 9110 method token; the router then
raises ``HTTPMethodNotAllowed`` for a method no route of the resource has, and the error
middleware answers 405 with ``Allow`` like for a known method.

:class:`TokenMethodAppRunner` is an ``AppRunner`` whose connections use that parser —
only for the Redfish service (a management plane with small requests), not process-wide,
so the transfer plane keeps the C parser. The Python parser applies the same limits
(line, field and header counts) as the C one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.http_parser import HttpRequestParserPy
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestHandler, RequestPayloadError
from aiohttp.web_server import Server

__all__ = ["TokenMethodAppRunner"]



class _TokenMethodHandler(RequestHandler):
    """A connection handler parsing requests with aiohttp's Python parser (module doc)."""

    def __init__(self, manager: Server, *, loop: asyncio.AbstractEventLoop,
                 auto_decompress: bool = True, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, auto_decompress=auto_decompress, **kwargs)
        self._parser = HttpRequestParserPy(
            self, loop, self._read_bufsize, max_line_size=self.max_line_size,
            max_field_size=self.max_field_size, max_headers=self.max_headers,
            payload_exception=RequestPayloadError, auto_decompress=auto_decompress,
            max_msg_queue_size=MAX_MSG_QUEUE_SIZE)


class _TokenMethodServer(Server):
    def __call__(self) -> RequestHandler:
        return _TokenMethodHandler(self, loop=self._loop, **self._kwargs)


class TokenMethodAppRunner(web.AppRunner):
    """``web.AppRunner`` for the Redfish app: any method token reaches the router."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        # Application._make_handler builds a plain Server; same state, our factory.
        server.__class__ = _TokenMethodServer
        return server
