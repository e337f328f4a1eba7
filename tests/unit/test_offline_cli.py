"""``featurestream training-set``: plumbing from files to a training set (values are oracle-tested elsewhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aggregations import EventValidator
from aggregations.loading import load_registry
from featurestream.cli import main
from sinks import get_offline_features
from sinks.layout import dataset_dir
from sinks.writer import write_batch

DEFINITIONS = str(Path(__file__).resolve().parents[2] / "examples" / "transactions" / "features.py")
REGISTRY = load_registry(DEFINITIONS)
FS = REGISTRY.feature_set("transactions")
T0 = 1_700_000_000_000


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    events = pd.DataFrame(
        {
            "user_id": rng.choice(["u1", "u2", "u3"], size=n),
            "ts": T0 + rng.integers(0, 3 * 86_400_000, size=n),
            "amount": rng.integers(1, 1000, size=n) / 4,
        }
    )
    frame = EventValidator(FS).to_frame(events.to_dict("records"))
    write_batch(FS, dataset_dir(tmp_path, FS.name), 0, frame, np.arange(n), events["ts"].to_numpy() + 10)
    return tmp_path, events


def test_training_set_from_a_rows_file(store, tmp_path, capsys):
    data_dir, _ = store
    rows = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u9"],
            "ts": pd.to_datetime([T0 + 86_400_000] * 3, unit="ms", utc=True),
            "amount": [10.0, 20.0, 30.0],
        }
    )
    rows_file = tmp_path / "rows.csv"
    rows.to_csv(rows_file, index=False)
    out = tmp_path / "train.parquet"
    code = main(
        [
            "training-set",
            "--definitions",
            DEFINITIONS,
            "--data-dir",
            str(data_dir),
            "--vector",
            "fraud",
            "--rows",
            str(rows_file),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert f"{out}: 3 rows" in capsys.readouterr().out
    result = pd.read_parquet(out)
    expected = get_offline_features("fraud", pd.read_csv(rows_file), data_dir, registry=REGISTRY)
    pd.testing.assert_frame_equal(result, expected)
    assert list(result.columns) == [
        "user_id",
        "ts",
        "amount",
        "amount_avg_90d",
        "amount_count_1h",
        "amount_sum_1d",
        "amount_vs_avg_90d",
    ]


def test_training_set_defaults_to_one_row_per_stored_event(store, tmp_path, capsys):
    data_dir, events = store
    out = tmp_path / "train.parquet"
    code = main(
        [
            "training-set",
            "--definitions",
            DEFINITIONS,
            "--data-dir",
            str(data_dir),
            "--vector",
            "fraud",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = pd.read_parquet(out)
    assert len(result) == len(events)
    assert result["ts"].is_monotonic_increasing
    first = result.iloc[0]
    assert first["amount_count_1h"] == 0 and np.isnan(
        first["amount_avg_90d"]
    )  # nothing before the first event


def test_unknown_vector_is_a_clear_error(store, tmp_path, capsys):
    data_dir, _ = store
    code = main(
        [
            "training-set",
            "--definitions",
            DEFINITIONS,
            "--data-dir",
            str(data_dir),
            "--vector",
            "nope",
            "--out",
            str(tmp_path / "x.parquet"),
        ]
    )
    assert code == 2
    assert "unknown feature vector 'nope'" in capsys.readouterr().err


def test_definitions_loaded_from_a_file_run_in_worker_processes(store, caplog):
    """Worker processes load the definitions file too, so its module-level functions unpickle there."""
    data_dir, _ = store
    rows = pd.DataFrame({"user_id": ["u1", "u2", "u3"] * 20, "ts": T0 + np.arange(60) * 3_600_000, "amount": 5.0})
    alone = get_offline_features("fraud", rows, data_dir, registry=REGISTRY, partitions=3)
    with caplog.at_level("WARNING"):
        parallel = get_offline_features("fraud", rows, data_dir, registry=REGISTRY, partitions=3, workers=2)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    pd.testing.assert_frame_equal(alone, parallel)


def test_an_unreachable_broker_is_one_line_with_a_hint_not_a_traceback(monkeypatch, capsys):
    from kafka.errors import KafkaTimeoutError

    import featurestream.produce

    def unreachable(args):
        raise KafkaTimeoutError("Unable to bootstrap from ['127.0.0.1:1']")

    monkeypatch.setattr(featurestream.produce, "run", unreachable)
    assert main(["produce", "--broker", "127.0.0.1:1"]) == 3
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "Unable to bootstrap" in err and "hint: is Kafka running at 127.0.0.1:1" in err
