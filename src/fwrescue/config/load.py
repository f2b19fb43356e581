"""TOML -> AgentConfig: pydantic validates the file against the settings classes, then the
cross-field rules a single field cannot state are checked here, each naming its keys."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from fwrescue.config.fields import (
    DAY,
    MAX_IMAGE_SIZE,
    MAX_TARGETS,
    MAX_TRUST,
    MIN_IMAGE_SIZE,
    PATTERN_WORDS,
    TABLE,
    TOKEN_PATTERN,
    Identifier,
    RelPath,
    SecurityVersion,
    check_subject_prefix,
)
from fwrescue.config.messages import config_error
from fwrescue.config.settings import (
    AgentConfig,
    DonorSettings,
    FlashSettings,
    NetworkSettings,
    RedfishSettings,
    TargetConfig,
    TimerSettings,
    TransportSettings,
)
from fwrescue.errors import ConfigError

T = TypeVar("T")
_TOKEN = re.compile(TOKEN_PATTERN)


class _Agent(BaseModel):
    """``[agent]``; flattened into AgentConfig."""

    model_config = TABLE

    node_id: Identifier
    machine_name: Identifier
    state_dir: RelPath = Field(default="state", validate_default=True)
    trust: Annotated[tuple[RelPath, ...], Field(min_length=1, max_length=MAX_TRUST)]
    topology: StrictStr = ""
    max_image_size: Annotated[StrictInt, Field(ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE)] = (
        64 * 1024 * 1024)
    fleet_floor: dict[StrictStr, SecurityVersion] = {}
    baseline_retry_initial_s: Annotated[StrictFloat, Field(ge=0.01, le=DAY)] = 30.0
    baseline_retry_max_s: Annotated[StrictFloat, Field(ge=0.01, le=7 * DAY)] = 1800.0


class _Policy(BaseModel):
    """``[policy]``: a name; every other key is an option of that policy."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    name: StrictStr = "newest"


class _File(BaseModel):
    """The whole agent file."""

    model_config = TABLE

    agent: _Agent
    policy: _Policy = Field(default_factory=_Policy)
    network: NetworkSettings = NetworkSettings()
    transport: TransportSettings = TransportSettings()
    timers: TimerSettings = TimerSettings()
    donor: DonorSettings = DonorSettings()
    targets: Annotated[tuple[TargetConfig, ...], Field(min_length=1, max_length=MAX_TARGETS)]
    redfish: RedfishSettings = RedfishSettings()


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}  # built on first use (schema building costs)


def _validate(kind: type[T], data: object, base: Path, where: tuple[str, ...] = ()) -> T:
    try:
        adapter = _ADAPTERS.get(kind) or _ADAPTERS.setdefault(kind, TypeAdapter(kind))
        value: T = adapter.validate_python(data, context={"base": base})
    except ValidationError as e:
        raise config_error(e, where) from e
    return value


# --- cross-field rules -------------------------------------------------------------------------
def check_transport(t: TransportSettings) -> None:
    """The cross-field rules of ``[transport]`` (and, for settings built in code, the token
    rules); ConfigError naming the first broken one."""
    if t.kind != "udp" and not t.nats_servers:
        raise ConfigError(f"transport.kind = \"{t.kind}\" needs transport.nats_servers")
    for key, token in (("site", t.site), ("rack", t.rack)):
        if token is not None and not _TOKEN.fullmatch(token):
            raise ConfigError(f"transport.{key} must be {PATTERN_WORDS[TOKEN_PATTERN]}",
                              value=token[:200])
    if t.site == "ep":
        raise ConfigError("transport.site \"ep\" is reserved (unicast subjects P.ep.*)")
    try:
        check_subject_prefix(t.subject_prefix)
    except ValueError as e:
        raise ConfigError(f"transport.subject_prefix {e}", value=t.subject_prefix) from e
    if (t.user is None) != (t.password is None):
        raise ConfigError("transport.user and transport.password go together")
    if t.user is not None and t.nkey_seed_file is not None:
        raise ConfigError("choose one NATS credential: user/password or nkey_seed_file")
    if (t.tls_cert_file is None) != (t.tls_key_file is None):
        raise ConfigError("transport.tls_cert_file and tls_key_file go together")
    if t.reconnect_max_s < t.reconnect_wait_s:
        raise ConfigError("transport.reconnect_max_s must be >= reconnect_wait_s")


