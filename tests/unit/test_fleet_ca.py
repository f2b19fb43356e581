"""The fleet CA and an agent's [tls] table: the CLI round trip, and a specific
ConfigError (nothing started) for each bad TLS input."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from fwrescue.cli import main
from fwrescue.config import load_config
from fwrescue.errors import ConfigError
from fwrescue.trust.fleet_ca_cli import init_ca, issue_node
from fwrescue.trust.transfer_identity import cert_node_ids, node_uri, transfer_hostname
from fwrescue.trust.transfer_tls import check_identity
from tests.unit.test_config import GOOD


def test_cli_init_issue_verify_round_trip(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    assert main(["fleet-ca", "init", str(ca)]) == 0
    assert stat.S_IMODE((ca / "ca.key").stat().st_mode) == 0o600
    assert main(["fleet-ca", "issue", str(ca), "--node", "bmc_R1.07",
                 "--out", str(tmp_path / "n" / "bmc")]) == 0
    assert stat.S_IMODE((tmp_path / "n" / "bmc.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "n" / "bmc.pem").read_bytes())
    assert cert_node_ids(cert) == ("bmc_R1.07",)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [node_uri("bmc_R1.07")]
    assert san.get_values_for_type(x509.DNSName) == [transfer_hostname("bmc_R1.07")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {o.dotted_string for o in eku} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 398
    assert main(["fleet-ca", "verify", str(ca), str(tmp_path / "n" / "bmc"),
                 "--node", "bmc_R1.07"]) == 0
    capsys.readouterr()
    assert main(["fleet-ca", "verify", str(ca), str(tmp_path / "n" / "bmc"),
                 "--node", "bmc_r1.07"]) == 2  # ids are case-sensitive
    assert "does not name this node" in capsys.readouterr().err


def test_cli_refuses_to_replace_a_ca_and_bad_node_ids(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    init_ca(tmp_path / "ca")
    before = (tmp_path / "ca" / "ca.key").read_bytes()
    assert main(["fleet-ca", "init", str(tmp_path / "ca")]) == 2
    assert (tmp_path / "ca" / "ca.key").read_bytes() == before
    assert main(["fleet-ca", "issue", str(tmp_path / "ca"), "--node", "bad id",
                 "--out", str(tmp_path / "x")]) == 2
    assert main(["fleet-ca", "issue", str(tmp_path / "ca"), "--node", "n1", "--days", "9999",
                 "--out", str(tmp_path / "x")]) == 2
    assert not list(tmp_path.glob("x*"))
    assert "node id" in capsys.readouterr().err


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A fleet CA, node-1's identity, node-2's, and node-1's from a foreign CA."""
    init_ca(tmp_path / "ca")
    init_ca(tmp_path / "foreign")
    issue_node(tmp_path / "ca", "node-1", tmp_path / "tls" / "node-1")
    issue_node(tmp_path / "ca", "node-2", tmp_path / "tls" / "node-2")
    issue_node(tmp_path / "foreign", "node-1", tmp_path / "tls" / "foreign-1")
    (tmp_path / "tls" / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    (tmp_path / "tls" / "huge.pem").write_bytes(b"A" * (64 * 1024 + 1))
    return tmp_path


def _config(root: Path, tls: str) -> Path:
    text = GOOD.replace("[transfer]\nplain_http = true\n", tls)
    path = root / "agent.toml"
    path.write_text(text)
    return path


def _tls(ca: str = "ca/ca.pem", cert: str = "tls/node-1.pem", key: str = "tls/node-1.key",
         extra: str = "") -> str:
    return f'[tls]\nca = "{ca}"\ncert = "{cert}"\nkey = "{key}"\n{extra}'


def test_a_good_tls_table_loads_with_paths_relative_to_the_file(pki: Path) -> None:
    config = load_config(_config(pki, _tls()))
    assert config.network.tls is not None
    assert config.network.tls.key == (pki / "tls" / "node-1.key").resolve()


def test_explicit_plain_http_loads_without_tls(pki: Path) -> None:
    assert load_config(_config(pki, "[transfer]\nplain_http = true\n")).network.tls is None


@pytest.mark.parametrize(("tls", "message"), [
    ("", "needs [tls] ca, cert and key"),
    ("[transfer]\nplain_http = false\n", "or [transfer] plain_http = true"),
    (_tls() + "[transfer]\nplain_http = true\n", "exclude each other"),
    (_tls(ca="ca/missing.pem"), "tls.ca is not readable"),
    (_tls(cert="tls/missing.pem"), "tls.cert is not readable"),
    (_tls(key="tls/missing.key"), "tls.key is not readable"),
    (_tls(cert="tls/huge.pem"), "tls.cert is larger than a PEM file can be"),
    (_tls(ca="tls/garbage.pem"), "tls.ca is not a PEM certificate"),
    (_tls(cert="tls/garbage.pem"), "tls.cert is not a PEM certificate"),
    (_tls(key="tls/node-1.pem"), "tls.key is not an unencrypted PEM private key"),
    (_tls(key="tls/node-2.key"), "tls.cert does not match tls.key"),
    (_tls(cert="tls/foreign-1.pem", key="tls/foreign-1.key"), "not issued by the fleet CA"),
    (_tls(cert="tls/node-2.pem", key="tls/node-2.key"), "does not name this node"),
    ('[tls]\nca = "ca/ca.pem"\ncert = "tls/node-1.pem"\n', "tls.key is required"),
    (_tls(extra='pin = "x"\n'), "unknown keys in [root.tls]"),
    ("[transfer]\nplain_http = true\nspeed = 1\n", "unknown keys in [root.transfer]"),
], ids=["neither", "plain-false", "both", "ca-unreadable", "cert-unreadable",
        "key-unreadable", "cert-huge", "ca-garbage", "cert-garbage", "key-garbage", "key-mismatch",
        "foreign-ca", "other-node", "key-missing", "unknown-tls-key", "unknown-transfer-key"])
def test_each_bad_tls_input_is_its_own_config_error(pki: Path, tls: str,
                                                    message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(_config(pki, tls))


def test_the_donor_service_refuses_an_identity_for_another_id(pki: Path) -> None:
    from fwrescue.config import DonorSettings, NetworkSettings, TlsSettings
    from fwrescue.donor.service import DonorService
    from fwrescue.image.store import PackageStore
    from fwrescue.protocol.messages import DonorKind

    tls = TlsSettings(ca=pki / "ca" / "ca.pem", cert=pki / "tls" / "node-1.pem",
                      key=pki / "tls" / "node-1.key")
    with pytest.raises(ConfigError, match="does not name this node"):
        DonorService(donor_id="console", kind=DonorKind.CONSOLE,
                     store=PackageStore(pki / "store"), network=NetworkSettings(tls=tls),
                     settings=DonorSettings())
    check_identity(tls.ca, tls.cert, tls.key, "node-1")  # the same files name node-1
