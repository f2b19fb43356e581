"""Agent configuration: TOML -> frozen dataclasses, every limit named, validated once.

A bad file raises :class:`~fwrescue.errors.ConfigError` naming the key, before
anything starts. Relative paths are resolved against the config file's folder.
See ``docs/operations.md`` for a complete annotated example.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fwrescue.errors import ConfigError
from fwrescue.trust.transfer_tls import check_identity

__all__ = [
    "AgentConfig",
    "DonorSettings",
    "FlashSettings",
    "HostSettings",
    "NetworkSettings",
    "RedfishSettings",
    "TargetConfig",
    "TimerSettings",
    "TlsSettings",
    "TransportSettings",
    "load_config",
    "parse_config",
    "parse_network",
    "parse_tls",
    "parse_transport_file",
    "read_fleet_key",
    "subject_token",
]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _Section:
    """Typed access to one TOML table; every read is checked and unknown keys are refused."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"[{where}] must be a table")
        self._data: dict[str, Any] = data
        self._where = where
        self._used: set[str] = set()

    def _get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self._used.add(key)
        value = self._data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) and kind is not bool:
            raise ConfigError(f"{self._where}.{key} has the wrong type", expected=str(kind))
        if not isinstance(value, kind):
            raise ConfigError(f"{self._where}.{key} has the wrong type", expected=str(kind))
        return value

    def get_str(self, key: str, default: str | None = None) -> Any:
        return self._get(key, str, default)

    def get_bool(self, key: str, default: bool) -> bool:
        return bool(self._get(key, bool, default))

    def get_int(self, key: str, default: int, lo: int = 0, hi: int = 2**62) -> int:
        value = int(self._get(key, int, default))
        if not lo <= value <= hi:
            raise ConfigError(f"{self._where}.{key} out of range", value=value, lo=lo, hi=hi)
        return value

    def get_float(self, key: str, default: float, lo: float = 0.0, hi: float = 1e9) -> float:
        value = float(self._get(key, (int, float), default))
        if not lo <= value <= hi:
            raise ConfigError(f"{self._where}.{key} out of range", value=value, lo=lo, hi=hi)
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get_str(key, default)
        if value not in choices:
            raise ConfigError(f"{self._where}.{key} must be one of {', '.join(choices)}",
                              value=value)
        return str(value)

    def path(self, key: str, base: Path, default: str | None = None) -> Path | None:
        value = self.get_str(key, default)
        return None if value is None else (base / value).resolve()

    def table(self, key: str) -> _Section:
        self._used.add(key)
        return _Section(self._data.get(key, {}), f"{self._where}.{key}")

    def raw(self, key: str, default: Any = None) -> Any:
        self._used.add(key)
        return self._data.get(key, default)

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            raise ConfigError(f"unknown keys in [{self._where}]", keys=unknown)


@dataclass(frozen=True)
class TransportSettings:
    """``[transport]``: what carries the negotiation (docs/protocol.md, "NATS transport").

    ``kind`` is ``udp`` (multicast on one segment, the default), ``nats`` (a NATS cluster;
    multicast only while no broker is reachable, if ``multicast_fallback``) or ``both``
    (a bridge-free dual stack: every group message on both, replies on the link they came
    from, duplicates dropped by the codec's replay cache).
    """

    kind: str = "udp"
    nats_servers: tuple[str, ...] = ()
    subject_prefix: str = "fwrescue.v1"
    site: str = "default"
    multicast_fallback: bool = True
    user: str | None = None
    password: str | None = None
    nkey_seed_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    connect_timeout_s: float = 2.0
    reconnect_wait_s: float = 0.5  # first retry after a lost connection; doubles …
    reconnect_max_s: float = 10.0  # … up to this
    # The rack's subject token (docs/protocol.md, "Subjects"); None: the agent's topology
    # label as a token (filled in by AgentConfig), or no rack at all (the console).
    rack: str | None = None
    # How much later a racked link hears a SOLICIT from another rack than from its own.
    rack_first_delay_s: float = 0.1
    # The NATS connection's name (None: "fwrescue"; AgentConfig fills in the node id). One
    # connection per event loop and TransportSettings: so one per agent (transport/nats.py).
    connection_name: str | None = None


