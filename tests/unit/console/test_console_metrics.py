"""console/metrics.py: one finished operation moves the counters the way its transcript says."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from fwrescue.console.metrics import ConsoleMetrics
from fwrescue.console.records import OperationRecord


def _samples(metrics: ConsoleMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(metrics.exposition().decode())
            for s in f.samples}


def test_a_recovery_with_a_declined_rogue_and_a_console_transfer() -> None:
    metrics = ConsoleMetrics()
    transcript = (
        {"t": 10.0, "event": "start"},
        {"t": 10.5, "event": "DonorAcked", "offer": {"donor_id": "rogue", "donor_kind": "peer"}},
        {"t": 10.6, "event": "declined", "donor": "rogue",
         "reason": "security version below the anti-rollback floor (floor=2)"},
        {"t": 11.0, "event": "DonorAcked", "offer": {"donor_id": "c", "donor_kind": "console"}},
        {"t": 11.5, "event": "transferred", "donor": "c", "bytes": 4096},
        {"t": 12.5, "event": "done"},
    )
    metrics.operation_finished(OperationRecord(
        op_id="rec-1", kind="recovery", target="bios", state="Completed", percent=100,
        message="", started_at=None, ended_at=None, transcript=transcript))
    metrics.operation_finished(OperationRecord(
        op_id="upd-1", kind="update", target="bios", state="Exception", percent=100,
        message="", started_at=None, ended_at=None, transcript=()))
    metrics.reachability("http://a", True)
    metrics.reachability("http://b", False)
    s = _samples(metrics)
    assert s[("fwrescue_recoveries_total", (("kind", "recovery"), ("outcome", "ok")))] == 1
    assert s[("fwrescue_recoveries_total", (("kind", "update"), ("outcome", "failed")))] == 1
    assert s[("fwrescue_drops_total", (("reason", "rollback"),))] == 1
    assert s[("fwrescue_bytes_served_total", (("by", "console"),))] == 4096
    assert s[("fwrescue_time_to_recover_seconds_sum", ())] == 2.5
    assert s[("fwrescue_agents", (("state", "reachable"),))] == 1
    assert s[("fwrescue_agents", (("state", "unreachable"),))] == 1
