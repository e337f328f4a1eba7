"""Mergeable state fields: the only place where aggregation arithmetic lives.

A field is a small tuple of numpy arrays (one element per tile or per query) with four vectorized
operations: ``lift`` (events -> one state per event), ``merge`` (elementwise), ``reduce_groups``
(contiguous, non-overlapping groups -> one state per group) and ``reduce_ranges`` (possibly
overlapping [lo, hi) ranges of time-ordered, non-overlapping tiles -> one state per range).
Ops (count, avg, var, ...) are read from fields at finalize time; see ``ops.py``. The bounded-state
fields of the sketch ops live in ``sketch_fields.py``; their ``reduce_ranges`` returns a read-only union that
never compacts (``merge`` of two such unions unites them), so a read path must go through ``reduce_ranges``
(or ``read_combine``) and ``merge``, never through ``reduce_groups``, to read deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sketch_fields import CpcField, KllField, parametrized_field

State = tuple[np.ndarray, ...]

I64_MIN = np.iinfo(np.int64).min
I64_MAX = np.iinfo(np.int64).max


def _group_ids(starts: np.ndarray, size: int) -> np.ndarray:
    """Group number of each element, for groups beginning at ``starts`` (starts[0] == 0)."""
    marks = np.zeros(size, dtype=np.int64)
    if len(starts) > 1:
        marks[starts[1:]] = 1
    return np.cumsum(marks)


def _ufunc_ranges(
    ufunc: np.ufunc, values: np.ndarray, lo: np.ndarray, hi: np.ndarray, identity
) -> np.ndarray:
    """``ufunc.reduce(values[lo:hi])`` for each range; empty ranges give ``identity``."""
    out = np.full(len(lo), identity, dtype=values.dtype)
    nonempty = np.flatnonzero(hi > lo)
    if len(nonempty) == 0 or len(values) == 0:
        return out
    starts = lo[nonempty]
    if (starts[1:] < starts[:-1]).any():
        # reduceat also reduces the gap between one range's end and the next range's start. With starts
        # ascending those gaps are disjoint (O(n) in all); in arbitrary order each may span the array.
        nonempty = nonempty[np.argsort(starts, kind="stable")]
    padded = np.append(values, np.array([identity], dtype=values.dtype))
    pairs = np.empty(2 * len(nonempty), dtype=np.int64)
    pairs[0::2] = lo[nonempty]
    pairs[1::2] = hi[nonempty]
    out[nonempty] = ufunc.reduceat(padded, pairs)[0::2]
    return out


@dataclass(frozen=True)
class UfuncField:
    """A field whose merge is an associative, commutative ufunc: count, sum, sum of squares, min, max."""

    name: str
    ufunc: np.ufunc
    identity: float | int
    dtype: type
    lift_kind: str  # "valid" (1 per non-null), "value", "square"

    def zeros(self, n: int, value_dtype=None) -> State:
        return (np.full(n, self.identity, dtype=self.dtype),)

    def lift(self, values: np.ndarray, valid: np.ndarray, ts: np.ndarray, seq: np.ndarray) -> State:
        if self.lift_kind == "valid":
            return (valid.astype(self.dtype),)
        x = values.astype(np.float64, copy=False)
        if self.lift_kind == "square":
            x = x * x
        return (np.where(valid, x, self.identity).astype(self.dtype, copy=False),)

    def merge(self, a: State, b: State) -> State:
        return (self.ufunc(a[0], b[0]),)

    def reduce_groups(self, s: State, starts: np.ndarray, ordered: bool = False) -> State:
        if len(s[0]) == 0:
            return self.zeros(0)
        if len(starts) == len(s[0]):  # every group is one element (typical of fine levels): nothing to reduce
            return (s[0].copy(),)
        return (self.ufunc.reduceat(s[0], starts),)

    def reduce_ranges(self, s: State, lo: np.ndarray, hi: np.ndarray) -> State:
        return (_ufunc_ranges(self.ufunc, s[0], lo, hi, self.identity),)

    def take(self, s: State, index: np.ndarray) -> State:
        return (s[0][index],)


@dataclass(frozen=True)
class ExtremeByTimeField:
    """First or last non-null value by event time, ties broken by arrival sequence.

    State: (ts, seq, value). Empty: ts at the sentinel (I64_MAX for first, I64_MIN for last).
    """

    name: str
    latest: bool  # True: last, False: first

    @property
    def sentinel(self) -> int:
        return I64_MIN if self.latest else I64_MAX

    def zeros(self, n: int, value_dtype=np.float64) -> State:
        fill = np.nan if np.dtype(value_dtype).kind == "f" else None
        return (
            np.full(n, self.sentinel, dtype=np.int64),
            np.zeros(n, dtype=np.int64),
            np.full(n, fill, dtype=value_dtype),
        )

    def lift(self, values: np.ndarray, valid: np.ndarray, ts: np.ndarray, seq: np.ndarray) -> State:
        return (np.where(valid, ts, self.sentinel).astype(np.int64), seq.astype(np.int64), values)

    def _better(self, a: State, b: State) -> np.ndarray:
        """True where b wins over a."""
        if self.latest:
            return (b[0] > a[0]) | ((b[0] == a[0]) & (b[1] > a[1]) & (b[0] != I64_MIN))
        return (b[0] < a[0]) | ((b[0] == a[0]) & (b[1] < a[1]) & (b[0] != I64_MAX))

    def merge(self, a: State, b: State) -> State:
        pick_b = self._better(a, b)
        return tuple(np.where(pick_b, y, x) for x, y in zip(a, b, strict=True))

    def reduce_groups(self, s: State, starts: np.ndarray, ordered: bool = False) -> State:
        n = len(s[0])
        if n == 0:
            return s
        if len(starts) == n:  # every group is one element: the element itself, as the general paths give
            found = s[0] != self.sentinel
            if found.all() or not ordered:
                return tuple(arr.copy() for arr in s)
            # The ordered path gives empty groups the canonical empty state (``zeros``).
            value = s[2].copy()
            value[~found] = np.nan if value.dtype.kind == "f" else None
            return (s[0].copy(), np.where(found, s[1], 0), value)
        if ordered:
            # Elements of each group are already in (ts, seq) order: the winner is the group's last (or
            # first) non-empty position. Groups are contiguous, so one reduceat over ``starts`` finds it.
            nonempty = s[0] != self.sentinel
            positions = np.arange(n, dtype=np.int64)
            if self.latest:
                cand = np.maximum.reduceat(np.where(nonempty, positions, -1), starts)
                found = cand >= 0
            else:
                cand = np.minimum.reduceat(np.where(nonempty, positions, n), starts)
                found = cand < n
            return self._pick(s, cand, found)
        groups = _group_ids(starts, n)
        # Order inside each group by (ts, seq); empty states carry the sentinel and sort to the losing end.
        order = np.lexsort((s[1], s[0], groups))
        ends = np.append(starts[1:], n)
        pick = order[ends - 1] if self.latest else order[starts]
        return self.take(s, pick)

    def reduce_ranges(self, s: State, lo: np.ndarray, hi: np.ndarray) -> State:
        # Tiles in a range are time-ordered and disjoint, so the winner is the last (or first)
        # non-empty position of the range.
        n = len(s[0])
        nonempty = s[0] != self.sentinel
        positions = np.arange(n, dtype=np.int64)
        if self.latest:
            cand = _ufunc_ranges(np.maximum, np.where(nonempty, positions, -1), lo, hi, -1)
            found = cand >= 0
        else:
            cand = _ufunc_ranges(np.minimum, np.where(nonempty, positions, n), lo, hi, n)
            found = cand < n
        return self._pick(s, cand, found)

    def _pick(self, s: State, cand: np.ndarray, found: np.ndarray) -> State:
        """The states at positions ``cand`` where ``found``, empty states elsewhere."""
        if found.all():
            return self.take(s, cand)
        out = self.zeros(len(cand), s[2].dtype)
        if found.any():
            picked = self.take(s, cand[found])
            for arr, src in zip(out, picked, strict=True):
                arr[found] = src
        return out

    def take(self, s: State, index: np.ndarray) -> State:
        return tuple(arr[index] for arr in s)


@dataclass(frozen=True)
class MomentsField:
    """Count, mean and M2 (sum of squared deviations) with Chan et al.'s stable merge: var and std."""

    name: str = "moments"

    def zeros(self, n: int, value_dtype=None) -> State:
        return (np.zeros(n, dtype=np.int64), np.zeros(n), np.zeros(n))

    def lift(self, values: np.ndarray, valid: np.ndarray, ts: np.ndarray, seq: np.ndarray) -> State:
        x = values.astype(np.float64, copy=False)
        return (valid.astype(np.int64), np.where(valid, x, 0.0), np.zeros(len(x)))

    def merge(self, a: State, b: State) -> State:
        na, ma, m2a = a
        nb, mb, m2b = b
        n = na + nb
        safe_n = np.where(n > 0, n, 1).astype(np.float64)
        delta = mb - ma
        mean = np.where(n > 0, ma + delta * (nb / safe_n), 0.0)
        m2 = m2a + m2b + delta * delta * (na * (nb / safe_n))
        return (n, mean, np.where(n > 0, m2, 0.0))

    def reduce_groups(self, s: State, starts: np.ndarray, ordered: bool = False) -> State:
        n_el, mean_el, m2_el = s
        if len(n_el) == 0:
            return s
        n = np.add.reduceat(n_el, starts)
        total = np.add.reduceat(n_el * mean_el, starts)
        mean = np.where(n > 0, total / np.where(n > 0, n, 1), 0.0)
        groups = _group_ids(starts, len(n_el))
        dev = mean_el - mean[groups]
        m2 = np.add.reduceat(m2_el + n_el * dev * dev, starts)
        return (n, mean, m2)

    def reduce_ranges(self, s: State, lo: np.ndarray, hi: np.ndarray) -> State:
        return _fold_ranges(self, s, lo, hi)

    def take(self, s: State, index: np.ndarray) -> State:
        return tuple(arr[index] for arr in s)


