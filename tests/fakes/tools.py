"""Locating the real tools the integration tests drive (validators, Redfish utilities)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["csdl_dir", "tool"]

BIN = Path(sys.executable).parent
# CI clones the repository with shared/ beside it, as in the workplace.
CSDL = Path(__file__).resolve().parents[3] / "shared" / "redfish" / "csdl"


def tool(name: str) -> str:
    """An installed command: beside this interpreter (the venv), else on PATH."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"{name} is not installed (pip install the test extra)"
    return found


def csdl_dir() -> Path:
    """The DMTF CSDL folder: the shared copy, or $FWRESCUE_CSDL_DIR."""
    env = os.environ.get("FWRESCUE_CSDL_DIR")
    return Path(env) if env else CSDL
