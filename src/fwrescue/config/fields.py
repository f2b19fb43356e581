"""The schema's building blocks: strict TOML scalars, the named limits, and the few checks
pydantic cannot express itself (paths against the config file's folder, IP and multicast
addresses, NATS subjects and server URLs, fleet key files, regular expressions).

A custom check raises :class:`Invalid` (a ``ValueError``, so pydantic records it with the
key's location); ``config/messages.py`` turns it into ``ConfigError("<key> <text>")``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    GetPydanticSchema,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationInfo,
)

from fwrescue.errors import ConfigError

#: every TOML table: unknown keys are errors; scalars are strict per field (Strict* types);
#: models build their validators on first use, not at import
TABLE = ConfigDict(extra="forbid", defer_build=True)

# --- named limits ---------------------------------------------------------------------------
MAX_TARGETS = 64            # [[targets]] tables in one agent
MAX_SOURCES = 32            # predetermined sources per target
MAX_TRUST = 64              # agent.trust entries
MAX_REDFISH_USERS = 64      # [[redfish.users]] accounts
MAX_NATS_SERVERS = 16       # transport.nats_servers URLs
MAX_SUBJECT_TOKENS = 8      # transport.subject_prefix tokens
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 4096, 2**31
MAX_UPLOADS = 1024          # donor slots and holders
MAX_RATE_BPS = 10**11       # donor shaping, bytes/s
MAX_SECURITY_VERSION = 2**32 - 1
MIN_FLEET_KEY, MAX_FLEET_KEY = 16, 256  # HMAC-SHA256: >= 128 bits; larger is not a key
HOUR, DAY = 3600.0, 86400.0

# --- strict scalars with their bounds --------------------------------------------------------
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
PortOrAny = Annotated[StrictInt, Field(ge=0, le=65535)]  # 0 = any free port
Count = Annotated[StrictInt, Field(ge=1, le=1000)]
Offset = Annotated[StrictInt, Field(ge=0, le=2**62)]
SecurityVersion = Annotated[StrictInt, Field(ge=0, le=MAX_SECURITY_VERSION)]


# --- patterns: pydantic checks them; messages.py words them -----------------------------------
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
PATTERN_WORDS = {ID_PATTERN: "1-64 of [A-Za-z0-9._-]",
                 TOKEN_PATTERN: "one subject token of [A-Za-z0-9_-]"}
Identifier = Annotated[StrictStr, StringConstraints(pattern=ID_PATTERN)]
SubjectToken = Annotated[StrictStr, StringConstraints(pattern=TOKEN_PATTERN)]


def one_of(*choices: str) -> GetPydanticSchema:
    """A ``str`` field that must be one of ``choices`` (checked as a ``Literal``; typed
    ``str`` so code passing a plain string type-checks)."""
    return GetPydanticSchema(lambda _t, handler: handler(Literal[choices]))


class Invalid(ValueError):
    """A custom check's refusal: ``text`` completes "<key> …"; ``fields`` go to ConfigError."""

    def __init__(self, text: str, **fields: object) -> None:
        super().__init__(text)
        self.text, self.fields = text, fields


def _checked(check: Callable[[Any], object]) -> AfterValidator:
    def run(value: Any) -> Any:
        check(value)
        return value
    return AfterValidator(run)


# --- paths: relative to the config file's folder (validation context "base") ----------------
def _relative(value: object, info: ValidationInfo) -> object:
    if not isinstance(value, str):
        return value  # pydantic refuses it as the wrong type
    base: Path = (info.context or {})["base"]
    try:
        return (base / value).resolve()
    except (OSError, ValueError) as e:  # e.g. an embedded NUL
        raise Invalid("is not a usable path", detail=str(e)[:200]) from e


def _readable(path: Path) -> None:
    if not path.is_file():
        raise Invalid("is not a readable file", path=str(path))


