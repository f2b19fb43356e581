"""trust/policy.py: every refusal reason, and a genuine policy accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fwrescue.cli import main
from fwrescue.trust.keys import SigningKey, TrustStore, generate_keypair
from fwrescue.trust.policy import PolicyError, TargetPolicy, sign_policy, verify_policy


@pytest.fixture
def keys(tmp_path: Path) -> tuple[SigningKey, TrustStore, SigningKey]:
    private, public = generate_keypair(tmp_path / "k", "release")
    other, _ = generate_keypair(tmp_path / "o", "rogue")
    return SigningKey.load(private), TrustStore.from_files([public]), SigningKey.load(other)


def _doc(key: SigningKey, version: int = 2, board: str = "board-a",
         targets: dict[str, TargetPolicy] | None = None) -> bytes:
    return sign_policy(key, board=board, version=version, issued_at=1,
                       targets=targets or {"bios": TargetPolicy("1.1.0", 2)})


def _reason(raw: bytes, trust: TrustStore, current: int = 0) -> str:
    with pytest.raises(PolicyError) as info:
        verify_policy(raw, trust, board="board-a", targets=["bios"], current_version=current)
    return info.value.reason


def test_genuine_policy_verifies(keys: tuple[SigningKey, TrustStore, SigningKey]) -> None:
    key, trust, _ = keys
    policy = verify_policy(_doc(key), trust, board="board-a", targets=["bios"],
                           current_version=1)
    assert policy.version == 2 and policy.floor("bios") == 2
    assert policy.targets["bios"].baseline == "1.1.0"


def test_every_refusal_has_its_reason(keys: tuple[SigningKey, TrustStore, SigningKey]) -> None:
    key, trust, rogue = keys
    doc = json.loads(_doc(key))
    unsigned = json.dumps({"policy": doc["policy"]}).encode()
    assert _reason(unsigned, trust) == "unsigned"
    assert _reason(_doc(rogue), trust) == "unknown-key"
    tampered = json.loads(_doc(key))
    tampered["policy"]["targets"]["bios"]["floor"] = 0
    assert _reason(json.dumps(tampered).encode(), trust) == "bad-signature"
    assert _reason(_doc(key), trust, current=2) == "not-newer"
    assert _reason(_doc(key, board="board-z"), trust) == "unknown-board"
    assert _reason(_doc(key, targets={"cpld": TargetPolicy(None, 1)}), trust) == "unknown-target"
    for junk in (b"", b"{", b"[]", b"x" * 70000, json.dumps({"policy": {}}).encode()):
        assert _reason(junk, trust) == "malformed"


def test_policy_sign_cli_writes_a_verifiable_document(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    private, public = generate_keypair(tmp_path / "k", "release")
    out = tmp_path / "p.json"
    assert main(["policy", "sign", "--key", str(private), "--board", "board-a",
                 "--version", "3", "--target", "bios", "--baseline", "1.1.0", "--floor", "2",
                 "-o", str(out)]) == 0
    policy = verify_policy(out.read_bytes(), TrustStore.from_files([public]),
                           board="board-a", targets=["bios"])
    assert (policy.version, policy.targets["bios"]) == (3, TargetPolicy("1.1.0", 2))
    assert main(["policy", "show", str(out), "--trust", str(public)]) == 0
    assert '"verified": true' in capsys.readouterr().out
    assert main(["policy", "sign", "--key", str(private), "--board", "b", "--version", "0",
                 "--target", "bios", "-o", str(tmp_path / "bad.json")]) == 2
    assert not (tmp_path / "bad.json").exists()
