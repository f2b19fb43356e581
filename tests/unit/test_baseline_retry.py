"""The baseline-update retry schedule: bounded exponential backoff, and its config keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwrescue.agent.fleet_policy import BaselineRetry, RetryBackoff
from fwrescue.config import load_config
from fwrescue.errors import ConfigError
from tests.unit.test_config import GOOD, write


def test_backoff_doubles_and_is_capped() -> None:
    backoff = RetryBackoff(initial_s=30.0, max_s=1800.0)
    assert [backoff.delay(n) for n in range(1, 9)] == [
        30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1800.0, 1800.0]
    assert backoff.delay(10_000) == 1800.0  # no overflow however long it keeps failing
    assert backoff.delay(0) == 30.0


def test_retry_record_counts_failures_and_schedules_from_now() -> None:
    backoff = RetryBackoff(initial_s=2.0, max_s=5.0)
    first = BaselineRetry.after(None, "no offer", backoff, now=1000.0)
    second = BaselineRetry.after(first, "x" * 1000, backoff, now=1010.0)
    third = BaselineRetry.after(second, "again", backoff, now=1020.0)
    assert (first.failures, first.delay_s, first.next_attempt_at) == (1, 2.0, 1002.0)
    assert (second.failures, second.delay_s, second.next_attempt_at) == (2, 4.0, 1014.0)
    assert (third.failures, third.delay_s, third.next_attempt_at) == (3, 5.0, 1025.0)
    assert len(second.last_failure) == 300  # bounded for Redfish
    assert third.describe() == {"Attempts": 3, "LastFailure": "again",
                                "RetryInterval": "PT5S",
                                "NextAttempt": "1970-01-01T00:17:05+00:00"}


def test_retry_config_keys(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD)).baseline_retry_initial_s == 30.0
    text = GOOD.replace('topology = "rack1"', 'topology = "rack1"\n'
                        "baseline_retry_initial_s = 5\nbaseline_retry_max_s = 60")
    config = load_config(write(tmp_path, text))
    assert (config.baseline_retry_initial_s, config.baseline_retry_max_s) == (5.0, 60.0)
    inverted = GOOD.replace('topology = "rack1"', 'topology = "rack1"\n'
                            "baseline_retry_initial_s = 90\nbaseline_retry_max_s = 60")
    with pytest.raises(ConfigError, match="baseline_retry_max_s"):
        load_config(write(tmp_path, inverted))
    with pytest.raises(ConfigError, match="baseline_retry_initial_s"):
        load_config(write(tmp_path, GOOD.replace(
            'topology = "rack1"', 'topology = "rack1"\nbaseline_retry_initial_s = 0')))
