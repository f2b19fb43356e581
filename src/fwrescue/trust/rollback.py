"""The anti-rollback floor: a persisted security version per target that never goes down.

State is one small JSON file, written atomically (temp file, fsync, ``os.replace``,
fsync of the directory), as python-tuf writes its trusted metadata: a power cut
leaves either the old floor or the new one, never a torn file.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from fwrescue.atomicfile import atomic_write
from fwrescue.errors import JournalError

__all__ = ["RollbackStore"]


class RollbackStore:
    """Per-target security-version floors; ``raise_floor`` is the only mutator."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._floors = self._load()

    def _load(self) -> dict[str, int]:
        if not self._path.exists():
            return {}
        try:
            data = json.loads(self._path.read_bytes())
        except (OSError, ValueError) as e:
            # Fail closed: an unreadable floor must not silently become 0.
            raise JournalError("anti-rollback state unreadable", path=str(self._path)) from e
        if not isinstance(data, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in data.items()):
            raise JournalError("anti-rollback state malformed", path=str(self._path))
        return data

    def floor(self, target: str) -> int:
        with self._lock:
            return self._floors.get(target, 0)

    def raise_floor(self, target: str, security_version: int) -> bool:
        """Raise the floor to ``security_version`` if higher; return whether it changed."""
        with self._lock:
            if security_version <= self._floors.get(target, 0):
                return False
            floors = dict(self._floors)
            floors[target] = security_version
            self._path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self._path, json.dumps(floors, sort_keys=True).encode())
            self._floors = floors
            return True
