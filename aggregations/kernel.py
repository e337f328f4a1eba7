"""The one aggregation kernel: events -> tile states per level, merge of states, reads at times t.

Online (stream/) and offline (sinks/, preview) call exactly these functions. Everything is
vectorized over many entities at once: ``Levels`` holds tiles of many entities, sorted by
(entity code, tile index), per level of the feature set's period chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import latest as plain
from .definitions import Plan
from .fields import FIELDS, State
from .tiles import keep_from, window_levels

FieldKey = tuple[str, str]  # (column, field name)


@dataclass
class EventBatch:
    """Validated, transformed events as columns: entity codes, ms timestamps, arrival sequence, values."""

    codes: np.ndarray
    ts: np.ndarray
    seq: np.ndarray
    columns: Mapping[str, np.ndarray]
    latest: Mapping[str, np.ndarray] = field(default_factory=dict)  # plain features' columns, Python values

    def __len__(self) -> int:
        return len(self.codes)


@dataclass
class Level:
    """Tiles of one period: entity code, tile index (start // period) and field states, row-aligned."""

    period: int
    codes: np.ndarray
    index: np.ndarray
    states: dict[FieldKey, State]

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, rows: np.ndarray) -> Level:
        return Level(
            self.period,
            self.codes[rows],
            self.index[rows],
            {k: FIELDS[k[1]].take(s, rows) for k, s in self.states.items()},
        )


@dataclass
class Levels:
    """State of many entities: one ``Level`` per period of the chain (largest first, 1 ms last), and the
    candidate latest events of plain features (``aggregations.latest``)."""

    levels: dict[int, Level]
    latest: plain.Latest | None = None


