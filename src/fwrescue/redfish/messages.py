"""Message registries (Base, TaskEvent, Update, ResourceEvent) and Redfish error bodies.

The registry JSON files ship in ``fwrescue/redfish/static`` (DMTF, BSD-3-Clause). A message
is built from its MessageId and arguments; an unknown MessageId or a wrong argument count is
a programming error and raises ``ValueError`` (never a made-up message).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fwrescue.errors import FwRescueError, LocalError

__all__ = [
    "REGISTRY_FILES",
    "Registries",
    "RequestError",
    "error_body",
    "message_for_error",
]

#: registry prefix -> the file shipped in static/
REGISTRY_FILES: dict[str, str] = {
    "Base": "Base.1.22.1.json",
    "TaskEvent": "TaskEvent.1.0.5.json",
    "Update": "Update.1.3.0.json",
    "ResourceEvent": "ResourceEvent.1.4.3.json",
}


@dataclass(frozen=True)
class _Registry:
    prefix: str
    version: str  # "1.22.1"
    file_name: str
    raw: bytes
    messages: dict[str, dict[str, Any]]


class Registries:
    """The message registries, loaded once from the package's static files."""

    def __init__(self) -> None:
        self._by_prefix: dict[str, _Registry] = {}
        static = resources.files("fwrescue.redfish") / "static"
        for prefix, file_name in REGISTRY_FILES.items():
            raw = (static / file_name).read_bytes()
            doc = json.loads(raw)
            self._by_prefix[prefix] = _Registry(
                prefix=prefix,
                version=str(doc["RegistryVersion"]),
                file_name=file_name,
                raw=raw,
                messages=dict(doc["Messages"]),
            )

    @property
    def prefixes(self) -> list[str]:
        return sorted(self._by_prefix)

    def registry_id(self, prefix: str) -> str:
        """``Base.1.22.1`` for ``Base``; raises ``KeyError`` for an unknown prefix."""
        return f"{prefix}.{self._by_prefix[prefix].version}"

    def file_name(self, prefix: str) -> str:
        return self._by_prefix[prefix].file_name

    def raw(self, prefix: str) -> bytes:
        return self._by_prefix[prefix].raw

    def message(self, message_id: str, args: tuple[str, ...] = ()) -> dict[str, Any]:
        """A ``Message`` object for ``Registry.Major.Minor.Key`` filled with ``args``.

        Raises ``ValueError`` when the registry or key is unknown or the argument count is
        wrong.
        """
        parts = message_id.split(".")
        if len(parts) != 4:
            raise ValueError(f"bad MessageId {message_id!r}")
        reg = self._by_prefix.get(parts[0])
        if reg is None:
            raise ValueError(f"unknown registry in MessageId {message_id!r}")
        major_minor = ".".join(reg.version.split(".")[:2])
        if f"{parts[1]}.{parts[2]}" != major_minor:
            raise ValueError(f"MessageId {message_id!r} does not match registry {reg.version}")
        entry = reg.messages.get(parts[3])
        if entry is None:
            raise ValueError(f"unknown MessageId {message_id!r}")
        n = int(entry.get("NumberOfArgs", 0))
        if len(args) != n:
            raise ValueError(f"{message_id} takes {n} args, got {len(args)}")
        text = str(entry["Message"])
        # Replace from the highest index down so %1 does not eat the start of %10.
        for i in range(n, 0, -1):
            text = text.replace(f"%{i}", args[i - 1])
        severity = str(entry.get("MessageSeverity") or entry.get("Severity") or "OK")
        msg: dict[str, Any] = {
            "@odata.type": "#Message.v1_3_0.Message",
            "MessageId": message_id,
            "Message": text,
            "MessageArgs": list(args),
            "MessageSeverity": severity,
            "Resolution": str(entry.get("Resolution", "None.")),
        }
        return msg

    def has(self, message_id: str, nargs: int) -> bool:
        try:
            self.message(message_id, tuple("" for _ in range(nargs)))
        except ValueError:
            return False
        return True


@dataclass(frozen=True)
class _Detail:
    message_id: str
    args: tuple[str, ...]


class RequestError(LocalError):
    """A client request the service refuses; carries status, MessageId(s) and headers.

    ``details`` adds further ``@Message.ExtendedInfo`` entries (several bad properties).
    """

    def __init__(
        self,
        status: int,
        message_id: str,
        *args: str,
        headers: dict[str, str] | None = None,
        details: list[tuple[str, tuple[str, ...]]] | None = None,
    ) -> None:
        super().__init__(message_id)
        self.http_status = status
        self.message_id = message_id
        self.args_ = tuple(args)
        self.headers = dict(headers or {})
        self.details = [_Detail(m, a) for m, a in (details or [])]


# MessageIds that errors.py names but the shipped Update 1.3.0 registry does not define,
# mapped to the registry message that says the same thing.
_SUBSTITUTES: dict[str, str] = {
    "Update.1.3.InvalidUpdateTarget": "Update.1.3.UpdateNotApplicable",
    "Update.1.3.UpdateNotAllowed": "Update.1.3.UpdateSkippedVersionTooLow",
}


def error_body(
    reg: Registries, exc: FwRescueError, context: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The Redfish error body for ``exc``: its MessageId first, then any details.

    For a backend ``FwRescueError`` the registry message is filled from ``context`` (for
    Update messages: the image name, then the target) and followed by the error's own text.
    """
    infos: list[dict[str, Any]] = []
    if isinstance(exc, RequestError):
        infos.append(reg.message(exc.message_id, exc.args_))
        infos.extend(reg.message(d.message_id, d.args) for d in exc.details)
        message = str(infos[0]["Message"])
    else:
        message = exc.message
        infos.append(message_for_error(reg, exc, context))
    return {
        "error": {
            "code": infos[0]["MessageId"],
            "message": message,
            "@Message.ExtendedInfo": infos,
        }
    }


# Update registry messages whose arguments are (device, image) rather than (image, device).
_DEVICE_FIRST = frozenset(
    {
        "TargetDetermined",
        "UpdateSuccessful",
        "UpdateSkipped",
        "UpdateSkippedSameVersion",
        "UpdateSkippedVersionTooLow",
    }
)


def message_for_error(
    reg: Registries, exc: FwRescueError, context: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A registry ``Message`` describing ``exc`` (its ``message_id``, or the nearest one)."""
    message_id = _SUBSTITUTES.get(exc.message_id, exc.message_id)
    for nargs in range(0, 4):
        if reg.has(message_id, nargs):
            if message_id.rsplit(".", 1)[-1] in _DEVICE_FIRST:
                context = tuple(reversed(context[:2])) + context[2:]
            padded = (*context, *(["unknown"] * nargs))
            info = reg.message(message_id, tuple(padded[:nargs]))
            info["Message"] = f"{info['Message']} {exc.message}".strip()
            return info
    info = reg.message("Base.1.22.GeneralError")
    info["Message"] = exc.message
    return info
