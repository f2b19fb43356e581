"""Console metrics (prometheus-client, one registry per console; ``GET /metrics``).

Counted once per finished operation (the inventory reports each exactly once):

* ``fwrescue_recoveries_total{kind, outcome}`` — outcome ``ok`` or ``failed``;
* ``fwrescue_time_to_recover_seconds`` — first to last transcript entry of a successful one;
* ``fwrescue_bytes_served_total{by}`` — ``peer`` or ``console``, from the transfer records;
* ``fwrescue_drops_total{reason}`` — offers/images declined, by the recipient's reason;
* ``fwrescue_agents{state}`` — agents ``reachable`` / ``unreachable`` now.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fwrescue.console.records import OperationRecord

__all__ = ["ConsoleMetrics"]

# Drop reasons are free text from agents: folded into a few stable label values.
_REASONS = (
    ("anti-rollback", "rollback"), ("untrusted key", "untrusted-key"),
    ("signature", "bad-signature"), ("another board", "wrong-board"),
    ("chunk digest", "chunk-mismatch"), ("digest", "digest-mismatch"),
)


def drop_reason(text: str) -> str:
    lowered = text.lower()
    for needle, label in _REASONS:
        if needle in lowered:
            return label
    return "other"


class ConsoleMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.recoveries = Counter("fwrescue_recoveries", "Finished recoveries and updates",
                                  ["kind", "outcome"], registry=self.registry)
        self.time_to_recover = Histogram(
            "fwrescue_time_to_recover_seconds", "Duration of successful recoveries",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900), registry=self.registry)
        self.bytes_served = Counter("fwrescue_bytes_served", "Image bytes received by "
                                    "recipients, by donor kind", ["by"], registry=self.registry)
        self.drops = Counter("fwrescue_drops", "Offers or images a recipient declined",
                             ["reason"], registry=self.registry)
        self.agents = Gauge("fwrescue_agents", "Agents the console watches", ["state"],
                            registry=self.registry)
        self._reachable: dict[str, bool] = {}

    def operation_finished(self, op: OperationRecord) -> None:
        ok = op.state == "Completed"
        self.recoveries.labels(kind=op.kind, outcome="ok" if ok else "failed").inc()
        times = [e["t"] for e in op.transcript if isinstance(e.get("t"), int | float)]
        if ok and op.kind == "recovery" and len(times) >= 2:
            self.time_to_recover.observe(max(0.0, times[-1] - times[0]))
        kind: str | None = None
        for entry in op.transcript:
            event = entry.get("event")
            offer = entry.get("offer")
            if event == "DonorAcked" and isinstance(offer, dict):
                kind = "console" if offer.get("donor_kind") == "console" else "peer"
            elif event == "transferred" and isinstance(entry.get("bytes"), int):
                self.bytes_served.labels(by=kind or "peer").inc(max(0, entry["bytes"]))
            elif event == "declined":
                self.drops.labels(reason=drop_reason(str(entry.get("reason", "")))).inc()

    def reachability(self, url: str, ok: bool) -> None:
        self._reachable[url] = ok
        up = sum(self._reachable.values())
        self.agents.labels(state="reachable").set(up)
        self.agents.labels(state="unreachable").set(len(self._reachable) - up)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