def read_fleet_key(path: Path) -> bytes:
    """The fleet key's bytes (one trailing newline dropped); ConfigError when the file is
    missing or the key is shorter than 16 bytes — an empty key must never turn HMAC off."""
    try:
        if path.stat().st_size > MAX_FLEET_KEY + 2:
            raise ConfigError("fleet key file too large", path=str(path))
        key = path.read_bytes().removesuffix(b"\n").removesuffix(b"\r")
    except OSError as e:
        raise ConfigError("cannot read the fleet key file", path=str(path),
                          detail=str(e)) from e
    if len(key) < MIN_FLEET_KEY:
        raise ConfigError("fleet key must be at least 16 bytes", path=str(path))
    return key


def _fleet_key(path: Path) -> None:
    try:
        read_fleet_key(path)
    except ConfigError as e:
        raise Invalid(f"is refused: {e.message}", **e.fields) from e


RelPath = Annotated[Path, BeforeValidator(_relative)]
ReadableFile = Annotated[RelPath, _checked(_readable)]
FleetKeyFile = Annotated[RelPath, _checked(_fleet_key)]


# --- addresses ---------------------------------------------------------------------------------
def _ip(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError as e:
        raise Invalid("must be an IP address", value=value[:64]) from e


def _multicast(value: str) -> None:
    _ip(value)
    if not ipaddress.ip_address(value).is_multicast:
        raise Invalid("must be a multicast address", value=value)


def _ipv4_multicast(value: str) -> None:
    _multicast(value)
    if ipaddress.ip_address(value).version != 4:
        raise Invalid("must be an IPv4 multicast address", value=value)


IpAddress = Annotated[StrictStr, _checked(_ip)]
Multicast = Annotated[StrictStr, _checked(_multicast)]
Ipv4Multicast = Annotated[StrictStr, _checked(_ipv4_multicast)]


# --- NATS ----------------------------------------------------------------------------------------
_TOKEN = re.compile(TOKEN_PATTERN)
_NATS_URL = re.compile(r"^(nats|tls)://([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])"
                       r"(:[0-9]{1,5})?$")


def subject_token(label: str) -> str:
    """One NATS subject token from a topology label: ``.``, ``/``, ``:`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", label)[:64] or "_"


def check_subject_prefix(value: str) -> None:
    """1-8 dot-separated subject tokens, no wildcards; :class:`Invalid` otherwise."""
    tokens = value.split(".")
    if not 1 <= len(tokens) <= MAX_SUBJECT_TOKENS or not all(_TOKEN.match(t) for t in tokens):
        raise Invalid("must be 1-8 dot-separated tokens of [A-Za-z0-9_-] "
                      "(no wildcards, no empty tokens)", value=value[:200])


def _url_list(value: object) -> object:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise Invalid("must be a list of URLs")
    return tuple(value)


def _nats_url(url: str) -> None:
    match = _NATS_URL.match(url)
    if match is None or (match.group(3) and not 1 <= int(match.group(3)[1:]) <= 65535):
        raise Invalid("must be nats://host:port or tls://host:port (no credentials in the URL)",
                      value=url[:200])


SubjectPrefix = Annotated[StrictStr, _checked(check_subject_prefix)]
NatsServers = Annotated[tuple[Annotated[str, _checked(_nats_url)], ...],
                        BeforeValidator(_url_list), Field(max_length=MAX_NATS_SERVERS)]


# --- the rest ------------------------------------------------------------------------------------
def _regex(value: str) -> None:
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError) as e:
        raise Invalid("is not a valid regular expression", detail=str(e)[:200]) from e


def _sources(value: object, info: ValidationInfo) -> object:
    """Predetermined sources stay tables (sources/ladder.py checks them); a ``path`` in one
    resolves against the config file's folder."""
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise Invalid("must be a list of tables")
    return tuple({**spec, "path": str(_relative(spec["path"], info))}
                 if isinstance(spec.get("path"), str) else dict(spec) for spec in value)


def not_in_this_table(where: str) -> BeforeValidator:
    """A dataclass field the TOML table must not set (it comes from ``where``)."""
    def refuse(value: object) -> object:
        raise Invalid(f"is set by {where}, not in this table")
    return BeforeValidator(refuse)


Regex = Annotated[StrictStr, _checked(_regex)]
Sources = Annotated[tuple[Mapping[str, Any], ...], BeforeValidator(_sources),
                    Field(max_length=MAX_SOURCES)]
