"""The kernel fast paths that offline retrieval relies on give exactly what the general paths give.

``build_levels`` orders events by (code, ts, seq) with one int64 key instead of a three-key lexsort and
copies all-singleton groups instead of reducing them. Both must be invisible: the same permutation as
``np.lexsort``, and the same tile states whether or not the input arrives in seq order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aggregations import Aggregation, Entity, FeatureSet
from aggregations.kernel import EventBatch, _argsort_seq, _event_order, build_levels, read
from sinks.offline import tie_rank

FS = FeatureSet(
    "k",
    [Entity("k")],
    "ts",
    "k",
    {"k": "string", "ts": "timestamp", "x": "float64", "s": "string"},
    [
        Aggregation(
            "x",
            ["count", "sum", "min", "max", "first", "last", "var"],
            windows=["4s", "60s"],
            periods=["1s", "10s"],
        ),
        Aggregation("s", ["count", "first", "last", "count_distinct"], windows=["10s"], periods=["2s"]),
    ],
)


@pytest.mark.parametrize("seed", range(20))
def test_event_order_is_lexsort(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    codes = rng.integers(0, 5, n)
    ts = rng.integers(0, 20, n) if seed % 4 else rng.integers(0, 2**61, n)  # the last falls back to lexsort
    seq = np.arange(n) if seed % 2 else rng.integers(0, 4, n)
    assert np.array_equal(_event_order(codes, ts, seq), np.lexsort((seq, ts, codes)))


def _states(levels):
    return {p: (lv.codes, lv.index, lv.states) for p, lv in levels.levels.items()}


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if a.dtype.kind == "f":
        return np.array_equal(a, b, equal_nan=True)
    return a.dtype == b.dtype and a.tolist() == b.tolist()


@pytest.mark.parametrize("seed", range(10))
def test_states_do_not_depend_on_input_order(seed):
    rng = np.random.default_rng(seed)
    n = 400
    codes = rng.integers(0, 6, n)
    ts = rng.integers(0, 120_000, n) if seed % 2 else np.arange(n) * 7  # the latter: all singletons
    seq = rng.permutation(n)
    x = rng.normal(0, 5, n)
    x[rng.random(n) < 0.2] = np.nan
    s = np.array([None if rng.random() < 0.2 else f"v{v}" for v in rng.integers(0, 4, n)], dtype=object)
    by_seq = np.argsort(seq)
    shuffled = build_levels(FS.plan, EventBatch(codes, ts, seq, {"x": x, "s": s}))
    ordered = build_levels(
        FS.plan, EventBatch(codes[by_seq], ts[by_seq], seq[by_seq], {"x": x[by_seq], "s": s[by_seq]})
    )
    assert _same(_states(shuffled), _states(ordered))
    q_codes, q_ts = rng.integers(0, 7, 80), rng.integers(0, 200_000, 80)
    assert _same(
        tuple(read(FS.plan, shuffled, q_codes, q_ts).values()),
        tuple(read(FS.plan, ordered, q_codes, q_ts).values()),
    )


@pytest.mark.parametrize("seed", range(20))
def test_argsort_of_seq_is_a_stable_argsort(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    seq = rng.permutation(n) if seed % 2 else rng.integers(0, n, n)  # arrival ranks, or any ints (ties)
    if seed % 5 == 0:
        seq[0], seq[-1] = 0, n - 1  # min and max of a permutation, yet duplicates inside
    assert np.array_equal(_argsort_seq(seq), np.argsort(seq, kind="stable"))


@pytest.mark.parametrize("seed", range(10))
def test_tie_rank_orders_by_offset_then_partition(seed):
    rng = np.random.default_rng(seed)
    n = 300
    events = pd.DataFrame(
        {
            "_arrival": rng.integers(0, 20, n),  # not part of the tie order
            "_partition": rng.integers(0, 3, n),
            "_offset": rng.integers(0, 50 if seed < 9 else 10**12, n),
        }
    )
    expected = sorted(range(n), key=lambda i: (events["_offset"].iloc[i], events["_partition"].iloc[i], i))
    seq = tie_rank(events)
    assert [int(np.flatnonzero(seq == r)[0]) for r in range(n)] == expected
