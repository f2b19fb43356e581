"""Inputs the fuzzers (fuzz/targets.py) found that escaped a parser with an undocumented
error or a wrong answer; each now gets the parser's documented error."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwrescue.config import load_config
from fwrescue.errors import ConfigError
from fwrescue.redfish.http import decode_json_body
from fwrescue.redfish.messages import RequestError
from fwrescue.redfish.upload import check_image_uri
from fwrescue.transfer.server import parse_range


def test_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b'[agent]\nnode_id = "n\x94"\n')  # fuzz: UnicodeDecodeError escaped
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_config_nested_beyond_the_toml_parsers_recursion_is_a_config_error(
        tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b"a = " + b"[" * 5000)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


@pytest.mark.parametrize("uri", ["http://[::1", "http://[zz]/pkg", "[::1/x"])
def test_image_uri_that_urlsplit_refuses_is_a_400_format_error(uri: str) -> None:
    with pytest.raises(RequestError) as caught:  # fuzz: ValueError("Invalid IPv6 URL")
        check_image_uri(uri, "HTTP" if not uri.startswith("http") else None)
    assert caught.value.http_status == 400
    assert caught.value.message_id == "Base.1.22.ActionParameterValueFormatError"


def test_json_body_nested_deeper_than_the_decoder_recurses_is_malformed_json() -> None:
    with pytest.raises(RequestError) as caught:
        decode_json_body(b"[" * 100_000)
    assert (caught.value.http_status, caught.value.message_id) == (
        400, "Base.1.22.MalformedJSON")


def test_suffix_range_of_an_empty_image_is_unsatisfiable() -> None:
    with pytest.raises(ValueError, match="not satisfiable"):  # fuzz: returned (0, -1)
        parse_range("bytes=-4", 0)
    assert parse_range("bytes=-4", 10) == (6, 9)


def test_manifest_nested_deeper_than_the_decoder_recurses_is_a_manifest_error() -> None:
    from fwrescue.errors import ManifestError
    from fwrescue.trust.manifest import SignedManifest

    with pytest.raises(ManifestError, match="not valid JSON"):  # was RecursionError
        SignedManifest.parse(b'{"signed": ' + b"[" * 5000)


def test_journal_nested_deeper_than_the_decoder_recurses_is_a_journal_error() -> None:
    from fwrescue.errors import JournalError
    from fwrescue.recovery.journal import JournalRecord

    with pytest.raises(JournalError, match="malformed"):
        JournalRecord.from_json(b"[" * 5000)
