"""Bounded streaming of update packages to disk: multipart pushes and ImageURI downloads.

Nothing is held whole in memory: bytes go to a fresh file in ``upload_dir`` as they arrive,
the running total is checked against ``max_image_size`` before each write, and any failure
deletes the partial file before the error propagates.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import aiohttp
from aiohttp import BodyPartReader, MultipartReader

from fwrescue.errors import SizeLimitExceeded, TransferError
from fwrescue.redfish.backend import APPLY_TIMES, ApplyTime
from fwrescue.redfish.messages import RequestError

__all__ = [
    "TRANSFER_PROTOCOLS",
    "UpdateRequest",
    "check_image_uri",
    "download_image",
    "parse_update_parameters",
    "receive_multipart",
    "stream_to_file",
]

TRANSFER_PROTOCOLS = ("HTTP", "HTTPS")
_CHUNK = 64 * 1024
# Parts of a multipart push other than the image are small JSON documents.
_MAX_PARAM_PART = 16 * 1024
_MAX_PARTS = 4


@dataclass(frozen=True)
class UpdateRequest:
    """What an update asks for, validated."""

    targets: list[str] | None
    apply_time: ApplyTime
    force: bool


def _new_path(upload_dir: Path) -> Path:
    upload_dir.mkdir(parents=True, exist_ok=True)
    return upload_dir / f"upload-{secrets.token_hex(8)}.pkg"


async def stream_to_file(chunks: AsyncIterator[bytes], upload_dir: Path, limit: int) -> Path:
    """Write ``chunks`` to a new file; raise ``SizeLimitExceeded`` once past ``limit``.

    The partial file is removed on every error (including cancellation).
    """
    path = _new_path(upload_dir)
    total = 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            async for chunk in chunks:
                total += len(chunk)
                if total > limit:
                    raise SizeLimitExceeded("update package exceeds MaxImageSizeBytes", limit=limit)
                out.write(chunk)
        if total == 0:
            raise RequestError(
                400, "Base.1.22.ActionParameterMissing", "SimpleUpdate", "UpdateFile"
            )
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    return path


def parse_update_parameters(
    params: object, *, action: str, allow_image_uri: bool
) -> tuple[UpdateRequest, dict[str, Any]]:
    """Validate SimpleUpdate / UpdateParameters JSON. Returns the request and the leftovers
    (``ImageURI``, ``TransferProtocol`` for SimpleUpdate). Raises 400 ``RequestError``."""
    if not isinstance(params, dict):
        raise RequestError(400, "Base.1.22.MalformedJSON")
    known = {"Targets", "@Redfish.OperationApplyTime", "ForceUpdate"}
    if allow_image_uri:
        known |= {"ImageURI", "TransferProtocol", "Username", "Password"}
    for key in params:
        if key not in known:
            raise RequestError(400, "Base.1.22.ActionParameterUnknown", action, str(key))
    targets_raw = params.get("Targets")
    targets: list[str] | None = None
    if targets_raw is not None:
        if not isinstance(targets_raw, list) or not all(isinstance(t, str) for t in targets_raw):
            raise RequestError(
                400,
                "Base.1.22.ActionParameterValueTypeError",
                json.dumps(targets_raw)[:128],
                "Targets",
                action,
            )
        if len(targets_raw) > 16:
            raise RequestError(400, "Base.1.22.ActionParameterValueError", "Targets", action)
        targets = [_target_name(t, action) for t in targets_raw] or None
    apply_time = params.get("@Redfish.OperationApplyTime", "Immediate")
    if apply_time not in APPLY_TIMES:
        raise RequestError(
            400,
            "Base.1.22.ActionParameterValueNotInList",
            str(apply_time)[:64],
            "@Redfish.OperationApplyTime",
            action,
        )
    force = params.get("ForceUpdate", False)
    if not isinstance(force, bool):
        raise RequestError(
            400,
            "Base.1.22.ActionParameterValueTypeError",
            json.dumps(force)[:64],
            "ForceUpdate",
            action,
        )
    rest = {k: params[k] for k in ("ImageURI", "TransferProtocol") if k in params}
    return UpdateRequest(targets, apply_time, force), rest


def _target_name(value: str, action: str) -> str:
    """Targets are URIs of FirmwareInventory members (``…/FirmwareInventory/bios``) or bare
    target names; return the target name."""
    name = value.rstrip("/").rsplit("/", 1)[-1]
    if (
        not name
        or len(name) > 64
        or ("/" in value and "/FirmwareInventory/" not in value and "/Systems/" not in value)
    ):
        raise RequestError(400, "Base.1.22.ActionParameterValueError", "Targets", action)
    return name


async def receive_multipart(
    reader: MultipartReader, upload_dir: Path, limit: int
) -> tuple[UpdateRequest, Path]:
    """Read a MultipartHttpPushUri body: ``UpdateParameters`` (JSON) and ``UpdateFile``.

    Raises ``RequestError`` (400) for a missing/unknown/bad part, ``SizeLimitExceeded`` (413)
    for an oversize file; the saved file is removed on any error.
    """
    params: object = None
    saved: Path | None = None
    action = "MultipartHttpPushUri"
    try:
        for _ in range(_MAX_PARTS + 1):
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise RequestError(400, "Base.1.22.ActionParameterUnknown", action, "nested")
            name = part.name or ""
            if name == "UpdateParameters":
                raw = await _read_small(part, action)
                try:
                    params = json.loads(raw)
                except (ValueError, RecursionError) as e:
                    raise RequestError(400, "Base.1.22.MalformedJSON") from e
            elif name == "UpdateFile":
                if saved is not None:
                    raise RequestError(400, "Base.1.22.ActionParameterDuplicate", action, name)
                saved = await stream_to_file(_part_chunks(part), upload_dir, limit)
            elif name == "OemParameters":
                await _read_small(part, action)
            else:
                raise RequestError(400, "Base.1.22.ActionParameterUnknown", action, name[:64])
        else:
            raise RequestError(400, "Base.1.22.ActionParameterUnknown", action, "too many parts")
        if params is None:
            raise RequestError(400, "Base.1.22.ActionParameterMissing", action, "UpdateParameters")
        if saved is None:
            raise RequestError(400, "Base.1.22.ActionParameterMissing", action, "UpdateFile")
        request, _ = parse_update_parameters(params, action=action, allow_image_uri=False)
    except BaseException:
        if saved is not None:
            with contextlib.suppress(FileNotFoundError):
                saved.unlink()
        raise
    return request, saved


async def _read_small(part: BodyPartReader, action: str) -> bytes:
    buf = bytearray()
    while True:
        chunk = await part.read_chunk(4096)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > _MAX_PARAM_PART:
            raise RequestError(400, "Base.1.22.ActionParameterValueError", part.name or "", action)


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while True:
        chunk = await part.read_chunk(_CHUNK)
        if not chunk:
            return
        yield chunk


def _split(uri: str) -> SplitResult:
    """``urlsplit``, with a URI it refuses (``http://[::1``: "Invalid IPv6 URL") read as one
    without scheme or host — the caller then answers 400 instead of failing."""
    try:
        return urlsplit(uri)
    except ValueError:
        return urlsplit("")


def check_image_uri(uri: object, protocol: object) -> str:
    """A validated absolute http(s) ImageURI; raises 400 ``RequestError``."""
    action = "UpdateService.SimpleUpdate"
    if not isinstance(uri, str):
        raise RequestError(400, "Base.1.22.ActionParameterMissing", action, "ImageURI")
    if protocol is not None and protocol not in TRANSFER_PROTOCOLS:
        raise RequestError(
            400,
            "Base.1.22.ActionParameterValueNotInList",
            str(protocol)[:64],
            "TransferProtocol",
            action,
        )
    parts = _split(uri) if len(uri) <= 2048 else urlsplit("")
    scheme = parts.scheme.lower()
    if not scheme and isinstance(protocol, str) and uri and "://" not in uri:
        # DSP0266: ImageURI may omit the scheme when TransferProtocol names it.
        uri = f"{protocol.lower()}://{uri}"
        parts = _split(uri)
        scheme = parts.scheme
    if scheme not in ("http", "https") or not parts.hostname:
        raise RequestError(
            400, "Base.1.22.ActionParameterValueFormatError", uri[:128], "ImageURI", action
        )
    if protocol is not None and scheme != str(protocol).lower():
        raise RequestError(
            400, "Base.1.22.ActionParameterValueConflict", "TransferProtocol", "ImageURI"
        )
    return uri


async def download_image(
    session: aiohttp.ClientSession,
    uri: str,
    upload_dir: Path,
    limit: int,
    *,
    total_timeout: float,
    stall_timeout: float,
    ssl_context: ssl.SSLContext | bool = True,
) -> Path:
    """GET ``uri`` to a new file, bounded by ``limit`` bytes and both timeouts.

    Raises ``SizeLimitExceeded`` (declared or actual size over the limit) or
    ``TransferError`` (connection, status, stall); the partial file is removed.
    """
    timeout = aiohttp.ClientTimeout(total=total_timeout, sock_read=stall_timeout)
    try:
        async with session.get(uri, timeout=timeout, ssl=ssl_context) as resp:
            if resp.status != 200:
                raise TransferError("image download failed", uri=uri, status=resp.status)
            if resp.content_length is not None and resp.content_length > limit:
                raise SizeLimitExceeded("ImageURI larger than MaxImageSizeBytes", limit=limit)

            async def chunks() -> AsyncIterator[bytes]:
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    yield chunk

            return await stream_to_file(chunks(), upload_dir, limit)
    except (TimeoutError, aiohttp.ClientError) as e:
        raise TransferError(
            "image download failed", uri=uri, reason=str(e) or type(e).__name__
        ) from e

