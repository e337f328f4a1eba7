"""Strict JSON on the worker's HTTP API, both ways (RFC 8259: no NaN, Infinity or -Infinity).

* Answers: ``dumps`` writes non-finite floats as ``null`` (a sum that overflowed float64, an on-read
  feature divided by zero), so every strict parser reads them. The fast path is one ``orjson.dumps`` call
  (which writes them as null itself, several times faster than ``json``); what orjson refuses (a lone
  surrogate in an entity id, an integer beyond 64 bits, a type it does not know) takes the ``json`` path,
  which walks and rewrites an answer only if it holds a non-finite value.
* Requests: ``loads`` refuses ``NaN``/``Infinity`` literals, numbers beyond float64 (``1e400``) and
  nesting deeper than ``MAX_DEPTH`` with ``NotStrictJSON`` (the views answer 400).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

MAX_DEPTH = 32  # a vector request is {"entities": [{...}]}: depth 3, plus room for nested request columns


class NotStrictJSON(ValueError):
    """A request body that is not strict JSON (malformed, non-finite numbers, nested too deeply)."""


def dumps(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON; NaN and ±Infinity become null."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is one
        pass
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except ValueError:  # a non-finite float somewhere: rewrite them (rare, so not on the fast path)
        text = json.dumps(finite(value), allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def finite(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, tuples of scalars) with NaN and ±Infinity replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _no_constant(name: str):
    raise NotStrictJSON(f"{name} is not JSON (send null, or a finite number)")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise NotStrictJSON(f"number {text[:40]} is out of float64 range")
    return number


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True if containers nest deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def loads(body: bytes | str) -> Any:
    """Parse a request body as strict JSON, or raise ``NotStrictJSON`` with a one-line reason."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NotStrictJSON(f"request body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except NotStrictJSON:
        raise
    except RecursionError:  # the C scanner recurses per level: a hostile body ends here, not in a crash
        value = None
        deep = True
    except ValueError as exc:
        raise NotStrictJSON(f"request body is not valid JSON: {str(exc)[:120]}") from None
    else:
        deep = too_deep(value)
    if deep:
        raise NotStrictJSON(f"request body is nested deeper than {MAX_DEPTH} levels")
    return value