def _valid(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return ~np.isnan(values)
    if values.dtype.kind == "O":
        return np.array([v is not None and v == v for v in values.tolist()], dtype=bool)
    return np.ones(len(values), dtype=bool)


def _value_dtype(values: np.ndarray):
    return np.float64 if values.dtype.kind in "fiub" else object


def _boundaries(codes: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Start positions of runs of equal (code, index) in arrays sorted by them."""
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.empty(len(codes), dtype=bool)
    change[0] = True
    change[1:] = (codes[1:] != codes[:-1]) | (index[1:] != index[:-1])
    return np.flatnonzero(change)


def _reduce_groups(key: FieldKey, state: State, starts: np.ndarray, ordered: bool = False) -> State:
    """One state per group (empty input gives empty output)."""
    if len(starts) == 0:
        return tuple(arr[:0] for arr in state)
    return FIELDS[key[1]].reduce_groups(state, starts, ordered=ordered)


def _event_order(codes: np.ndarray, ts: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """The stable permutation sorting events by (code, ts, seq): the same one as ``np.lexsort``, faster.

    When code and time fit in one int64 key, a stable argsort of that key (after a stable sort by seq,
    skipped when seq is already ascending) is several times faster than a three-key lexsort.
    """
    n = len(codes)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int64)
    ts = np.asarray(ts, dtype=np.int64)
    seq = np.asarray(seq, dtype=np.int64)
    c_lo, c_hi, t_lo, t_hi = int(codes.min()), int(codes.max()), int(ts.min()), int(ts.max())
    span = t_hi - t_lo + 1
    if c_lo < 0 or (c_hi + 1) * span >= 2**62:
        return np.lexsort((seq, ts, codes))
    by_seq = None if (seq[1:] >= seq[:-1]).all() else _argsort_seq(seq)
    key = codes * span + (ts - t_lo)
    if by_seq is None:
        return np.argsort(key, kind="stable")
    return by_seq[np.argsort(key[by_seq], kind="stable")]


def _argsort_seq(seq: np.ndarray) -> np.ndarray:
    """Stable argsort of seq; O(n) when seq is a permutation of 0..n-1 (an arrival rank), as it often is."""
    n = len(seq)
    if int(seq.min()) == 0 and int(seq.max()) == n - 1:
        inverse = np.full(n, -1, dtype=np.int64)
        inverse[seq] = np.arange(n, dtype=np.int64)
        if (inverse >= 0).all():  # every rank present once: the inverse permutation is the sort
            return inverse
    return np.argsort(seq, kind="stable")


def empty_levels(plan: Plan) -> Levels:
    """No tiles at all, with the right fields and dtypes per level."""
    levels = {}
    for period in plan.chain:
        states = {(c, f): FIELDS[f].zeros(0) for c, fs in plan.fields_by_column.items() for f in fs}
        levels[period] = Level(period, np.zeros(0, np.int64), np.zeros(0, np.int64), states)
    return Levels(levels, plain.empty(plan))


def build_levels(plan: Plan, events: EventBatch) -> Levels:
    """Aggregate a batch of events into tile states at every level (the 1 ms level is exact)."""
    order = _event_order(events.codes, events.ts, events.seq)
    codes = events.codes[order].astype(np.int64, copy=False)
    ts = events.ts[order].astype(np.int64, copy=False)
    seq = events.seq[order].astype(np.int64, copy=False)
    lifted: dict[FieldKey, State] = {}
    for column, field_names in plan.fields_by_column.items():
        raw = np.asarray(events.columns[column])[order]
        values = raw.astype(np.float64) if _value_dtype(raw) is np.float64 else raw.astype(object)
        valid = _valid(values)
        for name in field_names:
            lifted[(column, name)] = FIELDS[name].lift(values, valid, ts, seq)

    out: dict[int, Level] = {}
    below_codes, below_start, below_states = codes, ts, lifted
    for period in sorted(plan.chain):  # smallest first: each level is built from the one below
        index = below_start // period
        starts = _boundaries(below_codes, index)
        states = {k: _reduce_groups(k, s, starts, ordered=True) for k, s in below_states.items()}
        level = Level(period, below_codes[starts], index[starts], states)
        out[period] = level
        below_codes, below_start, below_states = level.codes, level.index * period, states
    latest = plain.build(plan, events.codes, events.ts, events.seq, events.latest)
    return Levels({p: out[p] for p in plan.chain}, latest)


def merge_levels(a: Levels, b: Levels) -> Levels:
    """Merge two sets of tiles (e.g. stored state and a new batch): equal (code, tile) pairs combine."""
    out = {}
    for period, la in a.levels.items():
        lb = b.levels[period]
        codes = np.concatenate([la.codes, lb.codes])
        index = np.concatenate([la.index, lb.index])
        order = np.lexsort((index, codes))
        codes, index = codes[order], index[order]
        starts = _boundaries(codes, index)
        states = {}
        for key, sa in la.states.items():
            sb = lb.states[key]
            joined = tuple(np.concatenate([x, y])[order] for x, y in zip(sa, sb, strict=True))
            states[key] = _reduce_groups(key, joined, starts)
        out[period] = Level(period, codes[starts], index[starts], states)
    latest = (
        b.latest if a.latest is None else a.latest if b.latest is None else plain.merge(a.latest, b.latest)
    )
    return Levels(out, latest)


def expire(plan: Plan, levels: Levels, now: int) -> Levels:
    """Drop tiles that no read at time >= now can reach (bounded online state)."""
    out = {}
    for period, level in levels.levels.items():
        first_index = keep_from(period, plan.chain, plan.windows, now) // period
        out[period] = level.take(np.flatnonzero(level.index >= first_index))
    latest = None if levels.latest is None else plain.expire(plan, levels.latest, now)
    return Levels(out, latest)


def late_cutoff(plan: Plan, now: int) -> int:
    """Events with a timestamp below this can no longer change any read at time >= now."""
    starts = [w.start(now) for w in plan.windows]
    if plan.latest:
        bound = plain.cutoff(plan, now)
        starts.append(-(2**62) if bound is None else bound)
    return min(starts)


class _LevelIndex:
    """Finds, per query, the row range of one entity's tiles with index in [lo, hi) in a sorted level."""

    def __init__(self, level: Level, q_codes: np.ndarray, lo_index: np.ndarray, hi_index: np.ndarray):
        base = min(int(level.index.min(initial=0)), int(lo_index.min(initial=0)))
        top = max(int(level.index.max(initial=0)), int(hi_index.max(initial=0)))
        span = top - base + 2
        max_code = max(int(level.codes.max(initial=0)), int(q_codes.max(initial=0))) + 1
        if max_code * span >= 2**62:
            raise OverflowError("too many entities in one partition for this time span; use more partitions")
        keys = level.codes * span + (level.index - base)
        self.lo = np.searchsorted(keys, q_codes * span + (np.maximum(lo_index, base) - base), side="left")
        self.hi = np.searchsorted(keys, q_codes * span + (np.maximum(hi_index, base) - base), side="left")
        self.hi = np.maximum(self.hi, self.lo)


def _query_order(q_codes: np.ndarray, q_ts: np.ndarray) -> np.ndarray | None:
    """The permutation sorting queries by (entity code, time), or None if they already are."""
    if len(q_codes) < 2:
        return None
    step = np.diff(q_codes)
    if ((step > 0) | ((step == 0) & (np.diff(q_ts) >= 0))).all():
        return None
    return np.lexsort((q_ts, q_codes))


def read(
    plan: Plan, levels: Levels, q_codes: np.ndarray, q_ts: np.ndarray, features=None
) -> dict[str, np.ndarray]:
    """Every (or the named) aggregated and plain feature at each query (entity code, time t), per the window
    contract (plain features: ``aggregations.latest``)."""
    q_codes = np.asarray(q_codes, dtype=np.int64)
    q_ts = np.asarray(q_ts, dtype=np.int64)
    order = _query_order(q_codes, q_ts)
    if order is not None:  # ranges in (entity, time) order make every range reduction linear
        sorted_out = read(plan, levels, q_codes[order], q_ts[order], features)
        out_of_order = {}
        for name, values in sorted_out.items():
            out_of_order[name] = np.empty_like(values)
            out_of_order[name][order] = values
        return out_of_order
    wanted = set(features) if features is not None else None
    out: dict[str, np.ndarray] = {}
    if plan.latest:
        out.update(plain.read(plan, levels.latest or plain.empty(plan), q_codes, q_ts, wanted))
    for window in plan.windows:
        window_features = [
            f for f in plan.features if f.window == window and (wanted is None or f.name in wanted)
        ]
        if not window_features:
            continue
        needed = {(f.column, name) for f in window_features for name in f.fields}
        acc: dict[FieldKey, State] = {}
        bound = window.start(q_ts)
        for period in window_levels(window, plan.chain):
            level = levels.levels[period]
            upper = (q_ts // period) * period
            ranges = _LevelIndex(level, q_codes, bound // period, upper // period)
            for key in needed:
                part = FIELDS[key[1]].reduce_ranges(level.states[key], ranges.lo, ranges.hi)
                acc[key] = part if key not in acc else FIELDS[key[1]].merge(acc[key], part)
            bound = upper
        for f in window_features:
            out[f.name] = f.finalize({name: acc[(f.column, name)] for name in f.fields})
    return out
