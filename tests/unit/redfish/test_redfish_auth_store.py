"""AuthStore in virtual time: sessions expire after inactivity; accounts validate first."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ADMIN, make_settings

from fwrescue.redfish.auth import AuthStore
from fwrescue.redfish.messages import RequestError


def test_idle_session_expires_and_activity_keeps_it(tmp_path: Path) -> None:
    store = AuthStore(make_settings(tmp_path, session_timeout_s=60))
    s = store.login(*ADMIN, now=1000.0)
    assert store.by_token(s.token, now=1050.0).username == "admin"
    assert store.by_token(s.token, now=1100.0).session_id == s.id  # refreshed at 1050
    with pytest.raises(RequestError) as e:
        store.by_token(s.token, now=1161.0)
    assert e.value.http_status == 401


def test_session_limit_is_enforced(tmp_path: Path) -> None:
    store = AuthStore(make_settings(tmp_path, max_sessions=2))
    store.login(*ADMIN, now=0.0)
    store.login(*ADMIN, now=0.0)
    with pytest.raises(RequestError) as e:
        store.login(*ADMIN, now=0.0)
    assert e.value.message_id == "Base.1.22.SessionLimitExceeded"


def test_password_change_ends_existing_sessions(tmp_path: Path) -> None:
    store = AuthStore(make_settings(tmp_path))
    s = store.login("oper", "operator-password", now=0.0)
    store.update_account("oper", password="a-new-password")
    with pytest.raises(RequestError):
        store.by_token(s.token, now=1.0)
    assert store.verify("oper", "operator-password") is None
    assert store.verify("oper", "a-new-password") is not None


def test_bad_role_changes_nothing(tmp_path: Path) -> None:
    store = AuthStore(make_settings(tmp_path))
    with pytest.raises(RequestError):
        store.update_account("oper", password="another-password", role="Superuser")
    assert store.verify("oper", "operator-password") is not None
