"""Event validation (shared by worker and sink) and FeatureSet.preview against the oracle."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from aggregations import EventValidator
from aggregations.loading import load_registry
from tests import oracle

REGISTRY = load_registry("examples/transactions/features.py")
TX = REGISTRY.feature_set("transactions")
NOW = 1_800_000_000_000


def decode(*payloads):
    return EventValidator(TX).decode(
        [p if isinstance(p, bytes) else json.dumps(p).encode() for p in payloads], NOW
    )


def test_valid_events_with_epoch_and_iso_timestamps():
    rows, positions, rejected = decode(
        {"user_id": "u1", "ts": NOW - 5, "amount": 3},
        {"user_id": "u2", "ts": "2027-01-15T08:00:00Z", "amount": 2.5},
    )
    assert not rejected and positions == [0, 1]
    assert rows[0] == {"user_id": "u1", "ts": NOW - 5, "amount": 3.0}
    assert rows[1]["ts"] == int(pd.Timestamp("2027-01-15T08:00:00Z").value // 1_000_000)


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"not json", "not valid JSON"),
        ([1, 2], "JSON object"),
        ({"ts": NOW, "amount": 1.0}, "missing entity key 'user_id'"),
        ({"user_id": "", "ts": NOW, "amount": 1.0}, "missing entity key"),
        ({"user_id": "u", "amount": 1.0}, "missing timestamp"),
        ({"user_id": "u", "ts": NOW, "amount": "abc"}, "amount must be a number"),
        ({"user_id": "u", "ts": NOW, "amount": True}, "amount must be a number"),
        ({"user_id": 7, "ts": NOW, "amount": 1.0}, "user_id must be a string"),
        ({"user_id": "u", "ts": "yesterday", "amount": 1.0}, "not ISO-8601"),
        ({"user_id": "u", "ts": NOW + 86_400_000, "amount": 1.0}, "in the future"),
        ({"user_id": "u", "ts": -1, "amount": 1.0}, "before 1970"),
    ],
)
def test_bad_events_are_rejected_with_a_reason(payload, reason):
    rows, _, rejected = decode(payload)
    assert rows == [] and len(rejected) == 1
    assert reason in rejected[0].reason
    assert rejected[0].raw is not None


def test_null_amount_is_kept_as_null():
    rows, _, rejected = decode({"user_id": "u", "ts": NOW, "amount": None})
    assert not rejected and rows[0]["amount"] is None


def random_events(n=400, users=6, seed=3):
    rng = np.random.default_rng(seed)
    ts = NOW - rng.integers(0, 3 * 86_400_000, n)
    ts[::9] = ts[::9] // 3_600_000 * 3_600_000  # some exactly on tile boundaries
    amount = np.round(rng.normal(50, 20, n), 2)
    amount[::13] = np.nan
    return pd.DataFrame({"user_id": [f"u{i}" for i in rng.integers(0, users, n)], "ts": ts, "amount": amount})


def check_against_oracle(frame, events, at_keys, at_ts):
    ref = [
        dict(key=u, ts=int(t), seq=i, value=None if math.isnan(a) else a)
        for i, (u, t, a) in enumerate(zip(events.user_id, events.ts, events.amount, strict=True))
    ]
    for feature in TX.plan.features:
        w = feature.window
        for i, (key, t) in enumerate(zip(at_keys, at_ts, strict=True)):
            expected = oracle.feature_at(ref, key, int(t), feature.op, w.length, w.period)
            got = frame[feature.name].iloc[i]
            if expected is None:
                assert pd.isna(got), (feature.name, i)
            else:
                assert got == pytest.approx(expected, rel=1e-9, abs=1e-9), (feature.name, i, expected, got)


def test_preview_per_event_is_as_of_its_own_timestamp():
    events = random_events()
    result = TX.preview(events)
    assert len(result) == len(events)
    check_against_oracle(result, events, events.user_id.tolist(), events.ts.tolist())


def test_preview_at_rows_with_datetimes_and_unknown_entity():
    events = random_events()
    at = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "nobody"],
            "ts": pd.to_datetime([NOW, NOW - 3_600_000, NOW], unit="ms", utc=True),
            "amount": [10.0, 20.0, 30.0],
        }
    )
    result = TX.preview(events, at=at)
    assert list(result.user_id) == ["u1", "u2", "nobody"]
    check_against_oracle(result, events, ["u1", "u2", "nobody"], [NOW, NOW - 3_600_000, NOW])
    assert result.amount_count_90d.iloc[2] == 0 and pd.isna(result.amount_avg_90d.iloc[2])
    # On-read feature: request amount divided by the 90-day average, computed by the set's own function.
    assert result.amount_vs_avg_90d.iloc[0] == pytest.approx(10.0 / result.amount_avg_90d.iloc[0])
    stats = result.attrs["statistics"]
    assert stats.loc["amount_count_90d", "count"] == 3


def test_preview_requires_timestamp_column():
    with pytest.raises(KeyError, match="timestamp column 'ts'"):
        TX.preview(random_events(), at=pd.DataFrame({"user_id": ["u1"]}))


def test_row_level_transforms_run_before_aggregation():
    from aggregations import Aggregation, Entity, FeatureSet

    def in_cents(frame):
        """A batch transform: derive a column the aggregation reads."""
        return frame.assign(cents=frame["amount"] * 100)

    fs = FeatureSet(
        "tx_cents",
        [Entity("user_id")],
        "ts",
        "transactions",
        {"user_id": "string", "ts": "timestamp", "amount": "float64"},
        [Aggregation("cents", ["sum", "max"], windows=["1d"])],
        transforms=[in_cents],
    )
    events = random_events()
    result = fs.preview(events)
    ref = [
        dict(key=u, ts=int(t), seq=i, value=None if math.isnan(a) else a * 100)
        for i, (u, t, a) in enumerate(zip(events.user_id, events.ts, events.amount, strict=True))
    ]
    for i in range(0, len(events), 7):
        key, t = events.user_id.iloc[i], int(events.ts.iloc[i])
        for op in ("sum", "max"):
            expected = oracle.feature_at(ref, key, t, op, 86_400_000, 3_600_000)
            got = result[f"cents_{op}_1d"].iloc[i]
            assert (expected is None and pd.isna(got)) or got == pytest.approx(expected, rel=1e-9, abs=1e-9)
