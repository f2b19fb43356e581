"""The recipient side: fetch a manifest and the missing chunks of an image from one donor.

Donors are untrusted carriers. Every length read is bounded by what was asked
(manifest: ``max_bytes``; image: the byte range of the requested chunks), every
read has a stall timeout (TUF slow-retrieval), and an optional minimum throughput
(Uptane's download-speed check) drops a donor that trickles. Each chunk is checked
by ``Verifier.verify_chunk`` as soon as its last byte arrives; only then is it
written and marked in the staging map, so a donor that dies or lies costs at most
the chunk in flight.

Errors: ``DonorUnavailable`` (refused, busy, gone, stalled, too slow — resume with
another donor), ``TransferError`` (a donor broke HTTP: wrong status, wrong range,
wrong length), ``ChunkMismatch`` (a chunk failed its signed digest — DECLINE this
donor), ``SizeLimitExceeded`` (a manifest over its limit), ``StagingError`` (local
storage). Foreign exceptions are translated at this seam with ``from e``; errors
raised by :meth:`ImageFetcher.fetch_image` carry the partial :class:`FetchStats` in
``fields["stats"]``.

Over TLS (``require_tls``: the session's connector holds the fleet's client context,
:func:`fwrescue.trust.transfer_tls.client_context`) every request names the donor it
expects (``donor_id``, from the OFFER/ACK): a donor URL that is not ``https`` is refused
before any byte is sent, and the handshake fails unless the donor's certificate chains
to the fleet CA and names that node (``server_hostname`` =
:func:`~fwrescue.trust.transfer_identity.transfer_hostname`). Both are
``DonorUnavailable``. aiohttp pools connections per donor identity, so a donor costs one
handshake however many ranges are fetched from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from fwrescue.errors import (
    ConfigError,
    DonorUnavailable,
    FwRescueError,
    SizeLimitExceeded,
    TransferError,
)
from fwrescue.transfer.havemap import decode_have_map, have_map_length
from fwrescue.transfer.pacing import Pacer
from fwrescue.transfer.staging import StagedImage, StagingError
from fwrescue.transfer.tokens import TokenError, is_digest, validate_token
from fwrescue.trust.manifest import MAX_MANIFEST_BYTES
from fwrescue.trust.transfer_identity import transfer_hostname
from fwrescue.trust.verifier import VerifiedManifest, Verifier

__all__ = ["ChunkCheck", "FetchStats", "ImageFetcher", "TransferLimits"]

_CONTENT_RANGE = re.compile(r"^bytes (\d{1,19})-(\d{1,19})/(\d{1,19})$")
#: The signature of ``Verifier.verify_chunk``; injectable so tests can observe buffers.
ChunkCheck = Callable[[VerifiedManifest, int, bytes], None]


@dataclass(frozen=True, kw_only=True)
class TransferLimits:
    """Bounds on one donor's behaviour, in seconds and bytes."""

    connect_timeout: float = 5.0
    # No byte for this long and the donor is gone; 10 s is generous for a BMC link
    # that moves 12 MB/s and short enough to move on before a lease ends.
    stall_timeout: float = 10.0
    max_manifest_bytes: int = MAX_MANIFEST_BYTES
    # Bytes/s floor per request, checked once ``throughput_window`` has passed (None: off).
    # A trickling donor (a byte every few seconds) never trips the stall timeout; without
    # a floor it would hold a recipient until the fetch deadline. 32 KiB/s is 1/400 of a
    # BMC's 100 Mb/s NC-SI link and 1/100 of one upload's share of it (4 uploads), yet
    # still moves a 16 MiB image within the 900 s fetch deadline (docs/transfer.md).
    min_throughput_bps: int | None = 32 * 1024
    throughput_window: float = 10.0
    # Largest single read from the socket; chunk buffers are bounded by the chunk size.
    read_block: int = 256 * 1024

    def __post_init__(self) -> None:
        if not 0 < self.connect_timeout <= 300 or not 0 < self.stall_timeout <= 300:
            raise ConfigError("transfer timeouts must be in (0, 300] seconds")
        if not 0 < self.max_manifest_bytes <= MAX_MANIFEST_BYTES:
            raise ConfigError("max_manifest_bytes out of range",
                              max_manifest_bytes=self.max_manifest_bytes)
        if self.min_throughput_bps is not None and self.min_throughput_bps <= 0:
            raise ConfigError("min_throughput_bps must be positive")
        if not 0 < self.throughput_window <= 3600:
            raise ConfigError("throughput_window must be in (0, 3600] seconds")
        if not 4096 <= self.read_block <= 4 * 1024 * 1024:
            raise ConfigError("read_block must be in [4 KiB, 4 MiB]")


