"""redfish/ssdp.py: announcements are parsed strictly; a forged or foreign one is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwrescue.redfish.ssdp import notify_message, parse_notify

UUID = "12345678-1234-5678-1234-567812345678"


def test_a_genuine_announcement_round_trips() -> None:
    raw = notify_message("http://10.0.0.7:8443/redfish/v1/", UUID, "239.255.255.250", 1900)
    ann = parse_notify(raw, "10.0.0.7")
    assert ann.base_url == "http://10.0.0.7:8443"


@pytest.mark.parametrize(("raw", "source", "why"), [
    (notify_message("http://10.0.0.7:8443/redfish/v1/", UUID, "g", 1), "10.0.0.9", "sender"),
    (notify_message("http://10.0.0.7/redfish/v1/", UUID, "g", 1), "10.0.0.7", "port"),
    (notify_message("ftp://10.0.0.7:21/redfish/v1/", UUID, "g", 1), "10.0.0.7", "AL"),
    (notify_message("http://10.0.0.7:80/other/", UUID, "g", 1), "10.0.0.7", "AL"),
    (notify_message("http://10.0.0.7:80/redfish/v1/", "bad", "g", 1), "10.0.0.7", "USN"),
    (b"M-SEARCH * HTTP/1.1\r\n\r\n", "10.0.0.7", "NOTIFY"),
    (b"NOTIFY * HTTP/1.1\r\nNT: upnp:rootdevice\r\nNTS: ssdp:alive\r\n\r\n", "10.0.0.7",
     "Redfish"),
    (b"\xff" * 10, "10.0.0.7", "ASCII"),
    (b"N" * 5000, "10.0.0.7", "large"),
])
def test_bad_announcements_are_refused(raw: bytes, source: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_notify(raw, source)


def test_agent_config_ssdp_group_must_be_multicast(tmp_path: Path) -> None:
    from fwrescue.config import load_config
    from fwrescue.errors import ConfigError
    from tests.unit.test_config import GOOD, write

    good = GOOD + '\n[redfish]\nssdp_group = "239.255.255.250"\nssdp_port = 1900\n'
    assert load_config(write(tmp_path, good)).redfish.ssdp_group == "239.255.255.250"
    with pytest.raises(ConfigError, match=r"redfish\.ssdp_group"):
        load_config(write(tmp_path, GOOD + '\n[redfish]\nssdp_group = "10.0.0.1"\n'))
