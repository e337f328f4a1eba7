"""Feature statistics: the bounded two-pass builder equals the exact in-memory one, stored statistics are
written by ``featurestream compact`` next to the dataset, and ``featurestream describe`` prints them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aggregations import EventValidator
from aggregations.loading import load_registry
from aggregations.stats import StatisticsBuilder, describe_frame, feature_statistics, histogram
from featurestream.cli import main
from featurestream.stats_table import sparkline
from sinks.layout import dataset_dir
from sinks.statistics import STATISTICS_FILE, compute_statistics
from sinks.writer import write_batch

DEFINITIONS = str(Path(__file__).resolve().parents[2] / "examples" / "transactions" / "features.py")
FS = load_registry(DEFINITIONS).feature_set("transactions")
T0 = 1_700_000_000_000


def test_describe_frame_by_hand():
    stats = describe_frame(pd.DataFrame({"x": [1.0, 2.0, 3.0, None, 4.0], "s": ["a", None, "b", "c", "d"]}))
    x = stats["features"]["x"]
    assert (x["count"], x["nulls"], x["mean"], x["min"], x["max"]) == (4, 1, 2.5, 1.0, 4.0)
    assert x["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert x["quantiles"]["p50"] == 2.5
    assert x["histogram"]["edges"][0] == 1.0 and x["histogram"]["edges"][-1] == 4.0
    assert sum(x["histogram"]["counts"]) == 4 and len(x["histogram"]["counts"]) == 20
    assert stats["features"]["s"] == {"type": "string", "count": 4, "nulls": 1}
    assert stats["exact"]


def test_histogram_edges_and_constant_columns():
    assert histogram(np.array([0.0, 1.0, 1.0, 2.0]), bins=2) == ([0.0, 1.0, 2.0], [1, 3])
    assert histogram(np.array([5.0, 5.0]), bins=4) == ([5.0, 5.0], [2])
    assert histogram(np.array([np.nan])) == ([], [])


def test_batched_builder_equals_in_memory_and_is_bounded():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.normal(10, 3, 5000), "n": rng.integers(0, 9, 5000)})
    frame.loc[::7, "x"] = np.nan
    exact = describe_frame(frame)["features"]
    builder = StatisticsBuilder(sample_size=500, seed=1)
    for fold in (builder.add, builder.add_histogram):
        for start in range(0, len(frame), 600):
            fold(frame.iloc[start : start + 600])
    batched = builder.result()
    assert not batched["exact"] and batched["rows"] == 5000
    for name in ("x", "n"):
        a, b = exact[name], batched["features"][name]
        assert (a["count"], a["nulls"], a["min"], a["max"]) == (b["count"], b["nulls"], b["min"], b["max"])
        assert a["mean"] == pytest.approx(b["mean"], rel=1e-12) and a["std"] == pytest.approx(b["std"], rel=1e-12)
        assert a["histogram"] == b["histogram"]  # pass 2 counts every value: exact
        assert b["quantiles"]["p50"] == pytest.approx(a["quantiles"]["p50"], abs=0.2 * a["std"])  # from the sample
    assert len(builder.columns["x"].sample) == 500


def test_feature_statistics_frame_keeps_its_shape():
    stats = feature_statistics(pd.DataFrame({"a": [1.0, 2.0], "b": ["x", None]}))
    assert stats.loc["a", "count"] == 2 and stats.loc["b", "nulls"] == 1
    assert stats.loc["a", "histogram_counts"] == [1] * 1 + [0] * 18 + [1]


def test_sparkline():
    assert sparkline([0, 1, 4, 8]) == " ▁▄█"
    assert sparkline([]) == "" and sparkline([0, 0]) == ""


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    events = pd.DataFrame(
        {
            "user_id": rng.choice(["u1", "u2", "u3"], size=n),
            "ts": T0 + rng.integers(0, 2 * 86_400_000, size=n),
            "amount": np.where(rng.random(n) < 0.1, np.nan, rng.integers(1, 1000, size=n) / 4),
        }
    )
    records = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
               for r in events.to_dict("records")]
    frame = EventValidator(FS, max_future="100000d").to_frame(records)
    root = dataset_dir(tmp_path, FS.name)
    for part, idx in enumerate(np.array_split(np.arange(n), 4)):
        sub = frame.iloc[idx].reset_index(drop=True)
        write_batch(FS, root, part % 2, sub, idx, events["ts"].to_numpy()[idx] + 10)
    return tmp_path, events


def test_dataset_statistics_match_the_events(store):
    data_dir, events = store
    stats = compute_statistics(FS, data_dir)
    assert stats["rows"] == len(events) and stats["files"] >= 4
    amount = stats["features"]["amount"]
    assert amount["count"] == events.amount.notna().sum() and amount["nulls"] == events.amount.isna().sum()
    assert amount["mean"] == pytest.approx(events.amount.mean(), rel=1e-12)
    assert amount["max"] == events.amount.max()
    assert stats["features"]["ts"]["type"] == "timestamp"
    assert stats["features"]["ts"]["min"] == pd.Timestamp(events.ts.min(), unit="ms", tz="UTC").isoformat()
    assert stats["features"]["user_id"] == {"type": "string", "count": len(events), "nulls": 0}


def test_compact_writes_statistics_and_describe_prints_them(store, capsys):
    data_dir, events = store
    assert main(["describe", "transactions", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hint: run `featurestream compact`" in err

    assert main(["compact", "--data-dir", str(data_dir)]) == 0
    assert (dataset_dir(data_dir, "transactions") / STATISTICS_FILE).is_file()
    capsys.readouterr()

    assert main(["describe", "transactions", "--data-dir", str(data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"transactions: {len(events)} rows in ")
    header = lines[1].split()
    assert header[:4] == ["feature", "type", "count", "nulls"] and header[-1] == "histogram"
    amount = next(line.split() for line in lines if line.startswith("amount"))
    assert amount[1] == "numeric" and int(amount[2]) == events.amount.notna().sum()
    assert float(amount[4]) == pytest.approx(events.amount.mean(), rel=1e-3)  # 4 significant digits

    assert main(["describe", "transactions", "--data-dir", str(data_dir), "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["features"]["amount"]["histogram"]["counts"]


def test_describe_a_file_and_errors(tmp_path, capsys):
    path = tmp_path / "train.parquet"
    pd.DataFrame({"f": [1.0, 2.0, 3.0]}).to_parquet(path)
    assert main(["describe", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[:3] == ["f", "numeric", "3"]
    assert main(["describe", str(tmp_path / "missing.parquet")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["describe", "nope"]) == 2
    assert "unknown feature set 'nope'" in capsys.readouterr().err
