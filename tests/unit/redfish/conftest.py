"""Fixtures for the Redfish service tests: a FakeBackend and a service on loopback."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# The shared fakes live in tests/fakes; make the repository root importable.
_ROOT = Path(__file__).resolve().parents[3]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402
from tests.fakes.redfish_backend import FakeBackend  # noqa: E402

from fwrescue.redfish import AccountSpec, RedfishServiceSettings, create_redfish_app  # noqa: E402

ADMIN = ("admin", "admin-password")
OPERATOR = ("oper", "operator-password")
READER = ("reader", "reader-password")


def make_settings(tmp_path: Path, **kw: object) -> RedfishServiceSettings:
    return RedfishServiceSettings(
        accounts=(
            AccountSpec(username=ADMIN[0], password=ADMIN[1], role="Administrator"),
            AccountSpec(username=OPERATOR[0], password=OPERATOR[1], role="Operator"),
            AccountSpec(username=READER[0], password=READER[1], role="ReadOnly"),
        ),
        upload_dir=tmp_path / "uploads",
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def posted() -> list[tuple[str, dict[str, object]]]:
    return []


@pytest.fixture
async def client(
    tmp_path: Path, backend: FakeBackend, posted: list[tuple[str, dict[str, object]]]
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async def poster(url: str, body: dict[str, object]) -> int:
        posted.append((url, body))
        return 204

    app = create_redfish_app(
        backend, make_settings(tmp_path, max_image_size=64 * 1024), poster=poster
    )
    async with TestClient(TestServer(app)) as c:
        yield c