# --- [tls] / [transfer]: the transfer plane's mutual TLS (docs/transfer.md, "Transfer
# security"). One block: a dataclass and its parse function. -----------------------------


@dataclass(frozen=True)
class TlsSettings:
    """``[tls]``: this node's fleet-CA identity for the transfer plane (absolute paths)."""

    ca: Path
    cert: Path
    key: Path


def parse_tls(tls: Mapping[str, Any] | None, transfer: Mapping[str, Any] | None,
              base: Path, node_id: str) -> TlsSettings | None:
    """``[tls]`` (paths relative to ``base``) checked as ``node_id``'s identity, or None
    when ``[transfer] plain_http = true``. Exactly one of the two; ConfigError otherwise
    (each file problem its own, see :func:`fwrescue.trust.transfer_tls.check_identity`)."""
    t = _Section(transfer or {}, "transfer")
    plain = t.get_bool("plain_http", False)
    t.done()
    if tls is None:
        if not plain:
            raise ConfigError("the transfer plane needs [tls] ca, cert and key (a fleet-CA "
                              "certificate for this node: fwrescue fleet-ca issue), or "
                              "[transfer] plain_http = true to transfer in the clear")
        return None
    if plain:
        raise ConfigError("[tls] and [transfer] plain_http = true exclude each other")
    s = _Section(tls, "tls")
    paths = {}
    for key in ("ca", "cert", "key"):
        value = s.get_str(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"tls.{key} is required (a PEM file path)")
        paths[key] = (base / value).resolve()
    s.done()
    settings = TlsSettings(**paths)
    check_identity(settings.ca, settings.cert, settings.key, node_id)
    return settings


# --- end of the [tls] block -------------------------------------------------------------


@dataclass(frozen=True)
class NetworkSettings:
    group: str = "239.255.77.77"
    port: int = 17700
    interface: str = "127.0.0.1"
    transfer_host: str = "127.0.0.1"
    transfer_port: int = 0
    fleet_key_file: Path | None = None
    replay_window_s: float = 30.0
    # From the top-level [transport] table; kept here so every open_link() caller (the
    # recipient, the donor service, the console) gets it without a new parameter.
    transport: TransportSettings = TransportSettings()
    # From [tls] (the same reason): this node's transfer-plane identity; None = plain HTTP
    # (a config file must say so: [transfer] plain_http = true).
    tls: TlsSettings | None = None


@dataclass(frozen=True)
class TimerSettings:
    """Negotiation timers (seconds); the shape of RFC 2131's, scaled for a fast LAN."""

    startup_jitter: float = 0.5
    offer_window: float = 0.4
    backoff_initial: float = 1.0
    backoff_max: float = 16.0
    max_solicits: int = 8
    accept_timeout: float = 1.0
    enough_offers: int = 16


@dataclass(frozen=True)
class DonorSettings:
    enabled: bool = True
    max_uploads: int = 4
    lease_s: float = 30.0
    rate_limit_bps: int = 0  # 0 = unshaped
    # A console answers after peers (extra offer delay) and stays quiet once it overhears
    # this many offers for a solicit, so the console serves only what peers cannot.
    console_offer_delay_s: float = 0.1
    suppress_after: int = 3
    # Fleet circuit breaker: withhold an image after this many distinct recipients
    # reported that it did not boot (docs/protocol.md, REPORT).
    breaker_failures: int = 3
    # Seed of last resort (a console): once it sent this many images' worth of one image
    # and heard a complete peer offer it, it stops serving it (0 = never caps).
    egress_cap_images: float = 0.0
    # Deferred offers: a solicit this donor cannot answer yet (full, or the image not held
    # yet) is remembered this long and answered as soon as it can be (0 = off).
    defer_offers_s: float = 2.0
    # Upload slot rotation (docs/transfer.md): admit this many token holders (0 = as many
    # as max_uploads); a body request finding all max_uploads busy waits its turn up to
    # upload_queue_s (0 = 503 at once), so holders share the shaped link in turn.
    max_holders: int = 0
    upload_queue_s: float = 0.0


