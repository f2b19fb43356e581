"""Live terminal view of a demo fleet (rich), and the closing summary table."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

__all__ = ["FleetDisplay", "NodeRow"]


@dataclass
class NodeRow:
    node_id: str
    board: str
    corrupted: bool
    version: str
    phase: str = "healthy"
    percent: int = 0
    donor: str = ""
    seconds: float | None = None
    error: str = ""


class FleetDisplay:
    """A table refreshed a few times a second while the fleet runs; plain output when not
    attached to a terminal (CI logs stay readable)."""

    def __init__(self, rows: dict[str, NodeRow], *, live: bool = True) -> None:
        self._rows = rows
        self._console = Console()
        if not self._console.is_terminal:  # a log file or CI: full-width rows, no live view
            self._console = Console(width=140)
        self._live: Live | None = None
        if live and self._console.is_terminal:
            self._live = Live(self._table(), console=self._console, refresh_per_second=4,
                              get_renderable=self._table)

    def __enter__(self) -> FleetDisplay:
        if self._live:
            self._live.__enter__()
        else:
            self._console.print(f"fleet of {len(self._rows)} nodes starting; "
                                f"{sum(r.corrupted for r in self._rows.values())} corrupted")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live:
            self._live.__exit__(exc_type, exc, tb)

    def refresh(self) -> None:
        if self._live:
            self._live.refresh()

    def _table(self) -> Table:
        table = Table(title="fwrescue fleet", expand=False)
        for column in ("node", "board", "flash", "phase", "%", "donor", "s"):
            table.add_column(column)
        for row in self._rows.values():
            state = "[red]corrupt[/]" if row.corrupted else "[green]ok[/]"
            phase = f"[red]{row.error[:40]}[/]" if row.error else row.phase
            table.add_row(row.node_id, row.board, state, phase, str(row.percent), row.donor,
                          f"{row.seconds:.1f}" if row.seconds is not None else "")
        return table

    def summary(self, report: dict[str, Any]) -> None:
        table = Table(title="recovery summary")
        for column in ("node", "board", "corrupted", "recovered", "booted", "donor", "kind",
                       "before", "after", "seconds"):
            table.add_column(column)
        for n in report["nodes"]:
            table.add_row(n["id"], n["board"], _yes(n["corrupted"]), _yes(n["recovered"]),
                          _yes(n["booted"]), n["donor"] or "", n["donor_kind"] or "",
                          n["version_before"], n["version_after"] or "", f"{n['seconds']:.2f}")
        self._console.print(table)
        for n in report["nodes"]:
            if n.get("boot_evidence"):
                self._console.print(f"{n['id']} serial console: {n['boot_evidence']}",
                                    markup=False, highlight=False)
        verdict = "[green]OK[/]" if report["ok"] else "[red]FAILED[/]"
        self._console.print(f"fleet {verdict}: every corrupted node recovered and every host "
                            "boots" if report["ok"] else f"fleet {verdict}")


def _yes(value: bool) -> str:
    return "yes" if value else "no"
