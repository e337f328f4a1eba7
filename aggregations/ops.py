"""The op registry: each op names the state fields it needs and how to read its value from them.

This is the single place that maps an op name to arithmetic; online and offline both finalize here.
An op is declared by a spec string: a name (``"avg"``) or, for parametrized ops, a name with arguments
(``"top_k(5)"``, ``"approx_percentile(0.5, 0.99)"``). A spec yields one or more features, each with a
label (the op part of ``{column}_{label}_{window}``) and its own parameters; see ``parse_op``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .fields import FIELDS, State
from .sketch_fields import CPC_LG_K, KLL_K

#: Per-feature parameters of a parametrized op's spec: (label, params) for each feature it yields.
Expand = Callable[[tuple], list[tuple[str, tuple]]]


@dataclass(frozen=True)
class Op:
    """An aggregation op: the fields it reads, whether it needs numbers, and its finalize function.

    ``fields`` and ``finalize`` take the feature's parameters after the states (none for plain ops).
    ``approximate``: the value is an estimate within a stated error bound. ``deterministic``: the same
    events give the same value however they were tiled and merged (so online equals offline exactly).
    ``expand`` (parametrized ops only) checks a spec's arguments and lists the features they yield.
    """

    name: str
    fields: tuple[str, ...] | Callable[..., tuple[str, ...]]
    numeric_only: bool
    finalize: Callable[..., np.ndarray]
    doc: str
    approximate: bool = False
    deterministic: bool = True
    expand: Expand | None = None
    usage: str = ""

    def fields_for(self, params: tuple = ()) -> tuple[str, ...]:
        """The state fields a feature of this op with these parameters reads."""
        return self.fields(*params) if callable(self.fields) else self.fields

    def finalize_for(self, states: Mapping[str, State], params: tuple = ()) -> np.ndarray:
        """The feature's values from its fields' states (one per tile range or query)."""
        return self.finalize(states, *params)


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


def _approx_count_distinct(s):
    cpc = FIELDS["cpc"]
    elements = s["cpc"][0]
    return np.fromiter((round(cpc.estimate(e)) for e in elements), dtype=np.int64, count=len(elements))


def _percentile(s, q: float):
    kll = FIELDS["kll"]
    elements = s["kll"][0]
    return np.fromiter((kll.quantile(e, q) for e in elements), dtype=np.float64, count=len(elements))


def _object_column(items) -> np.ndarray:
    items = list(items)
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def frequent_lg(k: int) -> int:
    """log2 of top_k(k)'s counter map: 8k to 16k counters (at least 64), so ranks past k stay well resolved."""
    return max(6, math.ceil(math.log2(k)) + 3)


def _frequent_field(k: int) -> tuple[str, ...]:
    return (f"frequent:{frequent_lg(k)}",)


def _top_k(s, k: int):
    (name,) = _frequent_field(k)
    field = FIELDS[name]
    return _object_column(field.top(e, k) for e in s[name][0])


def _last_k_field(k: int) -> tuple[str, ...]:
    return (f"last_k:{k}",)


def _last_k(s, k: int):
    (name,) = _last_k_field(k)
    field = FIELDS[name]
    return _object_column(field.values(e) for e in s[name][0])


MAX_TOP_K = 100
MAX_LAST_K = 1000
MAX_QUANTILE_DECIMALS = 4


def percentile_label(q: float) -> str:
    """Feature label of quantile q: ``p`` + its decimals, at least two: 0.5 -> p50, 0.05 -> p05, 0.999 -> p999, 1 -> p100."""
    if q == 1:
        return "p100"
    digits = f"{q:.{MAX_QUANTILE_DECIMALS}f}".split(".")[1].rstrip("0")
    return "p" + digits.ljust(2, "0")


def _expand_percentiles(args: tuple) -> list[tuple[str, tuple]]:
    if not args:
        raise ValueError("needs at least one quantile")
    out = []
    for q in args:
        if not isinstance(q, int | float) or not 0 <= q <= 1:
            raise ValueError(f"quantile {q!r} is not a number in [0, 1]")
        if round(q, MAX_QUANTILE_DECIMALS) != q:
            raise ValueError(f"quantile {q!r} has more than {MAX_QUANTILE_DECIMALS} decimals")
        out.append((percentile_label(q), (float(q),)))
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate quantile in {list(args)!r}")
    return out


