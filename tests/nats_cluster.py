"""The ``nats_cluster`` fixture: a private 3-node ``nats-server`` cluster on free loopback
ports (configs in the test's tmp dir, full route mesh awaited, every process killed by
its pid afterwards). Import the fixture into a test module to use it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fwrescue.sim.nats_cluster import NatsCluster

__all__ = ["nats_cluster"]


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path / "nats", size=3) as cluster:
        yield cluster
