"""PSI and Hellinger distance (aggregations.drift) against hand-computed values, and their laws."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregations.drift import (
    EPSILON,
    compare_frames,
    feature_drift,
    hellinger,
    make_binning,
    psi,
)

counts = st.lists(st.integers(min_value=0, max_value=1000), min_size=2, max_size=12).filter(lambda c: sum(c) > 0)


def test_psi_by_hand():
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 (ln 2 + ln 1.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * (math.log(2) + math.log(1.5)), rel=1e-12)
    assert psi([50, 50], [25, 75]) == pytest.approx(0.2746530721670274, rel=1e-12)  # counts work too


def test_psi_clips_empty_bins_at_epsilon():
    # r = (1, 0) -> (1, eps); c = (0, 1) -> (eps, 1)
    want = (EPSILON - 1) * math.log(EPSILON) + (1 - EPSILON) * math.log(1 / EPSILON)
    assert psi([1, 0], [0, 1]) == pytest.approx(want, rel=1e-12)


def test_hellinger_by_hand():
    # 1 - BC with BC = sqrt(.5 * .25) + sqrt(.5 * .75)
    bc = math.sqrt(0.125) + math.sqrt(0.375)
    assert hellinger([0.5, 0.5], [0.25, 0.75]) == pytest.approx(math.sqrt(1 - bc), rel=1e-9)
    assert hellinger([1, 0], [0, 1]) == 1.0
    assert hellinger([3, 7], [30, 70]) == 0.0


def test_different_bins_are_an_error():
    with pytest.raises(ValueError, match="bins differ"):
        psi([1, 2], [1, 2, 3])


@settings(max_examples=200, deadline=None)
@given(counts)
def test_psi_of_a_distribution_with_itself_is_zero(c):
    assert psi(c, c) == 0.0
    assert hellinger(c, c) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_psi_nonnegative_hellinger_symmetric_in_unit_interval(data):
    r = data.draw(counts)
    c = data.draw(st.lists(st.integers(0, 1000), min_size=len(r), max_size=len(r)).filter(lambda x: sum(x) > 0))
    assert psi(r, c) >= 0.0
    h = hellinger(r, c)
    assert 0.0 <= h <= 1.0
    assert h == pytest.approx(hellinger(c, r), abs=1e-12)


def test_quantile_bins_are_open_ended_and_nulls_have_a_bin():
    reference = pd.Series(np.arange(100, dtype="float64"))
    binning = make_binning(reference, bins=4)
    assert binning.edges == pytest.approx((24.75, 49.5, 74.25))
    counts = binning.count(pd.Series([-1000.0, 30.0, 60.0, 1e9, None]))
    assert counts.tolist() == [1, 1, 1, 1, 1]
    assert binning.labels()[-1] == "null" and binning.labels()[0].startswith("[-inf")


def test_few_distinct_values_are_categories():
    d = feature_drift("n", pd.Series([0, 1, 1, 2, None]), pd.Series([0.0, 0.0, 0.0, 5.0]))
    assert [b["label"] for b in d.to_dict()["bins"]] == ["0", "1", "2", "other", "null"]
    assert [b["current"] for b in d.to_dict()["bins"]] == [3, 0, 0, 1, 0]
    assert d.drifted


def test_same_distribution_does_not_drift_and_a_shift_does():
    rng = np.random.default_rng(7)
    reference = pd.DataFrame({"x": rng.normal(size=5000), "s": rng.choice(["a", "b"], 5000)})
    same = pd.DataFrame({"x": rng.normal(size=2000), "s": rng.choice(["a", "b"], 2000)})
    shifted = pd.DataFrame({"x": rng.normal(1.0, 1.0, size=2000), "s": rng.choice(["a", "b"], 2000, p=[0.9, 0.1])})
    assert not any(d.drifted for d in compare_frames(reference, same))
    assert all(d.drifted for d in compare_frames(reference, shifted))


def test_compare_frames_errors():
    with pytest.raises(KeyError, match="not in both"):
        compare_frames(pd.DataFrame({"a": [1.0]}), pd.DataFrame({"b": [1.0]}), ["a"])
    with pytest.raises(ValueError, match="empty sample"):
        compare_frames(pd.DataFrame({"a": [1.0]}), pd.DataFrame({"a": []}))
