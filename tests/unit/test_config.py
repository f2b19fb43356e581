"""Config files: a good one parses; a bad one names the key and starts nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwrescue.config import load_config
from fwrescue.errors import ConfigError

GOOD = """
[agent]
node_id = "node-1"
machine_name = "board-a"
state_dir = "state"
trust = ["keys"]
topology = "rack1"

[policy]
name = "pinned"
pinned_version = "1.2.0"

[network]
port = 17777

[[targets]]
name = "bios"
flash = { kind = "file", path = "bios.img" }
host = { kind = "virtual", flash_mode = "dc-on", boot_timeout = 5 }
sources = [ { kind = "usb", path = "usb" } ]

[[targets]]
name = "cpld"
flash = { kind = "flashrom", programmer = "dummy:emulate=W25Q128FV,image=cpld.img" }
host = { kind = "none" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_good_config_resolves_paths_and_sections(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.node_id == "node-1"
    assert config.state_dir == (tmp_path / "state").resolve()
    assert config.policy == "pinned" and config.policy_options == {"pinned_version": "1.2.0"}
    assert config.network.port == 17777
    bios, cpld = config.targets
    assert bios.flash.path == (tmp_path / "bios.img").resolve()
    assert bios.host.flash_mode == "dc-on"
    assert bios.sources[0]["path"] == str((tmp_path / "usb").resolve())
    assert cpld.flash.kind == "flashrom" and cpld.host.kind == "none"


@pytest.mark.parametrize(("edit", "message"), [
    (("port = 17777", "port = 70000"), "network.port out of range"),
    (("port = 17777", "prot = 1"), "unknown keys"),
    (('name = "cpld"', 'name = "bios"'), "unique"),
    (('machine_name = "board-a"', 'machine_name = "../etc"'), "machine_name"),
    (('flash_mode = "dc-on"', 'flash_mode = "sideways"'), "flash_mode"),
    (('boot_timeout = 5', 'boot_timeout = "soon"'), "wrong type"),
])
def test_bad_values_name_the_key(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    text = GOOD.replace(*edit)
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_non_multicast_group_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="multicast"):
        load_config(write(tmp_path, GOOD.replace("port = 17777", 'group = "10.1.2.3"')))


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TOML"):
        load_config(write(tmp_path, "[agent\n"))


def test_the_shipped_example_config_loads_and_its_sources_build() -> None:
    from fwrescue.sources.ladder import build_sources

    example = Path(__file__).resolve().parents[2] / "examples" / "agent.toml"
    config = load_config(example)
    assert [t.name for t in config.targets] == ["bios", "cpld"]
    assert config.redfish.enabled and config.redfish.users[1][2] == "ReadOnly"
    sources = build_sources(list(config.targets[0].sources))
    assert [type(s).__name__ for s in sources][-1] == "HttpSource"


def test_timers_the_protocol_would_refuse_are_refused_at_load(tmp_path: Path) -> None:
    text = GOOD + "\n[timers]\noffer_window = 0.2\nbackoff_initial = 0.2\n"
    with pytest.raises(ConfigError, match=r"\[timers\]"):
        load_config(write(tmp_path, text))


def test_fleet_floor_and_fleet_key_are_validated(tmp_path: Path) -> None:
    text = GOOD.replace('topology = "rack1"', 'topology = "rack1"\nfleet_floor = { bios = 4 }')
    assert load_config(write(tmp_path, text)).fleet_floors == {"bios": 4}
    bad = GOOD.replace('topology = "rack1"', 'topology = "rack1"\nfleet_floor = { bios = -1 }')
    with pytest.raises(ConfigError, match="fleet_floor"):
        load_config(write(tmp_path, bad))
    (tmp_path / "fleet.key").write_text("\n")
    keyed = GOOD.replace("port = 17777", 'port = 17777\nfleet_key_file = "fleet.key"')
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        load_config(write(tmp_path, keyed))
    (tmp_path / "fleet.key").write_text("0123456789abcdef0123\n")
    assert load_config(write(tmp_path, keyed)).network.fleet_key_file is not None


# --- the messages pydantic's errors become (config/messages.py) -------------------------------

NATS_URLS = ", ".join(f'"nats://10.0.0.{i}:4222"' for i in range(17))


@pytest.mark.parametrize(("edit", "message", "fields"), [
    (("port = 17777", "port = 70000"), "network.port out of range",
     {"value": 70000, "hi": 65535}),
    (("port = 17777", "port = 0"), "network.port out of range", {"value": 0, "lo": 1}),
    (('kind = "flashrom"', 'kind = "eeprom"'),
     "targets[1].flash.kind must be one of 'file' or 'flashrom'", {"value": "eeprom"}),
    (("port = 17777", "prot = 1\ncolour = 2"), "unknown keys in [root.network]",
     {"keys": ["colour", "prot"]}),
    (('host = { kind = "none" }', 'host = { kind = "none", speed = 1 }'),
     "unknown keys in [root.targets[1].host]", {"keys": ["speed"]}),
    (('node_id = "node-1"\n', ""), "agent.node_id is required", {}),
    (('trust = ["keys"]', "trust = []"), "agent.trust must list at least 1 entry", {}),
    (('boot_timeout = 5', 'boot_timeout = true'),
     "targets[0].host.boot_timeout has the wrong type", {"expected": "number"}),
    (("port = 17777", "port = 17777\ntransport = {}"),
     "network.transport is set by the [transport] table, not in this table", {}),
    (('flash = { kind = "file", path = "bios.img" }', 'flash = { kind = "file" }'),
     "targets[0].flash.path is required by a file flash", {}),
    (('name = "cpld"', 'name = "bios"'), "targets[].name must be unique",
     {"names": ["bios"]}),
    (("[network]", f"[transport]\nnats_servers = [{NATS_URLS}]\n[network]"),
     "transport.nats_servers lists too many entries", {"count": 17, "limit": 16}),
    (("[network]", '[redfish]\nusers = [{ name = "a", role = "Root" }]\n[network]'),
     "redfish.users[0].role must be one of", {"value": "Root"}),
    (("[network]", '[redfish]\nusers = [{ name = "a", pin = 1 }]\n[network]'),
     "unknown keys in [root.redfish.users[0]]", {"keys": ["pin"]}),
    (("[network]", '[redfish]\nssdp_group = "ff02::c"\n[network]'),
     "redfish.ssdp_group must be an IPv4 multicast address", {"value": "ff02::c"}),
    (('path = "bios.img"', 'path = "bios\\u0000.img"'),  # was a ValueError from resolve()
     "targets[0].flash.path is not a usable path", {"detail": "embedded null byte"}),
    (('boot_timeout = 5', 'boot_timeout = 1' + '0' * 400),  # was an OverflowError
     "targets[0].host.boot_timeout has the wrong type", {"expected": "number"}),
])
def test_errors_name_the_key_path_the_fault_and_the_limit(
        tmp_path: Path, edit: tuple[str, str], message: str, fields: dict[str, object]) -> None:
    assert edit[0] in GOOD
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, GOOD.replace(*edit, 1)))
    assert caught.value.message.startswith(message), caught.value.message
    assert {k: caught.value.fields.get(k) for k in fields} == fields