@dataclass(frozen=True)
class FetchStats:
    """What one ``fetch_image`` call moved.

    ``chunks_refetched`` counts chunks whose bytes arrived in this call after bytes of
    them had already arrived earlier in the staging's life (the chunk in flight when a
    donor died, or a chunk that failed verification).
    """

    bytes_received: int
    chunks_fetched: int
    chunks_refetched: int
    requests: int
    seconds: float


@dataclass
class _Counters:
    bytes_received: int = 0
    chunks_fetched: int = 0
    chunks_refetched: int = 0
    requests: int = 0
    done: int = 0

    def freeze(self, seconds: float) -> FetchStats:
        return FetchStats(self.bytes_received, self.chunks_fetched, self.chunks_refetched,
                          self.requests, seconds)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Contiguous inclusive runs of ascending indices: [1,2,3,7] -> [(1,3),(7,7)]."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _endpoint(base_url: str, kind: str, digest: str) -> URL:
    """``base_url/kind/digest``; TransferError if the donor-supplied parts are malformed."""
    if not is_digest(digest):
        raise TransferError("digest must be 64 lowercase hex digits")
    try:
        base = URL(base_url)
    except (TypeError, ValueError) as e:
        raise TransferError("malformed donor endpoint", detail=str(e)) from e
    if (base.scheme not in ("http", "https") or not base.host or base.user is not None
            or base.query_string or base.fragment):
        raise TransferError("donor endpoint must be a plain http(s) URL", url=base_url)
    return base.with_path(f"{base.path.rstrip('/')}/{kind}/{digest}")


# Set to "1" by a donor's 503 when every upload slot is busy (upload slot rotation).
BUSY_HEADER = "X-Fwrescue-Busy"


def _refusal(resp: aiohttp.ClientResponse, what: str) -> TransferError:
    """The error for a non-success status."""
    status = resp.status
    if status in (401, 403, 404, 410, 503):
        # busy: every upload slot of the donor is taken right now (it chokes us for a
        # moment; the token stays good), as opposed to a refusal that lasts.
        return DonorUnavailable(f"donor refused the {what}", status=status,
                                retry_after=resp.headers.get("Retry-After"),
                                busy=status == 503 and resp.headers.get(BUSY_HEADER) == "1")
    return TransferError(f"donor answered the {what} request with an unexpected status",
                         status=status)


def _tls_refused(e: aiohttp.ClientSSLError) -> DonorUnavailable:
    """The donor's certificate does not chain to the fleet CA or names another node, or
    it refused ours."""
    return DonorUnavailable("TLS handshake with the donor failed (certificate not from "
                            "the fleet CA, or another node's)", detail=repr(e)[:300])


class _ChunkSink:
    """Takes complete chunks from the network: verify, write, mark, report, in that
    order, on the event loop (a worker-thread pipeline was measured slower: a hop per
    chunk plus GIL hand-offs cost more than the SHA-256 it would overlap). Only the
    chunk being received is buffered. Durability syncs run in a worker thread.

    A chunk is recorded as *received* (map state 1) only when its bytes are abandoned:
    the donor failed mid-chunk or the chunk failed its digest. That is all the state is
    for (``chunks_refetched``), and it spares the hot path a map write per chunk."""

    def __init__(self, verified: VerifiedManifest, staged: StagedImage, check: ChunkCheck,
                 progress: Callable[[int, int], None] | None, *, done: int) -> None:
        self.verified = verified
        self.staged = staged
        self.counters = _Counters(done=done)
        self._check = check
        self._progress = progress
        self._size = verified.manifest.size
        self._sync: asyncio.Future[None] | None = None
        self._in_flight: int | None = None

    def begin(self, index: int) -> None:
        """The first bytes of chunk ``index`` arrived."""
        if self.staged.was_fetched(index):
            self.counters.chunks_refetched += 1
        self._in_flight = index

    def put(self, index: int, data: bytes) -> None:
        """Raise ChunkMismatch (nothing written or marked) unless ``data`` verifies."""
        self._check(self.verified, index, data)
        staged = self.staged
        staged.write_chunk(index, data)
        staged.mark_verified(index)
        self._in_flight = None
        counters = self.counters
        counters.chunks_fetched += 1
        counters.done += len(data)
        if self._progress is not None:
            self._progress(counters.done, self._size)
        if staged.sync_due and (self._sync is None or self._sync.done()):
            previous = self._sync
            if previous is not None:
                previous.result()  # a failed sync is a StagingError now, not later
            self._sync = asyncio.get_running_loop().run_in_executor(None, self._background)

    def _background(self) -> None:
        """Worker thread: make the verified data durable, then extend the whole-image
        digest over the verified prefix so ``finalize`` has little left to hash."""
        self.staged.sync()
        self.staged.digest_ahead()

    def abandon(self) -> None:
        """Record the chunk in flight as received-but-unverified (see the class doc)."""
        index, self._in_flight = self._in_flight, None
        if index is not None:
            self.staged.begin_chunk(index)

    async def close(self) -> None:
        """Wait for a background sync, so no thread touches the staging afterwards."""
        sync, self._sync = self._sync, None
        if sync is not None:
            await sync


