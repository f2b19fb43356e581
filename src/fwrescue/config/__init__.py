"""Agent configuration: TOML -> frozen dataclasses, every limit named, validated once.

The schema is the settings classes themselves (``settings.py``: one per TOML table, each
field annotated with its type and limits), validated by pydantic (``load.py``); the checks
pydantic cannot express live in ``fields.py``; ``messages.py`` words its errors. A bad file
raises :class:`~fwrescue.errors.ConfigError` naming the key, before anything starts.
Relative paths are resolved against the config file's folder. See ``docs/operations.md``
for a complete annotated example.
"""

from __future__ import annotations

from fwrescue.config.fields import MAX_FLEET_KEY, MIN_FLEET_KEY, read_fleet_key, subject_token
from fwrescue.config.load import (
    check_transport,
    load_config,
    parse_config,
    parse_network,
    parse_transport_file,
)
from fwrescue.config.settings import (
    AgentConfig,
    DonorSettings,
    FlashSettings,
    HostSettings,
    NetworkSettings,
    RedfishSettings,
    RedfishUser,
    TargetConfig,
    TimerSettings,
    TransportSettings,
)

__all__ = [
    "MAX_FLEET_KEY",
    "MIN_FLEET_KEY",
    "AgentConfig",
    "DonorSettings",
    "FlashSettings",
    "HostSettings",
    "NetworkSettings",
    "RedfishSettings",
    "RedfishUser",
    "TargetConfig",
    "TimerSettings",
    "TransportSettings",
    "check_transport",
    "load_config",
    "parse_config",
    "parse_network",
    "parse_transport_file",
    "read_fleet_key",
    "subject_token",
]