def _expand_k(prefix: str, limit: int) -> Expand:
    def expand(args: tuple) -> list[tuple[str, tuple]]:
        if len(args) != 1 or not isinstance(args[0], int) or not 1 <= args[0] <= limit:
            raise ValueError(f"needs one integer k in 1..{limit}")
        return [(f"{prefix}{args[0]}", (args[0],))]

    return expand


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
        Op(
            "count_distinct",
            ("distinct",),
            False,
            _count_distinct,
            "exact number of distinct values; state grows with them (prefer approx_count_distinct)",
        ),
        Op(
            "approx_count_distinct",
            ("cpc",),
            False,
            _approx_count_distinct,
            f"distinct values estimated by a CPC sketch (lg_k {CPC_LG_K}): relative standard error about 1.5%",
            approximate=True,
        ),
        Op(
            "approx_percentile",
            lambda q: ("kll",),
            True,
            _percentile,
            f"quantiles by a KLL sketch (k {KLL_K}): rank error at most 1.33% of the count (99% confidence); "
            f"exact up to {KLL_K} values",
            approximate=True,
            deterministic=False,
            expand=_expand_percentiles,
            usage="approx_percentile(q, ...) with each q in [0, 1], e.g. approx_percentile(0.5, 0.99)",
        ),
        Op(
            "top_k",
            _frequent_field,
            False,
            _top_k,
            "the k most frequent values with their counts, most frequent first (frequent items sketch)",
            approximate=True,
            deterministic=False,
            expand=_expand_k("top", MAX_TOP_K),
            usage=f"top_k(k) with k in 1..{MAX_TOP_K}, e.g. top_k(5)",
        ),
        Op(
            "last_k",
            _last_k_field,
            False,
            _last_k,
            "the k latest values by event time (ties by arrival), latest first; exact",
            expand=_expand_k("last", MAX_LAST_K),
            usage=f"last_k(k) with k in 1..{MAX_LAST_K}, e.g. last_k(5)",
        ),
    ]
}


def get_op(name: str) -> Op:
    """Look up an op by name, with an error that lists the valid ones."""
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; valid ops: {', '.join(sorted(OPS))}") from None


@dataclass(frozen=True)
class OpSpec:
    """A parsed op spec: the op's name and its arguments (empty for plain ops). Plain data, so picklable."""

    name: str
    args: tuple = ()

    @property
    def op(self) -> Op:
        return get_op(self.name)

    @property
    def canonical(self) -> str:
        """The spec as written back: the name alone for plain ops, else ``name(param,...)`` of the normalized
        parameters (shortest reprs), so that equal specs (``q = 1`` and ``q = 1.0``) read the same."""
        if self.op.expand is None:
            return self.op.name
        params = [p for _label, ps in self.outputs() for p in ps]
        return f"{self.op.name}({','.join(repr(p) for p in params)})"

    def outputs(self) -> list[tuple[str, tuple]]:
        """(label, params) of each feature the spec yields, in declaration order."""
        if self.op.expand is None:
            return [(self.op.name, ())]
        return self.op.expand(self.args)


_SPEC = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$", re.DOTALL)
_INT = re.compile(r"^[-+]?\d+$")
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _literal(text: str) -> int | float:
    text = text.strip()
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    raise ValueError(f"argument {text!r} is not a number")


def parse_op(spec: str) -> OpSpec:
    """``"avg"`` or ``"top_k(5)"`` -> ``OpSpec``; errors name the spec and show the op's usage."""
    if not isinstance(spec, str):
        raise ValueError(f"op must be a string such as 'avg' or 'top_k(5)', got {spec!r}")
    match = _SPEC.match(spec)
    if not match:
        raise ValueError(f"malformed op {spec!r}; write a name such as 'avg' or a call such as 'top_k(5)'")
    op = get_op(match.group(1))
    raw = match.group(2)
    if op.expand is None:
        if raw is not None:
            raise ValueError(f"op {op.name!r} takes no arguments, got {spec!r}")
        return OpSpec(op.name)
    if raw is None:
        raise ValueError(f"op {op.name!r} needs arguments: {op.usage}")
    try:
        args = tuple(_literal(a) for a in raw.split(",")) if raw.strip() else ()
        parsed = OpSpec(op.name, args)
        parsed.outputs()  # validates the arguments
    except ValueError as exc:
        raise ValueError(f"op {spec!r}: {exc}; usage: {op.usage}") from None
    return parsed
