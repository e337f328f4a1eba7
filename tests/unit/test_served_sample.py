"""The worker's served-row sample: bounded ring buffers per (kind, name), name resolution, env capacity."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregations.loading import load_registry
from stream.served_sample import ServedSample, capacity_from_env, resolve

REGISTRY = load_registry(str(Path(__file__).resolve().parents[2] / "examples" / "transactions" / "features.py"))


def test_keeps_the_newest_rows_per_name():
    sample = ServedSample(capacity=3)
    sample.record("vector", "fraud", [{"a": 1}, {"a": 2}])
    sample.record("vector", "fraud", [{"a": 3}, {"a": 4}])
    sample.record("feature_set", "fraud", [{"b": 1}])
    assert sample.rows("vector", "fraud") == [{"a": 2}, {"a": 3}, {"a": 4}]
    assert sample.rows("vector", "fraud", limit=1) == [{"a": 4}]
    assert sample.served("vector", "fraud") == 4
    assert sample.rows("feature_set", "fraud") == [{"b": 1}]
    assert sample.rows("vector", "other") == [] and sample.served("vector", "other") == 0


def test_zero_capacity_records_nothing():
    sample = ServedSample(capacity=0)
    sample.record("vector", "fraud", [{"a": 1}])
    assert sample.rows("vector", "fraud") == []


def test_capacity_from_env(monkeypatch):
    monkeypatch.setenv("FEATURESTREAM_SERVED_SAMPLE", "25")
    assert capacity_from_env() == 25 and ServedSample().capacity == 25
    monkeypatch.setenv("FEATURESTREAM_SERVED_SAMPLE", "lots")
    with pytest.raises(ValueError, match="not an integer"):
        capacity_from_env()


def test_resolve_names():
    assert resolve(REGISTRY, "fraud", None) == "vector"
    assert resolve(REGISTRY, "transactions", None) == "feature_set"
    assert resolve(REGISTRY, "transactions", "feature_set") == "feature_set"
    with pytest.raises(LookupError, match="known: fraud, transactions"):
        resolve(REGISTRY, "transactions", "vector")
    with pytest.raises(ValueError, match="kind must be one of"):
        resolve(REGISTRY, "fraud", "table")