@dataclass(frozen=True)
class FlashSettings:
    kind: str  # "file" | "flashrom"
    path: Path | None = None  # file backend: the raw image; flashrom dummy: its image file
    programmer: str | None = None  # flashrom programmer string
    chip_size: int = 0  # file backend: size of the chip (0 = the file's size)
    region_offset: int = 0
    region_size: int = 0  # 0 = to the end of the chip
    # Dual bank: the region above is bank A; bank B (same size) at bank_b_offset; a marker of
    # two erase sectors at marker_offset says which bank is active (flash/layout.py).
    bank_b_offset: int = 0  # 0 = single bank
    marker_offset: int = 0
    timing_chip: str | None = None  # timing model of a real part, e.g. "W25Q256JV"
    timing_scale: float = 0.0


@dataclass(frozen=True)
class HostSettings:
    kind: str = "virtual"  # "virtual" | "qemu" | "none"
    flash_mode: str = "dc-off"  # "dc-off" | "dc-on"
    boot_timeout: float = 30.0
    boot_pattern: str = r"Shell>|UEFI Interactive Shell"
    vars_path: Path | None = None
    accel: str = "auto"


@dataclass(frozen=True)
class TargetConfig:
    """One managed firmware target: the host BIOS, or a device served by proxy."""

    name: str
    flash: FlashSettings
    host: HostSettings
    sources: tuple[Mapping[str, Any], ...] = ()
    network: bool = True  # solicit donors when no predetermined source has a package
    check_interval_s: float = 0.0  # periodic integrity check; 0 = off


@dataclass(frozen=True)
class RedfishSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    tls: bool = True
    users: tuple[tuple[str, str, str], ...] = ()  # (name, password, role)
    # SSDP announcements of the service root (redfish/ssdp.py); None: do not announce
    ssdp_group: str | None = None
    ssdp_port: int = 1900
    ssdp_interval_s: float = 30.0


@dataclass(frozen=True)
class AgentConfig:
    node_id: str
    machine_name: str
    state_dir: Path
    trust: tuple[Path, ...]
    topology: str = ""
    policy: str = "newest"
    policy_options: Mapping[str, Any] = field(default_factory=dict)
    network: NetworkSettings = NetworkSettings()
    timers: TimerSettings = TimerSettings()
    donor: DonorSettings = DonorSettings()
    targets: tuple[TargetConfig, ...] = ()
    redfish: RedfishSettings = RedfishSettings()
    max_image_size: int = 64 * 1024 * 1024
    #: fleet baseline: minimum security version per target, on top of the persisted floor
    fleet_floors: Mapping[str, int] = field(default_factory=dict)
    #: a failed fleet-policy baseline update is retried after this, doubling up to the max
    baseline_retry_initial_s: float = 30.0
    baseline_retry_max_s: float = 1800.0

    @property
    def transport(self) -> TransportSettings:
        """The ``[transport]`` table (stored in ``network.transport``)."""
        return self.network.transport

    def __post_init__(self) -> None:
        # A NATS agent without ``[transport] rack`` is in the rack its topology label names;
        # its connection is named (and so, per process, kept apart) by its node id.
        t = self.network.transport
        if t.kind != "udp" and (t.connection_name is None or
                                (t.rack is None and self.topology)):
            own = dataclasses.replace(
                t, rack=t.rack or (subject_token(self.topology) if self.topology else None),
                connection_name=t.connection_name or self.node_id)
            object.__setattr__(self, "network",
                               dataclasses.replace(self.network, transport=own))


def _fleet_floors(value: object) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            and 0 <= v < 2**32 for k, v in value.items()):
        raise ConfigError("agent.fleet_floor must map target names to security versions")
    return dict(value)


