"""Selection policies rank a crafted offer set exactly as documented."""

from __future__ import annotations

import hashlib
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from fwrescue.errors import ConfigError
from fwrescue.protocol.messages import DonorKind, Offer
from fwrescue.protocol.policy import (
    PolicyRegistry,
    Selection,
    SelectionContext,
    get_policy,
    version_key,
)

CTX = SelectionContext(recipient_id="rcp", target="bios", machine_name="b",
                       installed_version="1.0", security_version=1, topology="r1")


def offer(donor: str, *, version: str = "1.0", sv: int = 1, load: int = 0, cap: int = 4,
          kind: DonorKind = DonorKind.PEER, rack: str | None = "r2") -> Offer:
    return Offer(xid=1, recipient_id="rcp", donor_id=donor, donor_kind=kind, target="bios",
                 manifest_digest=hashlib.sha256(version.encode()).hexdigest(), version=version,
                 security_version=sv, size=1, load=load, capacity=cap,
                 transfer_url="http://127.0.0.1:1", lease_s=30.0, topology=rack)


# Arrival order matters for "first" and for ties.
OFFERS = [
    offer("busy-peer-r1", version="1.9", load=3, rack="r1"),
    offer("console", version="1.10", sv=2, load=1, kind=DonorKind.CONSOLE),
    offer("idle-peer", version="1.2", load=0),
    offer("secure-old", version="1.1", sv=3, load=2, cap=8),
]


def ranked(name: str, **options: Any) -> list[str]:
    sel = get_policy(name, **options).select(OFFERS, CTX)
    assert isinstance(sel, Selection) and sel.reason.startswith(name.split("-")[0])
    return [o.donor_id for o in sel.ranked]


def test_first_keeps_arrival_order() -> None:
    assert ranked("first") == ["busy-peer-r1", "console", "idle-peer", "secure-old"]


def test_newest_prefers_security_version_then_numeric_version() -> None:
    assert ranked("newest") == ["secure-old", "console", "busy-peer-r1", "idle-peer"]


def test_versions_compare_numerically() -> None:
    assert version_key("1.10.0") > version_key("1.9.9") > version_key("1.9")
    assert sorted(["1.10", "1.2", "1.9"], key=version_key) == ["1.2", "1.9", "1.10"]


def test_pinned_keeps_only_the_pinned_version() -> None:
    assert ranked("pinned", version="1.2") == ["idle-peer"]
    sel = get_policy("pinned").select(OFFERS, CTX)
    assert sel.ranked == () and "no pinned version" in sel.reason
    ctx = SelectionContext(**{**CTX.__dict__, "pinned_version": "1.9"})
    assert [o.donor_id for o in get_policy("pinned").select(OFFERS, ctx).ranked] == [
        "busy-peer-r1"]


def test_least_loaded_uses_load_over_capacity() -> None:
    # 0/4, 1/4, 2/8 (tie with 1/4: arrival order), 3/4
    assert ranked("least-loaded") == ["idle-peer", "console", "secure-old", "busy-peer-r1"]


def test_prefer_console_and_prefer_peer() -> None:
    assert ranked("prefer-console")[0] == "console"
    assert ranked("prefer-peer") == ["idle-peer", "secure-old", "busy-peer-r1", "console"]


def test_same_rack_puts_the_recipients_rack_first() -> None:
    assert ranked("same-rack") == ["busy-peer-r1", "idle-peer", "console", "secure-old"]


def test_weighted_scores_load_topology_kind_and_freshness() -> None:
    # idle-peer: .6*1 + 0 + .1 + 0 = .70; secure-old: .6*.75 + 0 + .1 + .1 = .65
    # console: .6*.75 + 0 + 0 + 0 = .45; busy-peer-r1: .6*.25 + .2 + .1 + 0 = .45 (arrival)
    assert ranked("weighted") == ["idle-peer", "secure-old", "busy-peer-r1", "console"]
    # the same-rack donor wins once topology dominates
    assert ranked("weighted", topology=5.0)[0] == "busy-peer-r1"
    assert ranked("weighted", prefer_kind="console", kind=5.0)[0] == "console"


def test_policies_handle_no_offers() -> None:
    for name in PolicyRegistry().names():
        opts = {"version": "1"} if name == "pinned" else {}
        assert get_policy(name, **opts).select([], CTX).ranked == ()


def test_unknown_policy_and_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown selection policy"):
        get_policy("fastest")
    with pytest.raises(ConfigError):
        get_policy("first", speed=1)
    with pytest.raises(ConfigError):
        get_policy("weighted", load=-1)
    with pytest.raises(ConfigError):
        get_policy("weighted", prefer_kind="robot")


class LastPolicy:
    """A third-party policy: reverse arrival order."""

    name = "last"

    def select(self, offers: Any, ctx: SelectionContext) -> Selection:
        return Selection(ranked=tuple(reversed(offers)), reason="last: reversed")


def test_a_registered_policy_is_found_by_name() -> None:
    registry = PolicyRegistry()
    registry.register("last", LastPolicy)
    sel = registry.get("last").select(OFFERS, CTX)
    assert sel.ranked[0].donor_id == "secure-old"
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("first", LastPolicy)


def test_entry_points_register_policies() -> None:
    eps = [EntryPoint(name="ep-newest", value="fwrescue.protocol.policy:NewestPolicy",
                      group="fwrescue.policies")]

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        return eps if group == "fwrescue.policies" else []

    registry = PolicyRegistry()
    registry.load_entry_points(fake_entry_points)
    assert "ep-newest" in registry.names()
    assert registry.get("ep-newest").select(OFFERS, CTX).ranked[0].donor_id == "secure-old"


def test_a_broken_entry_point_is_a_config_error() -> None:
    eps = [EntryPoint(name="broken", value="no_such_module_xyz:Policy",
                      group="fwrescue.policies")]
    with pytest.raises(ConfigError, match="failed to load"):
        PolicyRegistry().load_entry_points(lambda *, group: eps)
