"""The donor side: content-addressed HTTP for signed manifests and images (aiohttp).

Endpoints (every digest is 64 lowercase hex digits, else 400):

``GET /manifests/{digest}``
    The signed manifest envelope exactly as stored.
``GET|HEAD /images/{sha256}``
    The raw image. One ``Range: bytes=a-b`` / ``a-`` / ``-n`` gives 206 with
    ``Content-Range``; an unsatisfiable, malformed or multi-range ``bytes`` range gives
    416 with ``Content-Range: bytes */size``; a range in another unit is ignored
    (RFC 9110 §14.2) and the whole image is sent.

Every request carries ``Authorization: Bearer <token>`` checked by the
:class:`~fwrescue.transfer.tokens.TokenRegistry` (401/403, JSON error body). Checks run
in the order digest shape (400), token (401/403), existence (404), so a token holder
learns nothing about content it was not granted.

Over TLS (``ssl_context``: mutual, see :mod:`fwrescue.trust.transfer_tls`) the client
certificate's node id is the token's holder: a token granted to another node gets 403
(``TokenHolderMismatch``) and stays good for its own node; a client without a fleet-CA
certificate does not complete the handshake.

Admission control: at most ``max_uploads`` image bodies stream at once. With
``queue_wait_s`` > 0 a request that finds every body slot busy waits its turn (first
come, first served) for at most that long, at most ``max_queued`` requests waiting (they
hold no body buffer); beyond that, or after the wait, it gets 503 with ``Retry-After``.
So a donor serves chunk requests from many token holders in turn, limited by its shaped
link, not by how many holders it admitted (upload slot rotation); a busy 503 carries
``X-Fwrescue-Busy: 1`` (the token stays good: ask again in a moment).
``on_load_change(n)`` reports the live count (OFFERs carry it).
An optional rate limit shapes the donor's **total** egress, every upload together (a
100 Mb/s BMC link), with one shared :class:`~fwrescue.transfer.pacing.Pacer`.

Partial donors (``servables``, see :mod:`fwrescue.transfer.partial`): ``GET
/chunks/{sha256}`` answers the have-map (one bit per verified chunk), and an image the
store does not hold is served from a staging only for ranges whose every chunk is
verified here; any other request for it gets 416. Nothing unverified is ever served.
Unpaced bodies go out with zero-copy ``sendfile`` in ``read_block`` pieces; paced ones
(and TLS) are read from the file in ``read_block`` pieces. Memory per upload is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import ssl
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from fwrescue.errors import ConfigError
from fwrescue.transfer.pacing import Pacer
from fwrescue.transfer.tokens import TokenError, TokenRegistry, is_digest
from fwrescue.trust.transfer_identity import peercert_node_ids

if TYPE_CHECKING:
    from fwrescue.transfer.partial import Servable

__all__ = [
    "IMAGE_CATALOG",
    "SERVER_STATE",
    "ImageCatalog",
    "ServerStats",
    "TransferServer",
    "TransferServerSettings",
    "create_transfer_app",
    "parse_range",
]

# Bytes per token are kept for the most recent tokens only, so a long-lived donor's
# bookkeeping stays bounded.
_MAX_TOKEN_STATS = 4096
# A Range header longer than this is not a single range we would serve.
_MAX_RANGE_HEADER = 128
# Reads this small come from the page cache in microseconds: a thread hop would cost more.
_INLINE_READ = 64 * 1024
_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")


class ImageCatalog(Protocol):
    """Where a donor finds content by address. ``None`` means "not held here"."""

    def manifest_bytes(self, digest: str) -> bytes | None: ...

    def image_path(self, sha256: str) -> Path | None: ...


class Servables(Protocol):
    """Where a donor finds which ranges of an image it may serve (complete or partial)."""

    def servable(self, sha256: str) -> Servable | None: ...


@dataclass(frozen=True, kw_only=True)
class TransferServerSettings:
    """Donor limits. ``rate_limit_bps`` is bytes per second for all uploads together
    (None: unpaced)."""

    max_uploads: int = 4
    rate_limit_bps: int | None = None
    retry_after_s: int = 2
    # 256 KiB reads keep a thread-pool hop well below the cost of the bytes moved.
    read_block: int = 256 * 1024
    shutdown_timeout: float = 1.0
    # Upload slot rotation: a request finding every body slot busy waits this long for
    # one (0: 503 at once), at most ``max_queued`` waiting.
    queue_wait_s: float = 0.0
    max_queued: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.max_uploads <= 1024:
            raise ConfigError("max_uploads must be in [1, 1024]", max_uploads=self.max_uploads)
        if not 0 <= self.queue_wait_s <= 60:
            raise ConfigError("queue_wait_s must be in [0, 60]", queue_wait_s=self.queue_wait_s)
        if not 0 <= self.max_queued <= 4096:
            raise ConfigError("max_queued must be in [0, 4096]", max_queued=self.max_queued)
        if self.rate_limit_bps is not None and self.rate_limit_bps < 1024:
            raise ConfigError("rate_limit_bps must be at least 1024",
                              rate_limit_bps=self.rate_limit_bps)
        if not 1 <= self.retry_after_s <= 3600:
            raise ConfigError("retry_after_s must be in [1, 3600]")
        if not 4096 <= self.read_block <= 4 * 1024 * 1024:
            raise ConfigError("read_block must be in [4 KiB, 4 MiB]")
        # aiohttp reads 0 as "no timeout", so a grace period must be positive.
        if not 0 < self.shutdown_timeout <= 60:
            raise ConfigError("shutdown_timeout must be in (0, 60]")


@dataclass(frozen=True)
class ServerStats:
    """A snapshot of what a donor served."""

    active_uploads: int
    peak_uploads: int
    uploads_started: int
    uploads_refused: int
    image_bytes: int
    bytes_by_token: dict[str, int]
    bytes_by_image: dict[str, int] = dataclasses.field(default_factory=dict)


class _State:
    """Live counters of one app; mutated only on its event loop."""

    def __init__(self, on_load_change: Callable[[int], None] | None,
                 pacer: Pacer | None = None) -> None:
        self.on_load_change = on_load_change
        self.pacer = pacer
        self.partial_refused = 0
        self.capped_refused = 0
        self.by_image: dict[str, int] = {}
        self.active = 0
        self.peak = 0
        self.started = 0
        self.refused = 0
        self.queued_total = 0
        self.image_bytes = 0
        # Requests waiting for a body slot, oldest first (upload slot rotation).
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.by_token: OrderedDict[str, int] = OrderedDict()

    def add_bytes(self, token: str, n: int, sha256: str | None = None) -> None:
        self.image_bytes += n
        if sha256 is not None and (sha256 in self.by_image or len(self.by_image) < 4096):
            self.by_image[sha256] = self.by_image.get(sha256, 0) + n
        self.by_token[token] = self.by_token.get(token, 0) + n
        self.by_token.move_to_end(token)
        while len(self.by_token) > _MAX_TOKEN_STATS:
            self.by_token.popitem(last=False)

    def load(self, delta: int) -> None:
        self.active += delta
        self.peak = max(self.peak, self.active)
        if self.on_load_change is not None:
            self.on_load_change(self.active)

    async def acquire_slot(self, settings: TransferServerSettings) -> bool:
        """Take a body slot, waiting in line (FIFO, bounded) when all are busy; False
        when none freed within ``queue_wait_s`` or the line is full."""
        if self.active < settings.max_uploads and not self.waiters:
            self.load(+1)
            return True
        if settings.queue_wait_s <= 0 or len(self.waiters) >= settings.max_queued:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self.queued_total += 1
        try:
            await asyncio.wait_for(asyncio.shield(waiter), settings.queue_wait_s)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():  # handed a slot as time ran out
                self.release_slot(settings)
            return False
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release_slot(settings)
            raise
        finally:
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)
        return True  # release_slot handed us its slot (active unchanged)

    def release_slot(self, settings: TransferServerSettings) -> None:
        """Hand the slot to the oldest waiter still waiting, else free it."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.load(-1)

    def snapshot(self) -> ServerStats:
        return ServerStats(active_uploads=self.active, peak_uploads=self.peak,
                           uploads_started=self.started, uploads_refused=self.refused,
                           image_bytes=self.image_bytes, bytes_by_token=dict(self.by_token),
                           bytes_by_image=dict(self.by_image))


