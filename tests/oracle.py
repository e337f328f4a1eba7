"""Brute-force reference for the window contract, written independently of the product code.

Plain Python loops over events: for a read of entity e at time t, a window W with period P covers
events with ``floor((t - W) / P) * P <= ts < t``. Exact arithmetic (fractions) for sums and
variances. Used only by tests.
"""

from __future__ import annotations

import math
from fractions import Fraction


def window_events(events, entity, t, window_ms, period_ms):
    """Events (dicts with key, ts, seq, value) of one entity inside the window read at t."""
    start = ((t - window_ms) // period_ms) * period_ms
    return [e for e in events if e["key"] == entity and start <= e["ts"] < t]


def _is_null(v):
    return v is None or (isinstance(v, float) and math.isnan(v))


def aggregate(op, rows):
    """The value of ``op`` over ``rows`` (already restricted to the window); nulls are skipped."""
    vals = [r for r in rows if not _is_null(r["value"])]
    xs = (
        [Fraction(r["value"]) for r in vals]
        if op not in ("first", "last", "count", "count_distinct")
        else None
    )
    n = len(vals)
    if op == "count":
        return n
    if op == "count_distinct":
        return len({r["value"] for r in vals})
    if op == "sum":
        return float(sum(xs, Fraction(0)))
    if n == 0:
        return None
    if op == "avg":
        return float(sum(xs, Fraction(0)) / n)
    if op == "min":
        return float(min(xs))
    if op == "max":
        return float(max(xs))
    if op == "sqr":
        return float(sum((x * x for x in xs), Fraction(0)))
    if op in ("var", "std"):
        if n < 2:
            return None
        mean = sum(xs, Fraction(0)) / n
        var = sum(((x - mean) ** 2 for x in xs), Fraction(0)) / (n - 1)
        return float(var) if op == "var" else math.sqrt(float(var))
    if op == "first":
        return min(vals, key=lambda r: (r["ts"], r["seq"]))["value"]
    if op == "last":
        return max(vals, key=lambda r: (r["ts"], r["seq"]))["value"]
    raise ValueError(op)


def feature_at(events, entity, t, op, window_ms, period_ms):
    return aggregate(op, window_events(events, entity, t, window_ms, period_ms))


def tolerance(op, events_in_window):
    """Allowed absolute error for float results: 1e-9 relative, floored by the conditioning of the data."""
    xs = [abs(float(r["value"])) for r in events_in_window if not _is_null(r["value"])]
    scale = max(xs, default=0.0)
    if op in ("sum", "sqr"):
        mag = sum(xs) if op == "sum" else sum(x * x for x in xs)
        return 1e-12 * mag
    if op in ("avg",):
        return 1e-12 * scale
    if op in ("var",):
        return 1e-12 * scale * scale * max(len(xs), 1)
    if op in ("std",):
        return 1e-6 * scale
    return 0.0
