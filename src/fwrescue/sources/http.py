"""An HTTP(S) web server as a predetermined location.

``HttpSource`` GETs one package URL — or a URL template with ``{target}`` and
``{machine}`` fields, filled with this machine's values — and streams the body to a
temporary file in the work directory. The size bound is enforced while streaming
(TUF's endless-data attack), a stall timeout bounds a slow server (slow-retrieval
attack), and HTTPS certificates are verified by default (optionally against a
site CA file). The downloaded file is only a candidate: the ladder verifies it.

Every failure is a :class:`fwrescue.errors.SourceError` whose ``reason`` field is
one of ``unreachable``, ``tls``, ``status``, ``too_large``, ``timeout``, ``transfer``,
``storage``; the partial file is removed.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import string
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import aiohttp

from fwrescue.errors import ConfigError, SourceError
from fwrescue.sources.base import Candidate
from fwrescue.sources.directory import DEFAULT_MAX_PACKAGE_BYTES

__all__ = ["DEFAULT_HTTP_TIMEOUT", "DEFAULT_STALL_TIMEOUT", "HttpSource"]

# A 64 MiB package over a slow 10 Mb/s management link takes about a minute.
DEFAULT_HTTP_TIMEOUT = 300.0
# No byte for this long: the server stalled (TUF's slow-retrieval defence).
DEFAULT_STALL_TIMEOUT = 30.0
_READ_BLOCK = 64 * 1024
_MAX_REDIRECTS = 5
_FIELDS = frozenset({"target", "machine"})


class HttpSource:
    """A package at an HTTP(S) URL (or URL template). Candidates are temporary files."""

    def __init__(self, url: str, *, max_bytes: int = DEFAULT_MAX_PACKAGE_BYTES,
                 timeout: float = DEFAULT_HTTP_TIMEOUT,
                 stall_timeout: float = DEFAULT_STALL_TIMEOUT,
                 ca_file: Path | None = None) -> None:
        """Raise ConfigError for a URL that is not http(s) with a host, a template with
        fields other than {target}/{machine}, non-positive limits, or a bad CA file."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("HTTP source needs an http:// or https:// URL with a host",
                              url=url)
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(url) if f is not None}
        except ValueError as e:
            raise ConfigError("malformed URL template", url=url) from e
        if not fields <= _FIELDS:
            raise ConfigError("URL template may only use {target} and {machine}",
                              fields=sorted(fields - _FIELDS))
        if max_bytes <= 0 or not timeout > 0 or not stall_timeout > 0:
            raise ConfigError("HTTP source limits must be positive")
        self.url = url
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._stall = stall_timeout
        self._ssl: ssl.SSLContext | bool = True
        if ca_file is not None:
            try:
                self._ssl = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as e:
                raise ConfigError("cannot load CA file", path=str(ca_file)) from e

    @property
    def name(self) -> str:
        return f"http:{self.url}"

    def url_for(self, target: str, machine_name: str) -> str:
        """The URL with ``{target}`` and ``{machine}`` filled in (percent-encoded)."""
        return self.url.format(target=quote(target, safe=""), machine=quote(machine_name,
                                                                               safe=""))

    async def _fetch(self, url: str, dest: Path) -> int:
        timeout = aiohttp.ClientTimeout(total=self._timeout, sock_read=self._stall,
                                        sock_connect=min(self._timeout, self._stall))
        received = 0
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                url, ssl=self._ssl, max_redirects=_MAX_REDIRECTS) as response:
            if response.status != 200:
                raise SourceError("HTTP source answered with an error status", reason="status",
                                  status=response.status, url=url)
            length = response.content_length
            if length is not None and length > self._max_bytes:
                raise SourceError("HTTP package larger than the limit", reason="too_large",
                                  size=length, limit=self._max_bytes, url=url)
            with open(dest, "wb") as f:
                async for block in response.content.iter_chunked(_READ_BLOCK):
                    received += len(block)
                    if received > self._max_bytes:
                        raise SourceError("HTTP package larger than the limit",
                                          reason="too_large", limit=self._max_bytes, url=url)
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
            if length is not None and received != length:
                raise SourceError("HTTP body shorter than Content-Length",
                                  reason="transfer", received=received, expected=length)
        return received

    async def download(self, url: str, workdir: Path) -> Path:
        """Fetch ``url`` into a new temporary file in ``workdir``; SourceError on failure."""
        try:
            fd, name = tempfile.mkstemp(dir=workdir, prefix=".http-", suffix=".fwpkg")
        except OSError as e:
            raise SourceError("cannot create a download file", reason="storage",
                              detail=str(e)) from e
        os.close(fd)
        dest = Path(name)
        try:
            await self._fetch(url, dest)
        except SourceError:
            dest.unlink(missing_ok=True)
            raise
        except BaseException as e:
            dest.unlink(missing_ok=True)
            translated = self._translate(e, url)
            if translated is e:
                raise
            raise translated from e
        return dest

    @staticmethod
    def _translate(error: BaseException, url: str) -> BaseException:
        if isinstance(error, asyncio.TimeoutError):
            return SourceError("HTTP source timed out", reason="timeout", url=url)
        if isinstance(error, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
            return SourceError("HTTPS certificate or TLS failure", reason="tls", url=url,
                               detail=str(error)[:200])
        if isinstance(error, aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError):
            return SourceError("HTTP source unreachable", reason="unreachable", url=url,
                               detail=str(error)[:200])
        if isinstance(error, aiohttp.TooManyRedirects):
            return SourceError("HTTP source redirects too often", reason="status", url=url)
        if isinstance(error, aiohttp.ClientError):
            return SourceError("HTTP transfer failed", reason="transfer", url=url,
                               detail=str(error)[:200])
        if isinstance(error, OSError):
            return SourceError("cannot store the download", reason="storage",
                               detail=str(error)[:200])
        return error  # cancellation and programming errors pass through unchanged

    async def candidates(self, target: str, machine_name: str,
                         workdir: Path) -> AsyncIterator[Candidate]:
        """Yield the downloaded package once (cleanup=True). SourceError on failure."""
        url = self.url_for(target, machine_name)
        path = await self.download(url, workdir)
        yield Candidate(path=path, origin=f"http:{url}", cleanup=True)
