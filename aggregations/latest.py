"""Plain features (``Feature``): the value of each entity's latest event, kept beside the tiles.

A plain feature read at t is its column in the entity's latest event with timestamp in ``[t - ttl, t)``
(ties by arrival sequence), null when there is none. Every plain feature of a set reads the same event
(the latest before t), so one state serves them all: the candidate events of each entity, sorted by
(entity code, ts, seq), with their plain columns as Python values (ints stay ints, a null is None).

Offline every event is a candidate. Online, ``expire`` keeps only what a read at any time >= now can
return: the latest event before now (if within the longest ttl) and every event at or after now (events
may carry a time a little in the future). The kernel builds, merges, expires and reads this state with
its tiles (``kernel.Levels.latest``); the codec stores it in the entity's state value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .definitions import Plan


@dataclass
class Latest:
    """Candidate events of many entities, sorted by (code, ts, seq); ``values``: plain column -> objects."""

    codes: np.ndarray
    ts: np.ndarray
    seq: np.ndarray
    values: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, rows: np.ndarray) -> Latest:
        return Latest(
            self.codes[rows], self.ts[rows], self.seq[rows], {c: v[rows] for c, v in self.values.items()}
        )


def columns_of(plan: Plan) -> tuple[str, ...]:
    """The event columns a plan's plain features read, in declaration order."""
    return tuple(dict.fromkeys(f.column for f in plan.latest))


def empty(plan: Plan) -> Latest:
    z = np.zeros(0, dtype=np.int64)
    return Latest(z, z.copy(), z.copy(), {c: np.empty(0, dtype=object) for c in columns_of(plan)})


def python_values(series: pd.Series) -> np.ndarray:
    """A column as an object array of Python values (int, float, str, bool), None for null or NaN."""
    values = series.astype(object).to_numpy(dtype=object)
    out = np.empty(len(values), dtype=object)
    out[:] = [None if (v is None or v is pd.NA or v != v) else (v.item() if isinstance(v, np.generic) else v)
              for v in values.tolist()]  # fmt: skip
    return out


def _order(codes: np.ndarray, ts: np.ndarray, seq: np.ndarray) -> np.ndarray:
    return np.lexsort((seq, ts, codes))


def build(
    plan: Plan, codes: np.ndarray, ts: np.ndarray, seq: np.ndarray, values: Mapping[str, np.ndarray]
) -> Latest:
    """Every event as a candidate (``values``: plain column -> Python values, row-aligned with the events)."""
    if not plan.latest:
        return empty(plan)
    codes = np.asarray(codes, dtype=np.int64)
    ts = np.asarray(ts, dtype=np.int64)
    seq = np.asarray(seq, dtype=np.int64)
    order = _order(codes, ts, seq)
    return Latest(
        codes[order],
        ts[order],
        seq[order],
        {c: np.asarray(values[c], dtype=object)[order] for c in columns_of(plan)},
    )


def merge(a: Latest, b: Latest) -> Latest:
    """Both sets of candidates, sorted."""
    codes = np.concatenate([a.codes, b.codes])
    ts = np.concatenate([a.ts, b.ts])
    seq = np.concatenate([a.seq, b.seq])
    order = _order(codes, ts, seq)
    values = {c: np.concatenate([a.values[c], b.values[c]])[order] for c in a.values}
    return Latest(codes[order], ts[order], seq[order], values)


def cutoff(plan: Plan, now: int) -> int | None:
    """Events before this cannot be returned by a plain read at any time >= now (None: no bound)."""
    if not plan.latest or any(f.ttl_ms is None for f in plan.latest):
        return None
    return now - max(f.ttl_ms for f in plan.latest)


def expire(plan: Plan, latest: Latest, now: int) -> Latest:
    """Keep per entity its latest event before ``now`` (if some read can still see it) and all at or after."""
    n = len(latest)
    if n == 0:
        return latest
    future = latest.ts >= now
    last_of_past = ~future.copy()
    # A past event is dominated when the next row is the same entity and also past (sorted by code, ts, seq).
    last_of_past[:-1] &= ~((latest.codes[1:] == latest.codes[:-1]) & ~future[1:])
    bound = cutoff(plan, now)
    if bound is not None:
        last_of_past &= latest.ts >= bound
    keep = future | last_of_past
    return latest if keep.all() else latest.take(np.flatnonzero(keep))


