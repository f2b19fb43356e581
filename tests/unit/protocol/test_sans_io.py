"""The negotiation cores stay sans-IO: ``fwrescue.protocol`` and the donor's responder
import no sockets, event loops, threads or clocks (``now`` is always a parameter)."""

from __future__ import annotations

import ast
from pathlib import Path

import fwrescue.donor
import fwrescue.protocol

IO_MODULES = {"asyncio", "socket", "selectors", "ssl", "threading", "time", "aiohttp",
              "nats", "subprocess"}
CORES = [*sorted(Path(fwrescue.protocol.__file__).parent.glob("*.py")),
         Path(fwrescue.donor.__file__).parent / "responder.py"]


def _imports(text: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_the_protocol_cores_import_no_io() -> None:
    offenders = {p.name: sorted(_imports(p.read_text()) & IO_MODULES) for p in CORES}
    assert "responder.py" in offenders
    assert {name: io for name, io in offenders.items() if io} == {}


def test_a_planted_io_import_is_found() -> None:
    assert _imports("import asyncio\nfrom time import monotonic\n") & IO_MODULES == {
        "asyncio", "time"}
