"""The recovery journal and the installed-image record, one folder per target.

Both are small files written atomically (temp, fsync, rename), so a power cut
leaves the previous or the next record, never a torn one. An agent that starts
and finds a journal past ``STAGED`` resumes the flash from the stored image; one
that finds an earlier phase starts the search again (a transfer resumes from its
staging bitmap).

Layout under ``state_dir/targets/<target>/``::

    journal.json            the operation in progress (absent when idle)
    installed.manifest      the signed manifest envelope of the image on flash
    transcripts/<op>.json   what each finished operation did and why
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fwrescue.atomicfile import atomic_write
from fwrescue.errors import JournalError
from fwrescue.trust.manifest import MAX_MANIFEST_BYTES

__all__ = ["Journal", "JournalRecord", "Phase"]

log = logging.getLogger(__name__)

# A journal holds ids and a short reason; anything larger was not written by us.
_MAX_JOURNAL_BYTES = 64 * 1024
# Operation ids become file names (transcripts/<op_id>.json): "rec-1a2b3c4d".
_OP_ID = re.compile(r"^[a-z]{3}-[0-9a-f]{8}$")
_OPT_STR = (str, type(None))
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "op_id": str, "kind": str, "phase": str, "reason": str, "started_at": (int, float),
    "manifest_digest": _OPT_STR, "origin": _OPT_STR, "donor_id": _OPT_STR,
    "donor_kind": _OPT_STR, "version_before": _OPT_STR, "error": _OPT_STR,
    "restarts": int, "detail": dict,
}


class Phase(enum.Enum):
    DETECTED = "detected"
    LOCATING = "locating"
    SOLICITING = "soliciting"
    STAGED = "staged"
    FLASHING = "flashing"
    BOOTING = "booting"
    RECOVERED = "recovered"
    FAILED = "failed"

    @property
    def past_staging(self) -> bool:
        """From here on the image is in the store and the flash may be half written."""
        return self in (Phase.STAGED, Phase.FLASHING, Phase.BOOTING)


@dataclass(frozen=True)
class JournalRecord:
    op_id: str
    kind: str  # "recovery" | "update"
    phase: Phase
    reason: str
    started_at: float
    manifest_digest: str | None = None
    origin: str | None = None  # "peer:<id>", "console:<id>", "usb:/…", "operator", …
    donor_id: str | None = None
    donor_kind: str | None = None
    version_before: str | None = None
    error: str | None = None
    restarts: int = 0
    detail: dict[str, str] = field(default_factory=dict)

    def advance(self, phase: Phase, **changes: Any) -> JournalRecord:
        return replace(self, phase=phase, **changes)

    def to_json(self) -> bytes:
        data = asdict(self)
        data["phase"] = self.phase.value
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> JournalRecord:
        """Strictly decode a record; JournalError on anything this module did not write."""
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or set(data) - set(_FIELD_TYPES):
                raise ValueError("unexpected fields")
            for key, kinds in _FIELD_TYPES.items():
                if key in data and not isinstance(data[key], kinds):
                    raise ValueError(f"{key} has the wrong type")
            if not _OP_ID.match(data.get("op_id", "")):
                raise ValueError("bad op_id")
            detail = data.get("detail", {})
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in detail.items()):
                raise ValueError("detail must map strings to strings")
            data["phase"] = Phase(data["phase"])
            return cls(**data)
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise JournalError("recovery journal is malformed", detail=str(e)[:200]) from e


class Journal:
    """Persistent state of one target's recovery engine."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "transcripts").mkdir(exist_ok=True)
        self._journal = directory / "journal.json"
        self._installed = directory / "installed.manifest"

    def load(self) -> JournalRecord | None:
        """The operation in progress, or None.

        A journal this module did not write (oversize, malformed) is moved aside to
        ``journal.json.bad`` and reported as none: the caller's integrity check then decides
        from the flash itself, which is safe whatever the journal said."""
        if not self._journal.exists():
            return None
        try:
            raw = self._journal.read_bytes()
            if len(raw) > _MAX_JOURNAL_BYTES:
                raise JournalError("recovery journal too large", size=len(raw))
            return JournalRecord.from_json(raw)
        except (JournalError, OSError) as e:
            log.error("%s: unusable recovery journal moved aside: %s", self.directory, e)
            os.replace(self._journal, self._journal.with_name("journal.json.bad"))
            return None

    def write(self, record: JournalRecord) -> None:
        atomic_write(self._journal, record.to_json())

    def finish(self, record: JournalRecord, transcript: list[dict[str, Any]]) -> None:
        """Store the transcript of a finished operation, then drop the journal."""
        doc = {"record": json.loads(record.to_json()), "transcript": transcript}
        atomic_write(self.directory / "transcripts" / f"{record.op_id}.json",
                     json.dumps(doc, indent=1, default=str).encode())
        self._journal.unlink(missing_ok=True)

    def installed_manifest(self) -> bytes | None:
        """The envelope of the image last written and verified on flash (untrusted until
        re-verified by the caller)."""
        if not self._installed.exists():
            return None
        raw = self._installed.read_bytes()
        if len(raw) > MAX_MANIFEST_BYTES:
            raise JournalError("installed manifest record too large", size=len(raw))
        return raw

    def set_installed(self, manifest_raw: bytes) -> None:
        atomic_write(self._installed, manifest_raw)