def test_more_targets_than_the_named_limit_are_refused(tmp_path: Path) -> None:
    from fwrescue.config.fields import MAX_TARGETS

    extra = "".join(f'\n[[targets]]\nname = "t{i}"\nflash = {{ kind = "file", path = "t{i}" }}'
                    f'\nhost = {{ kind = "none" }}\n' for i in range(MAX_TARGETS - 1))
    with pytest.raises(ConfigError, match="targets lists too many entries"):
        load_config(write(tmp_path, GOOD + extra))
    assert len(load_config(write(tmp_path, GOOD + extra[:extra.rindex("[[targets]]")]))
               .targets) == MAX_TARGETS


def test_parse_network_and_the_transport_file_name_their_own_tables(tmp_path: Path) -> None:
    from fwrescue.config import parse_network, parse_transport_file

    with pytest.raises(ConfigError, match=r"unknown keys in \[root\.network\]"):
        parse_network({"prot": 1}, tmp_path)
    assert parse_network({"port": 1234}, tmp_path).port == 1234
    path = tmp_path / "nats.toml"
    path.write_text('[transport]\nkind = "nats"\nnats_servers = ["nats://127.0.0.1:4222"]\n'
                    'tls_ca_file = "ca.pem"\n')
    with pytest.raises(ConfigError, match=r"^transport\.tls_ca_file is not a readable file"):
        parse_transport_file(path)
    (tmp_path / "ca.pem").write_text("pem")
    assert parse_transport_file(path).tls_ca_file == (tmp_path / "ca.pem").resolve()
    path.write_bytes(b"[transport\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_transport_file(path)


def test_settings_stay_plain_dataclasses_and_toml_accounts_are_tuples(tmp_path: Path) -> None:
    import dataclasses

    from fwrescue.config import RedfishSettings

    config = load_config(write(tmp_path, GOOD + '\n[redfish]\nusers = [{ name = "op" }]\n'))
    assert config.redfish.users == (("op", "", "ReadOnly"),)
    built = RedfishSettings(users=(("admin", "pw", "Administrator"),))  # code validates nothing
    assert dataclasses.replace(built, port=1).users == built.users
    assert dataclasses.replace(config.network, port=1).transport == config.transport
