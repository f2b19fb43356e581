"""A small asyncio Redfish client for fwrescue's operator commands (and any Redfish BMC).

It logs in with a session (``POST …/Sessions``, ``X-Auth-Token``) and logs out on close,
streams update packages as multipart pushes (never read whole into memory), and follows task
monitors with a bounded number of polls. Failures raise :class:`RedfishClientError` whose
``kind`` tells the CLI which exit code to use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urljoin

import aiohttp

from fwrescue.errors import RemoteError

__all__ = ["RedfishClient", "RedfishClientError"]

# Replies are JSON documents well under this; a larger one is not a Redfish resource.
_MAX_REPLY = 4 * 1024 * 1024
_MAX_MEMBERS = 1024


class RedfishClientError(RemoteError):
    """A Redfish request failed. ``kind`` is ``connect``, ``auth``, ``refused`` or ``protocol``;
    ``status`` the HTTP status (0 when none); ``message_id`` the service's first MessageId."""

    def __init__(self, message: str, *, kind: str, status: int = 0, message_id: str = "") -> None:
        super().__init__(message, status=status)
        self.kind = kind
        self.status = status
        if message_id:
            self.message_id = message_id


class RedfishClient:
    """``async with RedfishClient(url, user, password) as rf: await rf.get("/redfish/v1/")``."""

    def __init__(
        self,
        base_url: str,
        user: str,
        password: str,
        *,
        verify_tls: bool = True,
        timeout_s: float = 60.0,
    ) -> None:
        self._base = base_url.rstrip("/") + "/"
        self._user = user
        self._password = password
        self._ssl: bool = verify_tls
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._session_uri: str | None = None

    async def __aenter__(self) -> RedfishClient:
        self._http = aiohttp.ClientSession(timeout=self._timeout)
        try:
            await self.login()
        except BaseException:
            await self._http.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def url(self, path: str) -> str:
        return urljoin(self._base, path)

    async def login(self) -> None:
        """Create a session; raises ``RedfishClientError`` (``auth`` on 401/403)."""
        body, headers = await self._request(
            "POST",
            "/redfish/v1/SessionService/Sessions",
            json_body={"UserName": self._user, "Password": self._password},
            auth=False,
        )
        self._token = headers.get("X-Auth-Token")
        self._session_uri = headers.get("Location") or body.get("@odata.id")
        if not self._token:
            raise RedfishClientError("service returned no X-Auth-Token", kind="protocol")

    async def close(self) -> None:
        if self._http is None:
            return
        try:
            if self._session_uri and self._token:
                # Best effort: an unclosed session expires on the service by itself.
                with contextlib.suppress(RedfishClientError):
                    await self._request("DELETE", self._session_uri)
        finally:
            await self._http.close()
            self._http = None
            self._token = None

    async def get(self, path: str) -> dict[str, Any]:
        body, _ = await self._request("GET", path)
        return body

    async def members(self, path: str) -> list[dict[str, Any]]:
        """GET a collection and each of its members (at most 1024)."""
        coll = await self.get(path)
        refs = coll.get("Members", [])
        if not isinstance(refs, list):
            raise RedfishClientError(f"{path}: Members is not a list", kind="protocol")
        out = []
        for ref in refs[:_MAX_MEMBERS]:
            if isinstance(ref, dict) and isinstance(ref.get("@odata.id"), str):
                out.append(await self.get(ref["@odata.id"]))
        return out

    async def push_update(
        self, package: Path, targets: list[str] | None, force: bool, apply_time: str
    ) -> tuple[str, dict[str, Any]]:
        """Multipart push of ``package``; returns (task monitor URI, first Task body)."""
        service = await self.get("/redfish/v1/UpdateService")
        push_uri = service.get("MultipartHttpPushUri")
        if not isinstance(push_uri, str):
            raise RedfishClientError("service has no MultipartHttpPushUri", kind="protocol")
        params: dict[str, Any] = {"@Redfish.OperationApplyTime": apply_time}
        if targets:
            params["Targets"] = targets
        if force:
            params["ForceUpdate"] = True
        with package.open("rb") as f:
            writer = aiohttp.MultipartWriter("form-data")
            part = writer.append_json(params)
            part.set_content_disposition("form-data", name="UpdateParameters")
            part = writer.append(f, {"Content-Type": "application/octet-stream"})
            part.set_content_disposition("form-data", name="UpdateFile", filename=package.name)
            body, headers = await self._request("POST", push_uri, data=writer)
        return self._monitor(headers, body), body

    async def simple_update(
        self, image_uri: str, targets: list[str] | None, force: bool
    ) -> tuple[str, dict[str, Any]]:
        service = await self.get("/redfish/v1/UpdateService")
        action = service.get("Actions", {}).get("#UpdateService.SimpleUpdate", {})
        target = action.get("target") if isinstance(action, dict) else None
        if not isinstance(target, str):
            raise RedfishClientError("service has no SimpleUpdate action", kind="protocol")
        req: dict[str, Any] = {"ImageURI": image_uri}
        if image_uri.lower().startswith(("http://", "https://")):
            req["TransferProtocol"] = image_uri.split(":", 1)[0].upper()
        if targets:
            req["Targets"] = targets
        if force:
            req["ForceUpdate"] = True
        body, headers = await self._request("POST", target, json_body=req)
        return self._monitor(headers, body), body

    async def wait_task(
        self, monitor: str, *, max_polls: int = 3600, max_interval: float = 5.0
    ) -> dict[str, Any]:
        """Poll a task monitor until it stops answering 202; return the final Task."""
        for _ in range(max_polls):
            body, headers, status = await self._request_status("GET", monitor)
            if status != 202:
                return body
            try:
                delay = float(headers.get("Retry-After", "1"))
            except ValueError:
                delay = 1.0
            await asyncio.sleep(min(max(delay, 0.05), max_interval))
        raise RedfishClientError("task did not finish in time", kind="protocol")

    @staticmethod
    def _monitor(headers: dict[str, str], body: dict[str, Any]) -> str:
        location = headers.get("Location")
        if location:
            return location
        monitor = body.get("TaskMonitor")
        if isinstance(monitor, str):
            return monitor
        raise RedfishClientError("update accepted without a task monitor", kind="protocol")

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        data: Any = None,
        auth: bool = True,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        body, headers, _ = await self._request_status(
            method, path, json_body=json_body, data=data, auth=auth
        )
        return body, headers

    async def _request_status(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        data: Any = None,
        auth: bool = True,
    ) -> tuple[dict[str, Any], dict[str, str], int]:
        if self._http is None:
            raise RedfishClientError("client is closed", kind="protocol")
        headers = {"Accept": "application/json", "OData-Version": "4.0"}
        if auth and self._token:
            headers["X-Auth-Token"] = self._token
        try:
            async with self._http.request(
                method,
                self.url(path),
                json=json_body,
                data=data,
                headers=headers,
                ssl=self._ssl,
            ) as resp:
                raw = await resp.content.read(_MAX_REPLY + 1)
                status, rheaders = resp.status, dict(resp.headers)
        except aiohttp.ClientSSLError as e:
            raise RedfishClientError(f"TLS failure: {e} (try --insecure)", kind="connect") from e
        except (aiohttp.ClientError, TimeoutError) as e:
            raise RedfishClientError(
                f"cannot reach {self._base}: {e or type(e).__name__}", kind="connect"
            ) from e
        if len(raw) > _MAX_REPLY:
            raise RedfishClientError(f"{path}: reply too large", kind="protocol", status=status)
        body: dict[str, Any] = {}
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = {}
            body = parsed if isinstance(parsed, dict) else {}
        if status >= 400:
            err = body.get("error", {}) if isinstance(body.get("error"), dict) else {}
            infos = err.get("@Message.ExtendedInfo") or []
            mid = str(err.get("code", ""))
            text = str(err.get("message", "")) or f"HTTP {status}"
            if infos and isinstance(infos[0], dict):
                mid = str(infos[0].get("MessageId", mid))
                text = str(infos[0].get("Message", text))
            kind = "auth" if status in (401, 403) else "refused"
            raise RedfishClientError(
                f"{method} {path}: {status} {text}", kind=kind, status=status, message_id=mid
            )
        return body, rheaders, status
