"""``[transport]``: a good table parses; a bad subject, server URL or credential is a
specific ConfigError at load or at link construction, before anything connects."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fwrescue.config import NetworkSettings, TransportSettings, load_config
from fwrescue.errors import ConfigError
from fwrescue.transport.link import DualLink, open_link
from fwrescue.transport.nats import NatsLink, NatsOptions, group_subject
from fwrescue.transport.udp import UdpMulticastLink
from tests.unit.test_config import GOOD, write

NATS = '[transport]\nkind = "nats"\nnats_servers = ["nats://127.0.0.1:4222"]\n'


def test_default_is_udp_and_old_configs_keep_working(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.transport == TransportSettings() and config.transport.kind == "udp"
    assert isinstance(open_link(config.network), UdpMulticastLink)


def test_a_nats_table_parses_and_picks_the_link(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD + NATS + 'site = "row-7"\n'
                               'subject_prefix = "acme.fwrescue.v1"\n'))
    t = config.transport
    assert (t.kind, t.nats_servers, t.site) == ("nats", ("nats://127.0.0.1:4222",), "row-7")
    link = open_link(config.network)
    assert isinstance(link, DualLink) and not link.always_multicast
    both = dataclasses.replace(config.network, transport=dataclasses.replace(t, kind="both"))
    assert isinstance(open_link(both), DualLink)
    only = dataclasses.replace(t, multicast_fallback=False)
    assert isinstance(open_link(dataclasses.replace(config.network, transport=only)), NatsLink)


@pytest.mark.parametrize(("table", "message"), [
    ('[transport]\nkind = "nats"\n', "needs transport.nats_servers"),
    ('[transport]\nkind = "carrier-pigeon"\n', "transport.kind must be one of"),
    (NATS + 'subject_prefix = "fwrescue.*"\n', "subject_prefix"),
    (NATS + 'subject_prefix = "a..b"\n', "subject_prefix"),
    (NATS + 'site = "row.7"\n', "transport.site"),
    (NATS + 'site = ">"\n', "transport.site"),
    (NATS + 'site = "ep"\n', "is reserved"),
    (NATS + 'rack = "r.1"\n', "transport.rack must be one subject token"),
    (NATS + 'rack_first_delay_s = 5\n', "rack_first_delay_s out of range"),
    ('[transport]\nkind = "nats"\nnats_servers = ["http://127.0.0.1:4222"]\n', "nats://"),
    ('[transport]\nkind = "nats"\nnats_servers = ["nats://u:p@127.0.0.1:4222"]\n', "nats://"),
    ('[transport]\nkind = "nats"\nnats_servers = "nats://127.0.0.1:4222"\n', "list of URLs"),
    (NATS + 'user = "bmc"\n', "user and transport.password go together"),
    (NATS + 'nkey_seed_file = "missing.nk"\n', "nkey_seed_file is not a readable file"),
    (NATS + 'tls_cert_file = "missing.pem"\n', "tls_cert_file is not a readable file"),
    (NATS + 'reconnect_wait_s = 5\nreconnect_max_s = 1\n', "reconnect_max_s"),
    (NATS + 'colour = "blue"\n', "unknown keys in [root.transport]"),
])
def test_bad_transport_values_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(write(tmp_path, GOOD + table))


def test_a_bad_nkey_seed_or_tls_file_is_an_error_before_connecting(tmp_path: Path) -> None:
    seed = tmp_path / "user.nk"
    seed.write_text("SUAM-not-a-seed\n")
    t = TransportSettings(kind="nats", nats_servers=("nats://127.0.0.1:4222",),
                          nkey_seed_file=seed)
    with pytest.raises(ConfigError, match="does not hold an nkey user seed"):
        NatsOptions.from_settings(t)
    pem = tmp_path / "ca.pem"
    pem.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load the NATS TLS files"):
        open_link(NetworkSettings(transport=dataclasses.replace(
            t, nkey_seed_file=None, tls_ca_file=pem)))


def test_a_genuine_nkey_seed_is_accepted(tmp_path: Path) -> None:
    import nkeys  # type: ignore[import-untyped]

    raw = bytes(range(32))
    seed = nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_USER).decode()
    path = tmp_path / "user.nk"
    path.write_text(seed + "\n")
    options = NatsOptions.from_settings(TransportSettings(
        kind="nats", nats_servers=("nats://127.0.0.1:4222",), nkey_seed_file=path))
    assert options.credentials == {"nkeys_seed_str": seed}


def test_group_subjects_route_by_type_target_and_board() -> None:
    from fwrescue.protocol.codec import Codec
    from fwrescue.protocol.messages import Solicit

    solicit = Solicit(xid=1, recipient_id="r.1", target="bios", machine_name="board.a",
                      installed_version=None, security_version=0, min_security_version=0,
                      topology=None, declined=())
    data = Codec().encode(solicit, 1000.0)
    assert group_subject("fwrescue.v1", "s1", data) == "fwrescue.v1.s1._.solicit.bios.board_a"
    assert group_subject("fwrescue.v1", "s1", data, "r-3") == \
        "fwrescue.v1.s1.r-3.solicit.bios.board_a"
    assert group_subject("fwrescue.v1", "s1", b"garbage") == "fwrescue.v1.s1._.other"


def test_the_rack_comes_from_transport_rack_or_the_topology_label_and_udp_is_unchanged(
        tmp_path: Path) -> None:
    from_topology = load_config(write(tmp_path, GOOD.replace('"rack1"', '"row2/rack.7"')
                                      + NATS))
    assert from_topology.transport.rack == "row2_rack_7"
    explicit = load_config(write(tmp_path, GOOD + NATS + 'rack = "r-9"\n'))
    assert explicit.transport.rack == "r-9"
    assert NatsOptions.from_settings(explicit.transport).rack == "r-9"
    udp = load_config(write(tmp_path, GOOD))
    assert udp.transport.rack is None and udp.network == NetworkSettings(port=17777)
