"""No module outside ``fwrescue/trust/`` compares a digest to decide whether bytes are trusted.

A *trust comparison* is one of:

* a call to ``compare_digest`` (``hmac.compare_digest``, ``secrets.compare_digest``);
* an ``==``, ``!=``, ``in`` or ``not in`` with an operand that is a freshly *computed* digest:
  a call to ``.digest()`` / ``.hexdigest()`` or to any function or method whose name ends
  in ``digest`` or ``sha256`` (``hashlib.sha256(b).hexdigest()``, ``bank.sha256(0, n)``,
  ``self._flash_digest(n)``), or a local name bound (in the same function) from an
  expression that makes such a call or hands such a function to a runner (``asyncio.to_thread``).

Comparing two *recorded* identifiers (``offer.manifest_digest in declined``, a lookup of
an image by ``sha256``) is a lookup, not a trust decision, and is not flagged: the bytes
those names stand for are checked through the verifier when they arrive.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fwrescue

SRC = Path(fwrescue.__file__).parent
TRUST = SRC / "trust"

#: (path relative to src/fwrescue, line text fragment) → why it is not a trust decision.
ALLOWED: dict[tuple[str, str], str] = {
    ("redfish/auth.py", "compare_digest"):
        "an operator's password hash (PBKDF2) — authentication of a person, not of bytes",
    ("console/auth.py", "compare_digest"):
        "a console session token's hash — authentication of a person, not of bytes",
}

_OPS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)
#: Calls that run a function handed to them (its result is that function's result).
_RUNNERS = frozenset({"to_thread", "run_in_executor", "submit", "partial"})


def _hashing_name(name: str) -> bool:
    low = name.lower()
    return low in ("digest", "hexdigest") or low.endswith(("digest", "sha256"))


def _callee(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def _computes_digest(expr: ast.AST) -> bool:
    """Whether ``expr`` calls a hashing function or hands one to a runner."""
    for node in ast.walk(expr):
        if not isinstance(node, ast.Call):
            continue
        name = _callee(node.func)
        if name is not None and _hashing_name(name):
            return True
        if name in _RUNNERS:
            for arg in node.args:
                passed = _callee(arg)
                if passed is not None and _hashing_name(passed):
                    return True
    return False


def _scopes(tree: ast.Module) -> list[ast.AST]:
    return [tree, *(n for n in ast.walk(tree)
                    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))]


def trust_comparisons(source: str) -> list[tuple[int, str]]:
    """(line, source text) of every trust comparison in ``source``."""
    tree = ast.parse(source)
    found: set[tuple[int, str]] = set()
    for scope in _scopes(tree):
        computed: set[str] = set()
        nodes = list(ast.walk(scope))
        for node in nodes:
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and \
                    node.value is not None and _computes_digest(node.value):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                computed |= {t.id for t in targets if isinstance(t, ast.Name)}
        for node in nodes:
            if isinstance(node, ast.Call) and _callee(node.func) == "compare_digest":
                found.add((node.lineno, ast.unparse(node)))
            elif isinstance(node, ast.Compare) and any(isinstance(o, _OPS) for o in node.ops):
                for operand in (node.left, *node.comparators):
                    if _computes_digest(operand) or (
                            isinstance(operand, ast.Name) and operand.id in computed):
                        found.add((node.lineno, ast.unparse(node)))
    return sorted(found)


def _violations() -> list[str]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        if TRUST in path.parents:
            continue
        rel = path.relative_to(SRC).as_posix()
        for line, text in trust_comparisons(path.read_text()):
            if not any(rel == f and frag in text for f, frag in ALLOWED):
                out.append(f"{rel}:{line}: {text}")
    return out


def test_no_module_outside_trust_compares_a_digest() -> None:
    assert _violations() == []


def test_every_allowance_is_still_needed() -> None:
    for rel, fragment in ALLOWED:
        texts = [t for _, t in trust_comparisons((SRC / rel).read_text())]
        assert any(fragment in t for t in texts), f"stale allowance {rel}: {fragment}"


def test_the_check_sees_each_kind_of_planted_violation() -> None:
    planted = '''
import hashlib, hmac, asyncio
def a(raw, want):
    return hashlib.sha256(raw).hexdigest() == want
def b(key, data, tag):
    return hmac.compare_digest(tag, hmac.new(key, data, "sha256").digest())
def c(bank, state):
    got = bank.sha256(0, state.length)
    if got != state.image_sha256:
        raise ValueError
async def d(self, m):
    digest = await asyncio.to_thread(self._flash_digest, m.size)
    return digest in m.allowed
'''
    assert [line for line, _ in trust_comparisons(planted)] == [4, 6, 9, 13]


def test_lookups_by_recorded_identifiers_are_not_flagged() -> None:
    lookups = '''
def a(offer, declined, images, sha256):
    if offer.manifest_digest in declined:
        return None
    return [i for i in images if i.sha256 == sha256]
def b(digest):
    seen = digest
    return seen == "x"
'''
    assert trust_comparisons(lookups) == []