def _identifier(value: object, where: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ConfigError(f"{where} must be 1-64 of [A-Za-z0-9._-]", value=value)
    return value


# HMAC-SHA256 keys: at least 128 bits; a file larger than this is not a key.
MIN_FLEET_KEY, MAX_FLEET_KEY = 16, 256


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


def _ip(value: str, key: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError as e:
        raise ConfigError(f"{key} must be an IP address", value=value) from e
    return value


def _network(s: _Section, base: Path) -> NetworkSettings:
    group = s.get_str("group", NetworkSettings.group)
    try:
        if not ipaddress.ip_address(group).is_multicast:
            raise ConfigError("network.group must be a multicast address", value=group)
        ipaddress.ip_address(s.get_str("interface", NetworkSettings.interface))
    except ValueError as e:
        raise ConfigError("network addresses must be IP literals", detail=str(e)) from e
    result = NetworkSettings(
        group=group,
        port=s.get_int("port", NetworkSettings.port, 1, 65535),
        interface=s.get_str("interface", NetworkSettings.interface),
        transfer_host=_ip(s.get_str("transfer_host", NetworkSettings.transfer_host),
                          "network.transfer_host"),
        transfer_port=s.get_int("transfer_port", 0, 0, 65535),
        fleet_key_file=s.path("fleet_key_file", base),
        replay_window_s=s.get_float("replay_window_s", 30.0, 1.0, 3600.0),
    )
    s.done()
    if result.fleet_key_file is not None:
        read_fleet_key(result.fleet_key_file)
    return result


_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NATS_URL = re.compile(r"^(nats|tls)://([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])"
                       r"(:[0-9]{1,5})?$")
MAX_NATS_SERVERS = 16


def subject_token(label: str) -> str:
    """One NATS subject token from a topology label: ``.``, ``/``, ``:`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", label)[:64] or "_"


def _subject_prefix(value: str) -> str:
    tokens = value.split(".")
    if not 1 <= len(tokens) <= 8 or not all(_SUBJECT_TOKEN.match(t) for t in tokens):
        raise ConfigError("transport.subject_prefix must be 1-8 dot-separated tokens of "
                          "[A-Za-z0-9_-] (no wildcards, no empty tokens)", value=value)
    return value


def _nats_servers(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("transport.nats_servers must be a list of URLs")
    if len(value) > MAX_NATS_SERVERS:
        raise ConfigError("transport.nats_servers lists too many servers",
                          count=len(value), limit=MAX_NATS_SERVERS)
    for url in value:
        match = _NATS_URL.match(url)
        if match is None or (match.group(3) and not 1 <= int(match.group(3)[1:]) <= 65535):
            raise ConfigError("transport.nats_servers entries must be nats://host:port or "
                              "tls://host:port (no credentials in the URL)", value=url[:200])
    return tuple(value)


def _readable(path: Path | None, key: str) -> Path | None:
    if path is not None and not path.is_file():
        raise ConfigError(f"{key} is not a readable file", path=str(path))
    return path


def _transport(s: _Section, base: Path) -> TransportSettings:
    d = TransportSettings()
    kind = s.choice("kind", d.kind, ("udp", "nats", "both"))
    user, password = s.get_str("user"), s.get_str("password")
    result = TransportSettings(
        kind=kind,
        nats_servers=_nats_servers(s.raw("nats_servers", [])),
        subject_prefix=_subject_prefix(s.get_str("subject_prefix", d.subject_prefix)),
        site=s.get_str("site", d.site),
        multicast_fallback=s.get_bool("multicast_fallback", d.multicast_fallback),
        user=user, password=password,
        nkey_seed_file=_readable(s.path("nkey_seed_file", base), "transport.nkey_seed_file"),
        tls_ca_file=_readable(s.path("tls_ca_file", base), "transport.tls_ca_file"),
        tls_cert_file=_readable(s.path("tls_cert_file", base), "transport.tls_cert_file"),
        tls_key_file=_readable(s.path("tls_key_file", base), "transport.tls_key_file"),
        connect_timeout_s=s.get_float("connect_timeout_s", d.connect_timeout_s, 0.1, 60.0),
        reconnect_wait_s=s.get_float("reconnect_wait_s", d.reconnect_wait_s, 0.05, 60.0),
        reconnect_max_s=s.get_float("reconnect_max_s", d.reconnect_max_s, 0.05, 600.0),
        rack=s.get_str("rack"),
        rack_first_delay_s=s.get_float("rack_first_delay_s", d.rack_first_delay_s, 0.0, 2.0),
    )
    s.done()
    check_transport(result)
    return result


def check_transport(t: TransportSettings) -> None:
    """The cross-field rules of ``[transport]``; ConfigError naming the first broken one."""
    if t.kind != "udp" and not t.nats_servers:
        raise ConfigError(f"transport.kind = \"{t.kind}\" needs transport.nats_servers")
    if not _SUBJECT_TOKEN.match(t.site):
        raise ConfigError("transport.site must be one subject token of [A-Za-z0-9_-]",
                          value=t.site)
    if t.site == "ep":
        raise ConfigError("transport.site \"ep\" is reserved (unicast subjects P.ep.*)")
    if t.rack is not None and not _SUBJECT_TOKEN.match(t.rack):
        raise ConfigError("transport.rack must be one subject token of [A-Za-z0-9_-]",
                          value=t.rack)
    _subject_prefix(t.subject_prefix)
    if (t.user is None) != (t.password is None):
        raise ConfigError("transport.user and transport.password go together")
    if t.user is not None and t.nkey_seed_file is not None:
        raise ConfigError("choose one NATS credential: user/password or nkey_seed_file")
    if (t.tls_cert_file is None) != (t.tls_key_file is None):
        raise ConfigError("transport.tls_cert_file and tls_key_file go together")
    if t.reconnect_max_s < t.reconnect_wait_s:
        raise ConfigError("transport.reconnect_max_s must be >= reconnect_wait_s")


def _timers(s: _Section) -> TimerSettings:
    d = TimerSettings()
    result = TimerSettings(
        startup_jitter=s.get_float("startup_jitter", d.startup_jitter, 0, 60),
        offer_window=s.get_float("offer_window", d.offer_window, 0, 60),
        backoff_initial=s.get_float("backoff_initial", d.backoff_initial, 0.01, 600),
        backoff_max=s.get_float("backoff_max", d.backoff_max, 0.01, 3600),
        max_solicits=s.get_int("max_solicits", d.max_solicits, 1, 1000),
        accept_timeout=s.get_float("accept_timeout", d.accept_timeout, 0.01, 600),
        enough_offers=s.get_int("enough_offers", d.enough_offers, 1, 1000),
    )
    s.done()
    from fwrescue.protocol.recipient import RecipientTimers

    try:  # the protocol's own cross-field rules (e.g. the offer window closes before a retry)
        RecipientTimers(**dataclasses.asdict(result))
    except ConfigError as e:
        raise ConfigError(f"[timers] {e.message}", **e.fields) from e
    return result


def _donor(s: _Section) -> DonorSettings:
    result = DonorSettings(
        enabled=s.get_bool("enabled", True),
        max_uploads=s.get_int("max_uploads", 4, 1, 1024),
        lease_s=s.get_float("lease_s", 30.0, 1.0, 3600.0),
        rate_limit_bps=s.get_int("rate_limit_bps", 0, 0, 10**11),
        console_offer_delay_s=s.get_float("console_offer_delay_s", 0.1, 0.0, 60.0),
        suppress_after=s.get_int("suppress_after", 3, 1, 1000),
        breaker_failures=s.get_int("breaker_failures", 3, 1, 10_000),
        egress_cap_images=s.get_float("egress_cap_images", 0.0, 0.0, 1000.0),
        defer_offers_s=s.get_float("defer_offers_s", 2.0, 0.0, 60.0),
        max_holders=s.get_int("max_holders", 0, 0, 1024),
        upload_queue_s=s.get_float("upload_queue_s", 0.0, 0.0, 60.0),
    )
    s.done()
    return result


def _flash(s: _Section, base: Path) -> FlashSettings:
    kind = s.choice("kind", "file", ("file", "flashrom"))
    result = FlashSettings(
        kind=kind,
        path=s.path("path", base),
        programmer=s.get_str("programmer"),
        chip_size=s.get_int("chip_size", 0),
        region_offset=s.get_int("region_offset", 0),
        region_size=s.get_int("region_size", 0),
        bank_b_offset=s.get_int("bank_b_offset", 0),
        marker_offset=s.get_int("marker_offset", 0),
        timing_chip=s.get_str("timing_chip"),
        timing_scale=s.get_float("timing_scale", 0.0, 0.0, 100.0),
    )
    s.done()
    if kind == "file" and result.path is None:
        raise ConfigError("a file flash needs flash.path")
    if kind == "flashrom" and not result.programmer:
        raise ConfigError("a flashrom flash needs flash.programmer")
    if bool(result.bank_b_offset) != bool(result.marker_offset):
        raise ConfigError("a dual-bank flash needs both bank_b_offset and marker_offset")
    if result.bank_b_offset and (kind != "file" or not result.region_size):
        raise ConfigError("dual banks need a file flash and flash.region_size")
    return result


def _host(s: _Section, base: Path) -> HostSettings:
    d = HostSettings()
    result = HostSettings(
        kind=s.choice("kind", d.kind, ("virtual", "qemu", "none")),
        flash_mode=s.choice("flash_mode", d.flash_mode, ("dc-off", "dc-on")),
        boot_timeout=s.get_float("boot_timeout", d.boot_timeout, 0.1, 3600),
        boot_pattern=s.get_str("boot_pattern", d.boot_pattern),
        vars_path=s.path("vars_path", base),
        accel=s.choice("accel", d.accel, ("auto", "kvm", "tcg")),
    )
    s.done()
    try:
        re.compile(result.boot_pattern)
    except re.error as e:
        raise ConfigError("host.boot_pattern is not a valid regular expression") from e
    return result


def _target(data: object, base: Path, index: int) -> TargetConfig:
    s = _Section(data, f"targets[{index}]")
    sources = s.raw("sources", [])
    if not isinstance(sources, list) or not all(isinstance(x, dict) for x in sources):
        raise ConfigError(f"targets[{index}].sources must be a list of tables")
    resolved = []
    for spec in sources:
        spec = dict(spec)
        if isinstance(spec.get("path"), str):
            spec["path"] = str((base / spec["path"]).resolve())
        resolved.append(spec)
    result = TargetConfig(
        name=_identifier(s.get_str("name", "bios"), f"targets[{index}].name"),
        flash=_flash(s.table("flash"), base),
        host=_host(s.table("host"), base),
        sources=tuple(resolved),
        network=s.get_bool("network", True),
        check_interval_s=s.get_float("check_interval_s", 0.0, 0.0, 86400.0),
    )
    s.done()
    return result


def _multicast(value: str | None, key: str) -> str | None:
    if value is None:
        return None
    try:
        ok = ipaddress.ip_address(value).version == 4 and ipaddress.ip_address(value).is_multicast
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{key} must be an IPv4 multicast address", value=str(value)[:64])
    return value


def _redfish(s: _Section) -> RedfishSettings:
    users_raw = s.raw("users", [])
    users = []
    if not isinstance(users_raw, list):
        raise ConfigError("redfish.users must be a list of tables")
    for i, u in enumerate(users_raw):
        us = _Section(u, f"redfish.users[{i}]")
        role = us.choice("role", "ReadOnly", ("Administrator", "Operator", "ReadOnly"))
        users.append((_identifier(us.get_str("name"), f"redfish.users[{i}].name"),
                      str(us.get_str("password", "")), role))
        us.done()
    result = RedfishSettings(
        enabled=s.get_bool("enabled", False),
        host=_ip(s.get_str("host", "127.0.0.1"), "redfish.host"),
        port=s.get_int("port", 0, 0, 65535),
        tls=s.get_bool("tls", True),
        users=tuple(users),
        ssdp_group=_multicast(s.get_str("ssdp_group"), "redfish.ssdp_group"),
        ssdp_port=s.get_int("ssdp_port", 1900, 1, 65535),
        ssdp_interval_s=s.get_float("ssdp_interval_s", 30.0, 1.0, 3600.0),
    )
    s.done()
    return result


def parse_config(data: Mapping[str, Any], base: Path) -> AgentConfig:
    """Build an AgentConfig from parsed TOML; raise ConfigError on any bad or unknown key."""
    root = _Section(dict(data), "root")
    agent = root.table("agent")
    trust = agent.raw("trust", [])
    if not isinstance(trust, list) or not trust or not all(isinstance(t, str) for t in trust):
        raise ConfigError("agent.trust must list at least one public key file or folder")
    policy = root.table("policy")
    policy_name = policy.get_str("name", "newest")
    policy_options = {k: v for k, v in policy._data.items() if k != "name"}
    policy._used.update(policy_options)
    targets_raw = root.raw("targets", [])
    if not isinstance(targets_raw, list) or not targets_raw:
        raise ConfigError("at least one [[targets]] table is required")
    targets = tuple(_target(t, base, i) for i, t in enumerate(targets_raw))
    if len({t.name for t in targets}) != len(targets):
        raise ConfigError("target names must be unique")
    node_id = _identifier(agent.get_str("node_id"), "agent.node_id")
    tls = parse_tls(root.raw("tls"), root.raw("transfer"), base, node_id)
    config = AgentConfig(
        node_id=node_id,
        machine_name=_identifier(agent.get_str("machine_name"), "agent.machine_name"),
        state_dir=agent.path("state_dir", base, "state") or base / "state",
        trust=tuple((base / t).resolve() for t in trust),
        topology=agent.get_str("topology", "") or "",
        max_image_size=agent.get_int("max_image_size", 64 * 1024 * 1024, 4096, 2**31),
        fleet_floors=_fleet_floors(agent.raw("fleet_floor", {})),
        policy=policy_name,
        policy_options=policy_options,
        network=dataclasses.replace(_network(root.table("network"), base),
                                    transport=_transport(root.table("transport"), base),
                                    tls=tls),
        timers=_timers(root.table("timers")),
        donor=_donor(root.table("donor")),
        targets=targets,
        redfish=_redfish(root.table("redfish")),
        baseline_retry_initial_s=agent.get_float("baseline_retry_initial_s", 30.0, 0.01,
                                                 86400),
        baseline_retry_max_s=agent.get_float("baseline_retry_max_s", 1800.0, 0.01,
                                             7 * 86400),
    )
    if config.baseline_retry_max_s < config.baseline_retry_initial_s:
        raise ConfigError("agent.baseline_retry_max_s must be >= baseline_retry_initial_s")
    for section in (agent, policy, root):
        section.done()
    return config


def parse_network(data: Mapping[str, Any], base: Path) -> NetworkSettings:
    """Validate a ``[network]`` table on its own (the console donor's command line)."""
    return _network(_Section(dict(data), "network"), base)


def parse_transport_file(path: Path) -> TransportSettings:
    """The ``[transport]`` table of a TOML file on its own (the console donor's
    ``--transport-config``); paths resolve against the file's folder. Raises ConfigError."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError("cannot read the transport config", path=str(path),
                          detail=str(e)) from e
    return _transport(_Section(data.get("transport", {}), "transport"), path.parent.resolve())


def load_config(path: Path) -> AgentConfig:
    """Read and validate a TOML config file."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("cannot read config file", path=str(path), detail=str(e)) from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
        # tomllib decodes the whole file as UTF-8 and nests arrays by recursion
        raise ConfigError("config file is not valid TOML", path=str(path),
                          detail=str(e)[:200]) from e
    return parse_config(data, path.parent.resolve())
