"""The op registry: each op names the state fields it needs and how to read its value from them.

This is the single place that maps an op name to arithmetic; online and offline both finalize here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .fields import FIELDS, State


@dataclass(frozen=True)
class Op:
    """An aggregation op: the fields it reads, whether it needs numbers, and its finalize function."""

    name: str
    fields: tuple[str, ...]
    numeric_only: bool
    finalize: Callable[[Mapping[str, State]], np.ndarray]
    doc: str


def _count(s):
    return s["count"][0].astype(np.int64)


def _sum(s):
    return s["sum"][0].astype(np.float64)


def _null_if_empty(values: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.where(count > 0, values, np.nan)


def _avg(s):
    n = s["count"][0]
    return np.where(n > 0, s["sum"][0] / np.where(n > 0, n, 1), np.nan)


def _var(s):
    n, _mean, m2 = s["moments"]
    return np.where(n >= 2, m2 / np.where(n >= 2, n - 1, 1), np.nan)


def _extreme(field: str):
    def finalize(s):
        ts, _seq, value = s[field]
        empty = ts == FIELDS[field].sentinel
        if value.dtype.kind == "f":
            return np.where(empty, np.nan, value)
        out = value.copy()
        out[empty] = None
        return out

    return finalize


def _count_distinct(s):
    return np.fromiter((len(v) for v in s["distinct"][0]), dtype=np.int64, count=len(s["distinct"][0]))


OPS: dict[str, Op] = {
    op.name: op
    for op in [
        Op("count", ("count",), False, _count, "number of non-null values"),
        Op("sum", ("sum",), True, _sum, "sum of values (0 for an empty window)"),
        Op("avg", ("count", "sum"), True, _avg, "mean of values"),
        Op("min", ("count", "min"), True, lambda s: _null_if_empty(s["min"][0], s["count"][0]), "minimum"),
        Op("max", ("count", "max"), True, lambda s: _null_if_empty(s["max"][0], s["count"][0]), "maximum"),
        Op("first", ("first",), False, _extreme("first"), "earliest value by event time, ties by arrival"),
        Op("last", ("last",), False, _extreme("last"), "latest value by event time, ties by arrival"),
        Op(
            "sqr",
            ("count", "sumsq"),
            True,
            lambda s: _null_if_empty(s["sumsq"][0], s["count"][0]),
            "sum of squares",
        ),
        Op("var", ("moments",), True, _var, "sample variance (n - 1); null below two values"),
        Op("std", ("moments",), True, lambda s: np.sqrt(_var(s)), "sample standard deviation"),
        Op("count_distinct", ("distinct",), False, _count_distinct, "exact number of distinct values"),
    ]
}


def get_op(name: str) -> Op:
    """Look up an op by name, with an error that lists the valid ones."""
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; valid ops: {', '.join(sorted(OPS))}") from None