def read(
    plan: Plan, latest: Latest, q_codes: np.ndarray, q_ts: np.ndarray, names=None
) -> dict[str, np.ndarray]:
    """Each plain feature (or the named ones) at each query (entity code, t): object arrays, None for null."""
    features = [f for f in plan.latest if names is None or f.name in names]
    if not features:
        return {}
    q_codes = np.asarray(q_codes, dtype=np.int64)
    q_ts = np.asarray(q_ts, dtype=np.int64)
    pos = _latest_before(latest, q_codes, q_ts)
    found = pos >= 0
    safe = np.where(found, pos, 0)
    cand_ts = latest.ts[safe] if len(latest) else np.zeros(len(q_codes), dtype=np.int64)
    out = {}
    for feature in features:
        ok = found if feature.ttl_ms is None else found & (cand_ts >= q_ts - feature.ttl_ms)
        column = np.full(len(q_codes), None, dtype=object)
        if ok.any():
            column[ok] = latest.values[feature.column][pos[ok]]
        out[feature.name] = column
    return out


def _latest_before(latest: Latest, q_codes: np.ndarray, q_ts: np.ndarray) -> np.ndarray:
    """Index of each query's entity's last candidate with ts < t, or -1."""
    m = len(q_codes)
    if len(latest) == 0 or m == 0:
        return np.full(m, -1, dtype=np.int64)
    base = min(int(latest.ts.min()), int(q_ts.min()))
    span = max(int(latest.ts.max()), int(q_ts.max())) - base + 1
    top = max(int(latest.codes.max()), int(q_codes.max())) + 1
    if top * span < 2**62 and int(latest.codes.min()) >= 0 and int(q_codes.min()) >= 0:
        keys = latest.codes * span + (latest.ts - base)
        pos = np.searchsorted(keys, q_codes * span + (q_ts - base), side="left") - 1
    else:  # a huge time span: per query, within its entity's rows
        lo = np.searchsorted(latest.codes, q_codes, side="left")
        pos = np.array(
            [lo[i] + np.searchsorted(latest.ts[lo[i] : np.searchsorted(latest.codes, q_codes[i], side="right")], q_ts[i], side="left") - 1
             for i in range(m)], dtype=np.int64,
        )  # fmt: skip
    pos = np.asarray(pos, dtype=np.int64)
    valid = pos >= 0
    valid[valid] = latest.codes[pos[valid]] == q_codes[valid]
    return np.where(valid, pos, -1)


# -- typed output and state bytes -----------------------------------------------------------------------

_PANDAS = {"int64": "Int64", "float64": "float64", "bool": "boolean", "string": object, "timestamp": "Int64"}


def typed(dtype: str, values: np.ndarray) -> pd.Series:
    """Plain feature values as a column of the feature's own dtype (nullable ints and bools; timestamps as
    epoch ms, as online)."""
    series = pd.Series(values, dtype=object)
    if dtype == "string":
        return series
    if dtype == "float64":
        return series.astype("float64")
    return series.astype(_PANDAS[dtype])


def encode(latest: Latest, code: int) -> dict | None:
    """One entity's candidates as JSON-ready lists (None: none)."""
    lo, hi = np.searchsorted(latest.codes, [code, code + 1], side="left").tolist()
    if lo == hi:
        return None
    return {
        "ts": latest.ts[lo:hi].tolist(),
        "seq": latest.seq[lo:hi].tolist(),
        "v": {c: values[lo:hi].tolist() for c, values in latest.values.items()},
    }


def decode(plan: Plan, entries: Sequence[dict | None]) -> Latest:
    """``encode`` output of entities 0..n-1 (None: no candidates) back into one ``Latest``."""
    codes, ts, seq = [], [], []
    values: dict[str, list] = {c: [] for c in columns_of(plan)}
    for code, entry in enumerate(entries):
        if not entry:
            continue
        k = len(entry["ts"])
        codes.extend([code] * k)
        ts.extend(entry["ts"])
        seq.extend(entry["seq"])
        for c in values:
            values[c].extend(entry["v"].get(c) or [None] * k)
    arrays = {}
    for c, vals in values.items():
        arr = np.empty(len(vals), dtype=object)
        arr[:] = vals
        arrays[c] = arr
    return Latest(np.asarray(codes, np.int64), np.asarray(ts, np.int64), np.asarray(seq, np.int64), arrays)
