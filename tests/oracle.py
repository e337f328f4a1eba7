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


def aggregate(op, rows, params=()):
    """The exact value of ``op`` over ``rows`` (already restricted to the window); nulls are skipped.

    Approximate ops get their exact counterpart: ``approx_count_distinct`` the distinct count,
    ``approx_percentile`` (params (q,)) the inverted-CDF quantile, ``top_k`` (params (k,)) the k most
    frequent values with counts (ties by value), ``last_k`` the k latest values, latest first.
    """
    vals = [r for r in rows if not _is_null(r["value"])]
    xs = [Fraction(r["value"]) for r in vals] if op in _EXACT_ARITHMETIC else None
    n = len(vals)
    if op == "count":
        return n
    if op in ("count_distinct", "approx_count_distinct"):
        return len({_same(r["value"]) for r in vals})
    if op in _SKETCH_OPS:
        return _sketch_truth(op, vals, params)
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


def feature_at(events, entity, t, op, window_ms, period_ms, params=()):
    return aggregate(op, window_events(events, entity, t, window_ms, period_ms), params)


_EXACT_ARITHMETIC = ("sum", "avg", "min", "max", "sqr", "var", "std")
_SKETCH_OPS = ("approx_percentile", "top_k", "last_k")


def _same(value):
    """Values equal as the kernel sees them: numbers as floats (1 == 1.0, -0.0 == 0.0), the rest as is."""
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, int | float) else value


def _sketch_truth(op, vals, params):
    if not vals:
        return None
    if op == "approx_percentile":
        (q,) = params
        xs = sorted(float(r["value"]) for r in vals)
        need = math.ceil(Fraction(str(q)) * len(xs))  # smallest x with at least ceil(q n) values <= x
        return xs[max(need, 1) - 1]
    (k,) = params
    if op == "top_k":
        counts = value_counts(vals)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return [{"value": v, "count": c} for v, c in ranked[:k]]
    latest = sorted(vals, key=lambda r: (r["ts"], r["seq"]), reverse=True)
    return [r["value"] for r in latest[:k]]


def value_counts(rows):
    """{value: number of rows with it} over the non-null values."""
    counts = {}
    for r in rows:
        if not _is_null(r["value"]):
            v = _same(r["value"])
            counts[v] = counts.get(v, 0) + 1
    return counts


def rank_interval(rows, x):
    """(values < x, values <= x) among the non-null values: where x sits in their sorted order."""
    xs = [float(r["value"]) for r in rows if not _is_null(r["value"])]
    return sum(v < x for v in xs), sum(v <= x for v in xs)


def percentile_within(rows, q, x, rank_error):
    """Is x a value of rows whose rank is within ``rank_error * n`` of q's (the KLL guarantee)?

    The quantile at q has rank ceil(q n); x qualifies when some position it occupies in the sorted values,
    any of (values < x, values <= x], is at most ``rank_error * n`` away from it.
    """
    xs = [float(r["value"]) for r in rows if not _is_null(r["value"])]
    if not xs:
        return x is None or (isinstance(x, float) and math.isnan(x))
    if x not in xs:
        return False
    below, upto = rank_interval(rows, x)
    target = max(math.ceil(Fraction(str(q)) * len(xs)), 1)
    slack = rank_error * len(xs)
    return below + 1 - slack <= target <= upto + slack


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


def latest_at(events, entity, t, ttl_ms=None):
    """A plain feature: the value of the entity's latest event with ``t - ttl <= ts < t`` (ties: the later
    arrival, higher seq); None when there is none. A null value is the answer (None), not skipped."""
    candidates = [
        e for e in events if e["key"] == entity and e["ts"] < t and (ttl_ms is None or e["ts"] >= t - ttl_ms)
    ]
    if not candidates:
        return None
    value = max(candidates, key=lambda e: (e["ts"], e["seq"]))["value"]
    return None if _is_null(value) else value