def _check_flash(f: FlashSettings, key: str) -> None:
    if f.kind == "file" and f.path is None:
        raise ConfigError(f"{key}.path is required by a file flash")
    if f.kind == "flashrom" and not f.programmer:
        raise ConfigError(f"{key}.programmer is required by a flashrom flash")
    if bool(f.bank_b_offset) != bool(f.marker_offset):
        raise ConfigError(f"{key}: a dual-bank flash needs both bank_b_offset and "
                          "marker_offset")
    if f.bank_b_offset and (f.kind != "file" or not f.region_size):
        raise ConfigError(f"{key}: dual banks need a file flash and flash.region_size")


def _check_timers(t: TimerSettings) -> None:
    from fwrescue.protocol.recipient import RecipientTimers

    try:  # the protocol's own cross-field rules (e.g. the offer window closes before a retry)
        RecipientTimers(**dataclasses.asdict(t))
    except ConfigError as e:
        raise ConfigError(f"[timers] {e.message}", **e.fields) from e


def _check_file(f: _File) -> None:
    check_transport(f.transport)
    _check_timers(f.timers)
    for i, target in enumerate(f.targets):
        _check_flash(target.flash, f"targets[{i}].flash")
    names = [t.name for t in f.targets]
    if len(set(names)) != len(names):
        raise ConfigError("targets[].name must be unique",
                          names=sorted({n for n in names if names.count(n) > 1}))
    if f.agent.baseline_retry_max_s < f.agent.baseline_retry_initial_s:
        raise ConfigError("agent.baseline_retry_max_s must be >= baseline_retry_initial_s")


# --- the public entry points -------------------------------------------------------------------
def parse_config(data: Mapping[str, Any], base: Path) -> AgentConfig:
    """Build an AgentConfig from parsed TOML (paths relative to ``base``); ConfigError on
    any bad or unknown key."""
    f = _validate(_File, dict(data), base)
    _check_file(f)
    a = f.agent
    return AgentConfig(
        node_id=a.node_id, machine_name=a.machine_name, state_dir=a.state_dir,
        trust=a.trust, topology=a.topology, max_image_size=a.max_image_size,
        fleet_floors=dict(a.fleet_floor),
        baseline_retry_initial_s=a.baseline_retry_initial_s,
        baseline_retry_max_s=a.baseline_retry_max_s,
        policy=f.policy.name, policy_options=dict(f.policy.model_extra or {}),
        network=dataclasses.replace(f.network, transport=f.transport),
        timers=f.timers, donor=f.donor, targets=f.targets, redfish=f.redfish)


def parse_network(data: Mapping[str, Any], base: Path) -> NetworkSettings:
    """Validate a ``[network]`` table on its own (the console donor's command line)."""
    return _validate(NetworkSettings, dict(data), base, ("network",))


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read the {what}", path=str(path), detail=str(e)) from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
        # tomllib decodes the whole file as UTF-8 and nests arrays by recursion
        raise ConfigError(f"{what} is not valid TOML", path=str(path),
                          detail=str(e)[:200]) from e


def parse_transport_file(path: Path) -> TransportSettings:
    """The ``[transport]`` table of a TOML file on its own (the console donor's
    ``--transport-config``); paths resolve against the file's folder. Raises ConfigError."""
    data = _read_toml(path, "transport config")
    result = _validate(TransportSettings, data.get("transport", {}), path.parent.resolve(),
                       ("transport",))
    check_transport(result)
    return result


def load_config(path: Path) -> AgentConfig:
    """Read and validate a TOML config file."""
    return parse_config(_read_toml(path, "config file"), path.parent.resolve())