IMAGE_CATALOG = web.AppKey("fwrescue_image_catalog", ImageCatalog)
TOKENS = web.AppKey("fwrescue_tokens", TokenRegistry)
SETTINGS = web.AppKey("fwrescue_transfer_settings", TransferServerSettings)
SERVER_STATE = web.AppKey("fwrescue_transfer_state", _State)
SERVABLES = web.AppKey("fwrescue_servables", Servables)
ADMIT: web.AppKey[Callable[[str, int], bool]] = web.AppKey("fwrescue_admit_image")
#: True: tokens are checked against the TLS client certificate's node id.
PEER_BOUND = web.AppKey("fwrescue_peer_bound", bool)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single byte range against ``size``; return inclusive (first, last).

    None means "send the whole image" (no header, or a unit other than bytes). Raises
    ValueError for a malformed, multi-range or unsatisfiable ``bytes`` range.
    """
    if header is None:
        return None
    header = header.strip()
    if not header.lower().startswith("bytes="):
        return None
    if len(header) > _MAX_RANGE_HEADER:
        raise ValueError("range header too long")
    match = _RANGE.match(header)
    if match is None:
        raise ValueError("only one well-formed byte range is supported")
    first_s, last_s = match.groups()
    if first_s == "":
        if last_s == "" or int(last_s) == 0:
            raise ValueError("empty suffix range")
        if size == 0:  # RFC 9110 §14.1.2: no suffix of an empty representation exists
            raise ValueError("range not satisfiable")
        return max(0, size - int(last_s)), size - 1
    first = int(first_s)
    last = size - 1 if last_s == "" else min(int(last_s), size - 1)
    if first >= size or first > last:
        raise ValueError("range not satisfiable")
    return first, last


def _error(status: int, code: str, message: str,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


def _token_error(e: TokenError) -> web.Response:
    challenge = f'Bearer realm="fwrescue", error="{e.bearer_error}"'
    return _error(e.http_status, e.message_id, e.message, {"WWW-Authenticate": challenge})


def _bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def _holder(request: web.Request) -> str | None:
    """The node id of the TLS client (``""``: its certificate names no single node);
    None when the app is not bound to TLS identities."""
    if not request.app.get(PEER_BOUND, False):
        return None
    transport = request.transport
    peer = transport.get_extra_info("peercert") if transport is not None else None
    ids = peercert_node_ids(peer)
    return ids[0] if len(ids) == 1 else ""


def _authorize(request: web.Request, digest: str) -> str | web.Response:
    """The token if it opens ``digest``, else the error response to send."""
    if not is_digest(digest):
        return _error(400, "Base.1.22.InvalidURI", "digest must be 64 lowercase hex")
    token = _bearer(request)
    try:
        request.app[TOKENS].check(token, sha256_or_digest=digest, holder=_holder(request))
    except TokenError as e:
        return _token_error(e)
    return token or ""  # check() refused None and ""


async def _get_manifest(request: web.Request) -> web.StreamResponse:
    digest = request.match_info["digest"]
    auth = _authorize(request, digest)
    if isinstance(auth, web.Response):
        return auth
    raw = request.app[IMAGE_CATALOG].manifest_bytes(digest)
    if raw is None:
        return _error(404, "Base.1.22.ResourceNotFound", "no such manifest")
    return web.Response(body=raw, content_type="application/json",
                        headers={"ETag": f'"{digest}"', "Cache-Control": "no-store"})


async def _image(request: web.Request) -> web.StreamResponse:
    sha256 = request.match_info["sha256"]
    auth = _authorize(request, sha256)
    if isinstance(auth, web.Response):
        return auth
    token = auth
    path = request.app[IMAGE_CATALOG].image_path(sha256)
    partial: Servable | None = None
    if path is None:
        partial = _servable(request, sha256)
        if partial is None:
            return _error(404, "Base.1.22.ResourceNotFound", "no such image")
        refusal = _partial_refusal(request, partial)
        if refusal is not None:
            return refusal
        path = partial.path
    loop = asyncio.get_running_loop()
    try:
        fd = await loop.run_in_executor(None, os.open, path, os.O_RDONLY)
    except OSError:
        return _error(404, "Base.1.22.ResourceNotFound", "image not readable")
    try:
        size = os.fstat(fd).st_size
        return await _send_image(request, fd, size, sha256, token)
    finally:
        os.close(fd)


def _servable(request: web.Request, sha256: str) -> Servable | None:
    servables = request.app.get(SERVABLES)
    return servables.servable(sha256) if servables is not None else None


def _partial_refusal(request: web.Request, partial: Servable) -> web.Response | None:
    """416 unless the asked range lies wholly in chunks verified here (whole image: all)."""
    size = partial.size
    try:
        span = parse_range(request.headers.get("Range"), size)
    except ValueError:
        return None  # _send_image answers a malformed range with its own 416
    first, last = span if span is not None else (0, size - 1)
    if partial.covers(first, last):
        return None
    request.app[SERVER_STATE].partial_refused += 1
    return _error(416, "Base.1.22.PropertyValueOutOfRange",
                  "range touches chunks not verified on this donor",
                  {"Content-Range": f"bytes */{size}"})


async def _chunks(request: web.Request) -> web.StreamResponse:
    """The have-map of an image: one bit per chunk, MSB first, set iff verified here."""
    sha256 = request.match_info["sha256"]
    auth = _authorize(request, sha256)
    if isinstance(auth, web.Response):
        return auth
    servable = _servable(request, sha256)
    if servable is None:
        return _error(404, "Base.1.22.ResourceNotFound", "no such image")
    return web.Response(body=servable.have_bitmap(), content_type="application/octet-stream",
                        headers={"Cache-Control": "no-store",
                                 "X-Complete": "1" if servable.complete else "0"})


async def _send_image(request: web.Request, fd: int, size: int, sha256: str,
                      token: str) -> web.StreamResponse:
    try:
        span = parse_range(request.headers.get("Range"), size)
    except ValueError as e:
        return _error(416, "Base.1.22.PropertyValueOutOfRange", str(e),
                      {"Content-Range": f"bytes */{size}"})
    first, last = span if span is not None else (0, size - 1)
    headers = {"Accept-Ranges": "bytes", "ETag": f'"{sha256}"', "Cache-Control": "no-store",
               "Content-Type": "application/octet-stream"}
    resp = web.StreamResponse(status=200 if span is None else 206, headers=headers)
    if span is not None:
        resp.headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    resp.content_length = last - first + 1
    if request.method == "HEAD":
        await resp.prepare(request)
        return resp
    state = request.app[SERVER_STATE]
    settings = request.app[SETTINGS]
    admit = request.app.get(ADMIT)
    if admit is not None and not admit(sha256, last - first + 1):
        state.capped_refused += 1
        return _error(503, "Base.1.22.ServiceTemporarilyUnavailable",
                      "this donor no longer serves this image: peers can",
                      {"Retry-After": str(settings.retry_after_s)})
    if not await state.acquire_slot(settings):
        state.refused += 1
        # X-Fwrescue-Busy: the token stays good, ask again in a moment (slot rotation).
        return _error(503, "Base.1.22.ServiceTemporarilyUnavailable", "donor is busy",
                      {"Retry-After": str(settings.retry_after_s), "X-Fwrescue-Busy": "1"})
    state.started += 1
    try:
        await resp.prepare(request)
        await _stream(request, resp, fd, first, last, token, sha256)
        await resp.write_eof()
    except ConnectionResetError:
        # The recipient went away (it had what it needed, or gave up): nothing to answer.
        if request.transport is not None:
            request.transport.close()
    finally:
        state.release_slot(settings)
    return resp


async def _stream(request: web.Request, resp: web.StreamResponse, fd: int, first: int,
                  last: int, token: str, sha256: str | None = None) -> None:
    settings = request.app[SETTINGS]
    state = request.app[SERVER_STATE]
    loop = asyncio.get_running_loop()
    pacer = state.pacer
    offset, end = first, last + 1
    transport = request.transport
    if pacer is None and (transport is None or transport.get_extra_info("sslcontext") is None):
        # zero-copy only on a plain socket: TLS encrypts in user space
        offset = await _sendfile(request, fd, offset, end, token, sha256)
    rate = pacer.rate_bps if pacer is not None else 0
    block = settings.read_block if pacer is None else max(4096, min(settings.read_block,
                                                                    rate // 20))
    while offset < end:
        length = min(block, end - offset)
        if pacer is not None:  # the link's shared budget: every upload of this donor
            await pacer.pace(length)
        data = (os.pread(fd, length, offset) if length <= _INLINE_READ
                else await loop.run_in_executor(None, os.pread, fd, length, offset))
        if not data:
            # The file shrank under us: never pad; abort so the client sees a short body.
            raise ConnectionResetError("image file shorter than announced")
        await resp.write(data)
        offset += len(data)
        state.add_bytes(token, len(data), sha256)


async def _sendfile(request: web.Request, fd: int, offset: int, end: int, token: str,
                    sha256: str | None = None) -> int:
    """Send ``[offset, end)`` of ``fd`` with zero-copy ``sendfile`` in ``read_block``
    pieces (so ``bytes_by_token`` moves as the body does) and return the offset reached:
    ``end``, or less when the transport cannot sendfile (TLS) and the caller streams
    the rest. A file shorter than announced aborts the upload, as in the copy loop."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    state = request.app[SERVER_STATE]
    piece_size = request.app[SETTINGS].read_block
    loop = asyncio.get_running_loop()
    with os.fdopen(fd, "rb", buffering=0, closefd=False) as file:
        while offset < end:
            piece = min(piece_size, end - offset)
            # Counted when handed over, as the copy loop counts a buffered write: the
            # peer may have read the piece before this coroutine resumes.
            state.add_bytes(token, piece, sha256)
            try:
                sent = await loop.sendfile(transport, file, offset, piece, fallback=False)
            except NotImplementedError:
                state.add_bytes(token, -piece, sha256)
                return offset
            except BaseException:
                state.add_bytes(token, -piece, sha256)
                raise
            if sent < piece:
                state.add_bytes(token, sent - piece, sha256)
                raise ConnectionResetError("image file shorter than announced")
            offset += sent
    return offset


