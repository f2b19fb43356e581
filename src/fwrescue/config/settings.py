"""The settings classes: one frozen dataclass per TOML table, and its schema.

Each field's annotation carries its TOML type and limits for pydantic (``fields.py``);
for everyone else they are plain dataclasses (``dataclasses.replace`` works, and building
one in code validates nothing, as before). Only the TOML loader (``load.py``) validates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import Field, GetPydanticSchema, StrictBool, StrictFloat, StrictInt, StrictStr

from fwrescue.config.fields import (
    DAY,
    HOUR,
    MAX_RATE_BPS,
    MAX_REDFISH_USERS,
    MAX_UPLOADS,
    TABLE,
    Count,
    FleetKeyFile,
    Identifier,
    IpAddress,
    Ipv4Multicast,
    Multicast,
    NatsServers,
    Offset,
    Port,
    PortOrAny,
    ReadableFile,
    Regex,
    RelPath,
    Sources,
    SubjectPrefix,
    SubjectToken,
    not_in_this_table,
    one_of,
    subject_token,
)


@dataclass(frozen=True)
class TransportSettings:
    """``[transport]``: what carries the negotiation (docs/protocol.md, "NATS transport").

    ``kind`` is ``udp`` (multicast on one segment, the default), ``nats`` (a NATS cluster;
    multicast only while no broker is reachable, if ``multicast_fallback``) or ``both``
    (a bridge-free dual stack: every group message on both, replies on the link they came
    from, duplicates dropped by the codec's replay cache).
    """

    __pydantic_config__ = TABLE

    kind: Annotated[str, one_of("udp", "nats", "both")] = "udp"
    nats_servers: NatsServers = ()
    subject_prefix: SubjectPrefix = "fwrescue.v1"
    site: SubjectToken = "default"
    multicast_fallback: StrictBool = True
    user: StrictStr | None = None
    password: StrictStr | None = None
    nkey_seed_file: ReadableFile | None = None
    tls_ca_file: ReadableFile | None = None
    tls_cert_file: ReadableFile | None = None
    tls_key_file: ReadableFile | None = None
    connect_timeout_s: Annotated[StrictFloat, Field(ge=0.1, le=60.0)] = 2.0
    # first retry after a lost connection; doubles …
    reconnect_wait_s: Annotated[StrictFloat, Field(ge=0.05, le=60.0)] = 0.5
    reconnect_max_s: Annotated[StrictFloat, Field(ge=0.05, le=600.0)] = 10.0  # … up to this
    # The rack's subject token (docs/protocol.md, "Subjects"); None: the agent's topology
    # label as a token (filled in by AgentConfig), or no rack at all (the console).
    rack: SubjectToken | None = None
    # How much later a racked link hears a SOLICIT from another rack than from its own.
    rack_first_delay_s: Annotated[StrictFloat, Field(ge=0.0, le=2.0)] = 0.1
    # The NATS connection's name (None: "fwrescue"; AgentConfig fills in the node id). One
    # connection per event loop and TransportSettings: so one per agent (transport/nats.py).
    connection_name: Annotated[str | None, not_in_this_table("[agent] node_id")] = None


@dataclass(frozen=True)
class NetworkSettings:
    """``[network]``: the multicast group, the transfer endpoint, the fleet key."""

    __pydantic_config__ = TABLE

    group: Multicast = "239.255.77.77"
    port: Port = 17700
    interface: IpAddress = "127.0.0.1"
    transfer_host: IpAddress = "127.0.0.1"
    transfer_port: PortOrAny = 0
    fleet_key_file: FleetKeyFile | None = None
    replay_window_s: Annotated[StrictFloat, Field(ge=1.0, le=HOUR)] = 30.0
    # From the top-level [transport] table; kept here so every open_link() caller (the
    # recipient, the donor service, the console) gets it without a new parameter.
    transport: Annotated[TransportSettings, not_in_this_table("the [transport] table")] = (
        TransportSettings())


@dataclass(frozen=True)
class TimerSettings:
    """Negotiation timers (seconds); the shape of RFC 2131's, scaled for a fast LAN."""

    __pydantic_config__ = TABLE

    startup_jitter: Annotated[StrictFloat, Field(ge=0.0, le=60.0)] = 0.5
    offer_window: Annotated[StrictFloat, Field(ge=0.0, le=60.0)] = 0.4
    backoff_initial: Annotated[StrictFloat, Field(ge=0.01, le=600.0)] = 1.0
    backoff_max: Annotated[StrictFloat, Field(ge=0.01, le=HOUR)] = 16.0
    max_solicits: Count = 8
    accept_timeout: Annotated[StrictFloat, Field(ge=0.01, le=600.0)] = 1.0
    enough_offers: Count = 16


@dataclass(frozen=True)
class DonorSettings:
    """``[donor]``: what this agent serves to others, and how much."""

    __pydantic_config__ = TABLE

    enabled: StrictBool = True
    max_uploads: Annotated[StrictInt, Field(ge=1, le=MAX_UPLOADS)] = 4
    lease_s: Annotated[StrictFloat, Field(ge=1.0, le=HOUR)] = 30.0
    rate_limit_bps: Annotated[StrictInt, Field(ge=0, le=MAX_RATE_BPS)] = 0  # 0 = unshaped
    # A console answers after peers (extra offer delay) and stays quiet once it overhears
    # this many offers for a solicit, so the console serves only what peers cannot.
    console_offer_delay_s: Annotated[StrictFloat, Field(ge=0.0, le=60.0)] = 0.1
    suppress_after: Count = 3
    # Fleet circuit breaker: withhold an image after this many distinct recipients
    # reported that it did not boot (docs/protocol.md, REPORT).
    breaker_failures: Annotated[StrictInt, Field(ge=1, le=10_000)] = 3
    # Seed of last resort (a console): once it sent this many images' worth of one image
    # and heard a complete peer offer it, it stops serving it (0 = never caps).
    egress_cap_images: Annotated[StrictFloat, Field(ge=0.0, le=1000.0)] = 0.0
    # Deferred offers: a solicit this donor cannot answer yet (full, or the image not held
    # yet) is remembered this long and answered as soon as it can be (0 = off).
    defer_offers_s: Annotated[StrictFloat, Field(ge=0.0, le=60.0)] = 2.0
    # Upload slot rotation (docs/transfer.md): admit this many token holders (0 = as many
    # as max_uploads); a body request finding all max_uploads busy waits its turn up to
    # upload_queue_s (0 = 503 at once), so holders share the shaped link in turn.
    max_holders: Annotated[StrictInt, Field(ge=0, le=MAX_UPLOADS)] = 0
    upload_queue_s: Annotated[StrictFloat, Field(ge=0.0, le=60.0)] = 0.0


@dataclass(frozen=True)
class FlashSettings:
    """``flash = {…}`` of one target: the chip and the region fwrescue owns."""

    __pydantic_config__ = TABLE

    kind: Annotated[str, one_of("file", "flashrom")] = "file"
    path: RelPath | None = None  # file backend: the raw image; flashrom dummy: its image file
    programmer: StrictStr | None = None  # flashrom programmer string
    chip_size: Offset = 0  # file backend: size of the chip (0 = the file's size)
    region_offset: Offset = 0
    region_size: Offset = 0  # 0 = to the end of the chip
    # Dual bank: the region above is bank A; bank B (same size) at bank_b_offset; a marker of
    # two erase sectors at marker_offset says which bank is active (flash/layout.py).
    bank_b_offset: Offset = 0  # 0 = single bank
    marker_offset: Offset = 0
    timing_chip: StrictStr | None = None  # timing model of a real part, e.g. "W25Q256JV"
    timing_scale: Annotated[StrictFloat, Field(ge=0.0, le=100.0)] = 0.0


@dataclass(frozen=True)
class HostSettings:
    """``host = {…}`` of one target: what boots the image, and how it is held to flash."""

    __pydantic_config__ = TABLE

    kind: Annotated[str, one_of("virtual", "qemu", "none")] = "virtual"
    flash_mode: Annotated[str, one_of("dc-off", "dc-on")] = "dc-off"
    boot_timeout: Annotated[StrictFloat, Field(ge=0.1, le=HOUR)] = 30.0
    boot_pattern: Regex = r"Shell>|UEFI Interactive Shell"
    vars_path: RelPath | None = None
    accel: Annotated[str, one_of("auto", "kvm", "tcg")] = "auto"


@dataclass(frozen=True)
class TargetConfig:
    """One managed firmware target (``[[targets]]``): the host BIOS, or a device served by
    proxy."""

    __pydantic_config__ = TABLE

    name: Identifier = "bios"
    flash: FlashSettings = FlashSettings()
    host: HostSettings = HostSettings()
    sources: Sources = ()
    network: StrictBool = True  # solicit donors when no predetermined source has a package
    # periodic integrity check; 0 = off
    check_interval_s: Annotated[StrictFloat, Field(ge=0.0, le=DAY)] = 0.0


class RedfishUser(NamedTuple):
    """``[[redfish.users]]``: one account (a tuple: ``name, password, role``)."""

    name: Identifier
    password: StrictStr = ""
    role: Annotated[str, one_of("Administrator", "Operator", "ReadOnly")] = "ReadOnly"


# Code builds accounts as plain (name, password, role) tuples; TOML as RedfishUser tables.
_AS_USERS = GetPydanticSchema(lambda _t, handler: handler(tuple[RedfishUser, ...]))


@dataclass(frozen=True)
class RedfishSettings:
    """``[redfish]``: the BMC's Redfish service and its accounts."""

    __pydantic_config__ = TABLE

    enabled: StrictBool = False
    host: IpAddress = "127.0.0.1"
    port: PortOrAny = 0
    tls: StrictBool = True
    users: Annotated[tuple[tuple[str, str, str], ...], _AS_USERS,
                     Field(max_length=MAX_REDFISH_USERS)] = ()  # (name, password, role)
    # SSDP announcements of the service root (redfish/ssdp.py); None: do not announce
    ssdp_group: Ipv4Multicast | None = None
    ssdp_port: Port = 1900
    ssdp_interval_s: Annotated[StrictFloat, Field(ge=1.0, le=HOUR)] = 30.0


@dataclass(frozen=True)
class AgentConfig:
    """A whole agent: ``[agent]`` and ``[policy]`` flattened, the other tables nested."""

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
