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

[transfer]
plain_http = true

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


def test_the_shipped_example_config_loads_and_its_sources_build(tmp_path: Path) -> None:
    from fwrescue.sources.ladder import build_sources
    from fwrescue.trust.fleet_ca_cli import init_ca, issue_node

    shipped = Path(__file__).resolve().parents[2] / "examples" / "agent.toml"
    example = tmp_path / "agent.toml"  # beside the certificates its [tls] names
    example.write_text(shipped.read_text())
    init_ca(tmp_path / "fleet-ca")
    issue_node(tmp_path / "fleet-ca", "bmc-r1-07", tmp_path / "tls" / "bmc-r1-07")
    config = load_config(example)
    assert config.network.tls is not None
    assert config.network.tls.cert == (tmp_path / "tls" / "bmc-r1-07.pem").resolve()
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