def create_transfer_app(
    catalog: ImageCatalog,
    tokens: TokenRegistry,
    settings: TransferServerSettings | None = None,
    *,
    on_load_change: Callable[[int], None] | None = None,
    servables: Servables | None = None,
    admit_image: Callable[[str, int], bool] | None = None,
    peer_bound: bool = False,
) -> web.Application:
    """Build the donor's transfer application (no global state). With ``servables`` it
    also answers ``/chunks/{sha256}`` and serves partial images (see the module doc).
    ``admit_image(sha256, length)`` is asked before each image body: False → 503.
    ``peer_bound``: served over mutual TLS; tokens open only for their recipient."""
    app = web.Application(client_max_size=1024)  # requests carry no body
    app[IMAGE_CATALOG] = catalog
    app[TOKENS] = tokens
    app[PEER_BOUND] = peer_bound
    settings = app[SETTINGS] = settings or TransferServerSettings()
    rate = settings.rate_limit_bps
    app[SERVER_STATE] = _State(on_load_change, Pacer(rate) if rate is not None else None)
    if servables is not None:
        app[SERVABLES] = servables
    if admit_image is not None:  # e.g. a console that stops serving what peers can
        app[ADMIT] = admit_image
    app.router.add_get("/manifests/{digest}", _get_manifest, allow_head=False)
    app.router.add_get("/images/{sha256}", _image, allow_head=True)
    app.router.add_get("/chunks/{sha256}", _chunks, allow_head=False)
    return app


