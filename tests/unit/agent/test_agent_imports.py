"""The composition root has no import circle: what the agent builds never imports it back.

Every import between modules of ``fwrescue.agent`` (module level, inside a function, or
under ``if TYPE_CHECKING:``: a typing-only circle is still a circle a reader must untangle)
is a graph edge; importing the package ``fwrescue.agent`` means importing
``fwrescue.agent.core``. The graph must be acyclic.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fwrescue.agent

PACKAGE = Path(fwrescue.agent.__file__).parent


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "fwrescue.agent":  # the package: its __init__ imports core
                found.update(f"fwrescue.agent.{a.name}" if a.name in _modules() else
                             "fwrescue.agent.core" for a in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m.startswith("fwrescue.agent.")}


def _modules() -> set[str]:
    return {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def _graph(sources: dict[str, str]) -> dict[str, set[str]]:
    return {f"fwrescue.agent.{name}": _imports(ast.parse(text))
            for name, text in sources.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def walk(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := walk(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := walk(start, [])):
            return found
    return None


def test_the_agent_package_has_no_import_circle() -> None:
    sources = {p.stem: p.read_text() for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph = _graph(sources)
    assert "fwrescue.agent.redfish_backend" in graph["fwrescue.agent.core"]
    assert _cycle(graph) is None


def test_a_planted_circle_is_found() -> None:
    sources = {
        "core": "from fwrescue.agent.redfish_backend import AgentBackend\n",
        "redfish_backend": "def f():\n    from fwrescue.agent import Agent\n",
    }
    assert _cycle(_graph(sources)) == [
        "fwrescue.agent.core", "fwrescue.agent.redfish_backend", "fwrescue.agent.core"]


def test_a_typing_only_circle_is_found_too() -> None:
    sources = {
        "core": "from fwrescue.agent.redfish_backend import AgentBackend\n",
        "redfish_backend": ("from typing import TYPE_CHECKING\n"
                            "if TYPE_CHECKING:\n    from fwrescue.agent.core import Agent\n"),
    }
    assert _cycle(_graph(sources)) is not None