@dataclass(frozen=True)
class DistinctField:
    """The exact set of distinct non-null values (object array of frozensets): count_distinct."""

    name: str = "distinct"

    def zeros(self, n: int, value_dtype=None) -> State:
        out = np.empty(n, dtype=object)
        out[:] = [frozenset()] * n
        return (out,)

    def lift(self, values: np.ndarray, valid: np.ndarray, ts: np.ndarray, seq: np.ndarray) -> State:
        out = np.empty(len(values), dtype=object)
        out[:] = [
            frozenset((v,)) if ok else frozenset()
            for v, ok in zip(values.tolist(), valid.tolist(), strict=True)
        ]
        return (out,)

    def merge(self, a: State, b: State) -> State:
        out = np.empty(len(a[0]), dtype=object)
        out[:] = [x | y for x, y in zip(a[0], b[0], strict=True)]
        return (out,)

    def reduce_groups(self, s: State, starts: np.ndarray, ordered: bool = False) -> State:
        ends = np.append(starts[1:], len(s[0]))
        out = np.empty(len(starts), dtype=object)
        out[:] = [frozenset().union(*s[0][a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
        return (out,)

    def reduce_ranges(self, s: State, lo: np.ndarray, hi: np.ndarray) -> State:
        out = np.empty(len(lo), dtype=object)
        out[:] = [frozenset().union(*s[0][a:b]) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]
        return (out,)

    def take(self, s: State, index: np.ndarray) -> State:
        return (s[0][index],)


def _fold_ranges(field, s: State, lo: np.ndarray, hi: np.ndarray) -> State:
    """Generic range reduce by repeated elementwise merge; work is proportional to the total range length."""
    acc = field.zeros(len(lo))
    lengths = hi - lo
    if len(lengths) == 0:
        return acc
    for k in range(int(lengths.max(initial=0))):
        active = np.flatnonzero(lengths > k)
        merged = field.merge(field.take(acc, active), field.take(s, lo[active] + k))
        for arr, new in zip(acc, merged, strict=True):
            arr[active] = new
    return acc


class _Fields(dict):
    """Field name -> field; parametrized names (``frequent:7``, ``last_k:5``) are built on first use."""

    def __missing__(self, name: str):
        field = parametrized_field(name)
        if field is None:
            raise KeyError(name)
        self[name] = field
        return field


FIELDS = _Fields({
    "count": UfuncField("count", np.add, 0, np.int64, "valid"),
    "sum": UfuncField("sum", np.add, 0.0, np.float64, "value"),
    "sumsq": UfuncField("sumsq", np.add, 0.0, np.float64, "square"),
    "min": UfuncField("min", np.minimum, np.inf, np.float64, "value"),
    "max": UfuncField("max", np.maximum, -np.inf, np.float64, "value"),
    "first": ExtremeByTimeField("first", latest=False),
    "last": ExtremeByTimeField("last", latest=True),
    "moments": MomentsField(),
    "distinct": DistinctField(),
    "cpc": CpcField(),
    "kll": KllField(),
})