class TransferServer:
    """The transfer app bound to a TCP port; HTTPS with a client-certificate-demanding
    ``ssl_context`` (then tokens are bound to the client's node id)."""

    def __init__(
        self,
        catalog: ImageCatalog,
        tokens: TokenRegistry,
        settings: TransferServerSettings | None = None,
        *,
        on_load_change: Callable[[int], None] | None = None,
        servables: Servables | None = None,
        admit_image: Callable[[str, int], bool] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings or TransferServerSettings()
        if ssl_context is not None and ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ConfigError("a transfer server's TLS context must require client "
                              "certificates")
        self._ssl = ssl_context
        self.app = create_transfer_app(catalog, tokens, self.settings,
                                       on_load_change=on_load_change, servables=servables,
                                       admit_image=admit_image,
                                       peer_bound=ssl_context is not None)
        self._runner: web.AppRunner | None = None

    @property
    def stats(self) -> ServerStats:
        return self.app[SERVER_STATE].snapshot()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port) and return the base URL."""
        if self._runner is not None:
            raise ConfigError("transfer server already started")
        runner = web.AppRunner(self.app, access_log=None,
                               shutdown_timeout=self.settings.shutdown_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=self._ssl)
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise ConfigError("cannot listen for transfers", host=host, port=port,
                              detail=str(e)) from e
        self._runner = runner
        bound = runner.addresses[0]
        bound_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{bound_host}:{bound[1]}"

    async def stop(self) -> None:
        """Stop listening; in-flight uploads get ``shutdown_timeout`` then are cut."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