class ImageFetcher:
    """Fetches manifests and images from donors over an injected aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        limits: TransferLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        verify_chunk: ChunkCheck = Verifier.verify_chunk,
        ingress: Pacer | None = None,
        require_tls: bool = False,
    ) -> None:
        self._session = session
        self.require_tls = require_tls
        self._ingress = ingress
        self.limits = limits or TransferLimits()
        self._clock = clock
        self._verify_chunk = verify_chunk
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=self.limits.connect_timeout,
            sock_connect=self.limits.connect_timeout, sock_read=self.limits.stall_timeout)

    def _tls(self, base_url: str, donor_id: str | None) -> str | None:
        """The TLS ``server_hostname`` naming the expected donor (None: plain HTTP);
        DonorUnavailable for a plain endpoint when TLS is required."""
        if not self.require_tls:
            return None
        if not base_url.lower().startswith("https://"):
            raise DonorUnavailable("donor offers plain HTTP; this fleet transfers over TLS",
                                   donor=donor_id, url=base_url[:200])
        if donor_id is None:
            raise TransferError("a TLS transfer needs the expected donor id")
        return transfer_hostname(donor_id)

    def _headers(self, token: str) -> dict[str, str]:
        try:
            validate_token(token)
        except TokenError as e:
            raise TransferError("malformed transfer token from donor") from e
        return {"Authorization": f"Bearer {token}"}

    # --- manifests --------------------------------------------------------------------------

    async def fetch_manifest(self, base_url: str, digest: str, token: str, *,
                             max_bytes: int | None = None,
                             donor_id: str | None = None) -> bytes:
        """The raw envelope at ``base_url/manifests/digest``, at most ``max_bytes``.

        Reading stops as soon as the limit is passed (SizeLimitExceeded). The caller
        then runs ``Verifier.verify_manifest(raw, ..., expected_digest=digest)``.
        """
        limit = self.limits.max_manifest_bytes if max_bytes is None else max_bytes
        url = _endpoint(base_url, "manifests", digest)
        headers = self._headers(token)
        tls = self._tls(base_url, donor_id)
        try:
            async with self._session.get(url, headers=headers, timeout=self._timeout,
                                         allow_redirects=False, server_hostname=tls) as resp:
                if resp.status != 200:
                    raise _refusal(resp, "manifest")
                if resp.content_length is not None and resp.content_length > limit:
                    raise SizeLimitExceeded("manifest larger than allowed",
                                            size=resp.content_length, limit=limit)
                body = bytearray()
                while True:
                    block = await resp.content.read(min(self.limits.read_block,
                                                        limit + 1 - len(body)))
                    if not block:
                        break
                    body += block
                    if len(body) > limit:
                        raise SizeLimitExceeded("manifest larger than allowed", limit=limit)
                return bytes(body)
        except aiohttp.ClientSSLError as e:
            raise _tls_refused(e) from e
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError,
                ConnectionError) as e:
            raise DonorUnavailable("donor lost while sending the manifest",
                                   detail=repr(e)) from e
        except aiohttp.ClientError as e:
            raise TransferError("manifest request failed", detail=repr(e)) from e

    # --- images -----------------------------------------------------------------------------

    async def fetch_image(
        self,
        base_url: str,
        token: str,
        verified: VerifiedManifest,
        staged: StagedImage,
        progress: Callable[[int, int], None] | None = None,
        *,
        donor_id: str | None = None,
    ) -> FetchStats:
        """Fetch every chunk ``staged`` is missing, one Range request per contiguous run.

        Each chunk is verified, written and marked as it completes; on any error the
        verified chunks stay verified and the error carries ``fields["stats"]``.
        """
        manifest = verified.manifest
        if staged.sha256 != manifest.sha256 or staged.size != manifest.size:
            raise ConfigError("staged image does not match the manifest")
        url = _endpoint(base_url, "images", manifest.sha256)
        headers = self._headers(token)
        tls = self._tls(base_url, donor_id)
        started = self._clock()
        missing = staged.missing()
        sink = _ChunkSink(verified, staged, self._verify_chunk, progress,
                          done=manifest.size - sum(manifest.chunk_span(i)[1] for i in missing))
        try:
            try:
                for first, last in _runs(missing):
                    await self._fetch_run(url, headers, sink, first, last, tls)
            except BaseException:
                with contextlib.suppress(StagingError):  # bookkeeping; the cause wins
                    sink.abandon()
                raise
            finally:
                await sink.close()
        except FwRescueError as e:
            e.fields.setdefault("stats", sink.counters.freeze(self._clock() - started))
            raise
        return sink.counters.freeze(self._clock() - started)

    async def _fetch_run(self, url: URL, headers: dict[str, str], sink: _ChunkSink,
                         first: int, last: int, tls: str | None) -> None:
        manifest = sink.verified.manifest
        start = manifest.chunk_span(first)[0]
        last_offset, last_length = manifest.chunk_span(last)
        end = last_offset + last_length  # exclusive
        request_headers = dict(headers, Range=f"bytes={start}-{end - 1}")
        sink.counters.requests += 1
        try:
            async with self._session.get(url, headers=request_headers, timeout=self._timeout,
                                         allow_redirects=False, server_hostname=tls) as resp:
                self._check_image_response(resp, start, end, manifest.size)
                request_started = self._clock()
                read = resp.content.read
                read_block = self.limits.read_block
                counters = sink.counters
                received = 0
                for index in range(first, last + 1):
                    length = manifest.chunk_span(index)[1]
                    parts: list[bytes] = []
                    got = 0
                    while got < length:
                        block = await read(min(length - got, read_block))
                        if not block:
                            raise DonorUnavailable("donor ended the image early",
                                                   chunk=index, expected=end - start,
                                                   received=received)
                        if got == 0:
                            sink.begin(index)
                        parts.append(block)
                        got += len(block)
                        received += len(block)
                        counters.bytes_received += len(block)
                        if self._ingress is not None:
                            await self._ingress.pace(len(block))
                        self._check_throughput(received, request_started)
                    sink.put(index, parts[0] if len(parts) == 1 else b"".join(parts))
                    del parts
                if not resp.content.at_eof():
                    resp.close()  # never read past what was asked; drop the connection
        except aiohttp.ClientSSLError as e:
            raise _tls_refused(e) from e
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError,
                ConnectionError) as e:
            raise DonorUnavailable("donor lost mid-transfer", detail=repr(e)) from e
        except aiohttp.ClientError as e:
            raise TransferError("image request failed", detail=repr(e)) from e

    # --- swarming: one run of chunks, and a donor's have-map --------------------------------

    async def fetch_have_map(self, base_url: str, token: str,
                             verified: VerifiedManifest, *,
                             donor_id: str | None = None) -> list[int]:
        """The chunk indices the donor at ``base_url`` holds verified (``GET /chunks``).

        Raises DonorUnavailable (refused, gone) or TransferError (a body that is not
        exactly this image's have-map)."""
        manifest = verified.manifest
        url = _endpoint(base_url, "chunks", manifest.sha256)
        limit = have_map_length(manifest.chunk_count)
        tls = self._tls(base_url, donor_id)
        try:
            async with self._session.get(url, headers=self._headers(token),
                                         timeout=self._timeout, allow_redirects=False,
                                         server_hostname=tls) as resp:
                if resp.status != 200:
                    raise _refusal(resp, "have-map")
                if resp.content_length is not None and resp.content_length != limit:
                    raise TransferError("have-map has the wrong length",
                                        length=resp.content_length, expected=limit)
                body = await resp.content.read(limit + 1)
        except aiohttp.ClientSSLError as e:
            raise _tls_refused(e) from e
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError,
                ConnectionError) as e:
            raise DonorUnavailable("donor lost while sending its have-map",
                                   detail=repr(e)) from e
        except aiohttp.ClientError as e:
            raise TransferError("have-map request failed", detail=repr(e)) from e
        return decode_have_map(body, manifest.chunk_count)

    async def fetch_chunks(self, base_url: str, token: str, verified: VerifiedManifest,
                           first: int, last: int,
                           deliver: Callable[[int, bytes], None],
                           on_bytes: Callable[[int], None] | None = None, *,
                           donor_id: str | None = None) -> int:
        """One Range request for chunks ``first..last``; ``deliver(index, data)`` gets
        each chunk as it completes, **unverified** (the caller verifies before keeping
        it, and raises to abort). Returns the body bytes read. Errors as
        :meth:`fetch_image` (a 416, a wrong range or length is a TransferError)."""
        manifest = verified.manifest
        start = manifest.chunk_span(first)[0]
        last_offset, last_length = manifest.chunk_span(last)
        end = last_offset + last_length
        url = _endpoint(base_url, "images", manifest.sha256)
        headers = dict(self._headers(token), Range=f"bytes={start}-{end - 1}")
        tls = self._tls(base_url, donor_id)
        ingress = self._ingress
        received = 0
        try:
            async with self._session.get(url, headers=headers, timeout=self._timeout,
                                         allow_redirects=False, server_hostname=tls) as resp:
                self._check_image_response(resp, start, end, manifest.size)
                request_started = self._clock()
                read = resp.content.read
                for index in range(first, last + 1):
                    length = manifest.chunk_span(index)[1]
                    parts: list[bytes] = []
                    got = 0
                    while got < length:
                        block = await read(min(length - got, self.limits.read_block))
                        if not block:
                            raise DonorUnavailable("donor ended the range early", chunk=index,
                                                   expected=end - start, received=received)
                        parts.append(block)
                        got += len(block)
                        received += len(block)
                        if on_bytes is not None:
                            on_bytes(len(block))
                        if ingress is not None:  # this BMC's link, shared by its downloads
                            await ingress.pace(len(block))
                        self._check_throughput(received, request_started)
                    deliver(index, parts[0] if len(parts) == 1 else b"".join(parts))
                    del parts
                if not resp.content.at_eof():
                    resp.close()
        except aiohttp.ClientSSLError as e:
            raise _tls_refused(e) from e
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError,
                ConnectionError) as e:
            raise DonorUnavailable("donor lost mid-range", detail=repr(e)) from e
        except aiohttp.ClientError as e:
            raise TransferError("range request failed", detail=repr(e)) from e
        return received

    def _check_image_response(self, resp: aiohttp.ClientResponse, start: int, end: int,
                              size: int) -> None:
        """The response must carry exactly the asked range of an image of ``size`` bytes."""
        if resp.status == 200 and start == 0 and end == size:
            pass  # a donor may ignore Range when the whole image was asked for
        elif resp.status == 206:
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if match is None or tuple(int(g) for g in match.groups()) != (start, end - 1,
                                                                           size):
                raise TransferError("donor sent another range than asked",
                                    content_range=resp.headers.get("Content-Range"),
                                    asked=f"{start}-{end - 1}/{size}")
        elif resp.status in (200, 416):
            raise TransferError("donor does not serve the asked range of this image",
                                status=resp.status)
        else:
            raise _refusal(resp, "image")
        length = resp.content_length
        if length is not None and length != end - start:
            # An over-long body is an endless-data attempt: cut off before reading it.
            raise TransferError("donor announced another length than asked",
                                content_length=length, asked=end - start)

    def _check_throughput(self, received: int, since: float) -> None:
        floor = self.limits.min_throughput_bps
        if floor is None:
            return
        elapsed = self._clock() - since
        if elapsed >= self.limits.throughput_window and received < floor * elapsed:
            raise DonorUnavailable("donor is slower than the minimum throughput",
                                   bytes_per_s=int(received / elapsed), floor=floor)
