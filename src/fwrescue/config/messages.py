"""pydantic's validation errors as ConfigError messages that name the key, what was wrong
and the limit: ``network.port out of range (hi=65535, value=70000)``,
``targets[1].flash.kind must be one of 'file' or 'flashrom'``,
``unknown keys in [root.transport] (keys=['colour'])``.

Keys are dotted paths from the file's root (list items as ``[i]``); tables are named
``[root.<path>]``. The first error is reported (the file is refused either way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from fwrescue.config.fields import PATTERN_WORDS, Invalid
from fwrescue.errors import ConfigError

_UNKNOWN = {"extra_forbidden", "unexpected_keyword_argument", "unexpected_positional_argument"}
_MISSING = {"missing", "missing_argument", "missing_keyword_only_argument"}
_BOUNDS = {"greater_than_equal": ("lo", "ge"), "greater_than": ("lo", "gt"),
           "less_than_equal": ("hi", "le"), "less_than": ("hi", "lt")}
_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "string": "string",
          "list": "array", "tuple": "array", "dict": "table", "dataclass": "table",
          "model": "table", "model_attributes": "table", "arguments": "table",
          "path": "string", "is_instance_of": "string"}


def key_path(loc: Sequence[int | str]) -> str:
    """``("targets", 1, "flash", "kind")`` -> ``targets[1].flash.kind``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _table(loc: Sequence[int | str]) -> str:
    return f"[root.{key_path(loc)}]" if loc else "[root]"


def _shown(value: object) -> object:
    if isinstance(value, str):
        return value[:200]
    return value if isinstance(value, int | float | type(None)) else type(value).__name__


def config_error(error: ValidationError, prefix: tuple[str, ...] = ()) -> ConfigError:
    """The ConfigError for ``error``'s first problem; ``prefix`` is where the validated
    table sits in the file (``("network",)`` for a table validated on its own)."""
    details = error.errors(include_url=False)
    first = details[0]
    if first["type"] in _UNKNOWN:
        parent = first["loc"][:-1]
        keys = sorted(str(d["loc"][-1]) for d in details
                      if d["type"] in _UNKNOWN and d["loc"][:-1] == parent)
        return ConfigError(f"unknown keys in {_table(prefix + parent)}", keys=keys)
    return _one(first, key_path(prefix + first["loc"]) or "the file")


def _one(d: ErrorDetails, key: str) -> ConfigError:
    kind, ctx = d["type"], d.get("ctx") or {}
    value: Any = _shown(d["input"])
    if kind in _BOUNDS:
        side, limit = _BOUNDS[kind]
        return ConfigError(f"{key} out of range", value=value, **{side: ctx[limit]})
    if kind in _MISSING:
        return ConfigError(f"{key} is required")
    if kind == "literal_error":
        return ConfigError(f"{key} must be one of {ctx['expected']}", value=value)
    if kind == "string_pattern_mismatch":
        pattern = str(ctx["pattern"])
        return ConfigError(f"{key} must be {PATTERN_WORDS.get(pattern, 'like ' + pattern)}",
                           value=value)
    if kind == "too_long":
        return ConfigError(f"{key} lists too many entries", count=ctx.get("actual_length"),
                           limit=ctx["max_length"])
    if kind == "too_short":
        n = ctx["min_length"]
        return ConfigError(f"{key} must list at least {n} {'entry' if n == 1 else 'entries'}")
    if kind == "value_error" and isinstance(ctx.get("error"), Invalid):
        invalid: Invalid = ctx["error"]
        return ConfigError(f"{key} {invalid.text}", **invalid.fields)
    expected = _TYPES.get(kind.removesuffix("_type").removesuffix("_parsing"))
    if expected is not None:
        return ConfigError(f"{key} has the wrong type", expected=expected)
    return ConfigError(f"{key} is invalid: {d['msg']}", value=value)
