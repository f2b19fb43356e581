"""What a multi-donor fetch reports: its figures (:class:`SwarmStats`) and transcript
fields for negotiation events (offers shortened, tokens never written)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

from fwrescue.protocol.events import Event

__all__ = ["SwarmStats", "describe", "reason_text"]


@dataclass
class SwarmStats:
    """What one fetch moved (the benchmark and the transcript read these)."""

    bytes_received: int = 0
    chunks_fetched: int = 0
    refetched_chunks: int = 0  # chunks whose bytes arrived more than once
    rerequested_chunks: int = 0  # chunks asked for again (the scheduler's count)
    bytes_by_donor: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)  # banned for this image, why
    released: dict[str, str] = field(default_factory=dict)  # let go (idle), may return
    sessions: int = 0
    chokes: int = 0  # busy answers: the donor was left out for a backoff (not dropped)
    seconds: float = 0.0
    staged_at: float | None = None  # monotonic time the verified image was complete


def describe(event: Event) -> dict[str, Any]:
    """An event as transcript fields (offers shortened, the token never included)."""
    fields: dict[str, Any] = {}
    if is_dataclass(event):
        for key, value in asdict(event).items():
            if isinstance(value, dict):  # an embedded Offer: keep what a reader needs
                value = {k: value.get(k) for k in ("donor_id", "donor_kind", "version",
                                                   "security_version", "load", "held",
                                                   "manifest_digest") if k in value}
            elif isinstance(value, tuple | list) and value and isinstance(value[0], dict):
                value = [v.get("donor_id") for v in value]
            fields[key] = value
    fields.pop("token", None)  # a credential: never in a transcript
    return fields


def reason_text(error: BaseException) -> str:
    """A printable reason that fits a datagram (the protocol caps it at 200 ASCII chars)."""
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in str(error))
    return text[:200] or type(error).__name__
