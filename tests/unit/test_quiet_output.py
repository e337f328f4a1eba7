"""Command output an operator can read: progress lines off a terminal, no NumPy overflow warnings, a compact
that says why it merged nothing, a plan in words."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from aggregations import EventValidator
from aggregations.loading import load_registry
from featurestream.cli import main
from featurestream.plan_cmd import describe
from sinks.layout import dataset_dir
from sinks.progress import LineProgress, progress_bar
from sinks.writer import write_batch
from stream.versions import SetVersion

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = str(REPO_ROOT / "examples" / "transactions" / "features.py")
TX = load_registry(DEFINITIONS).feature_set("transactions")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    from tqdm import tqdm

    bar = progress_bar(10, "file", "compact", stream=Tty())
    assert isinstance(bar, tqdm)
    bar.close()
    out = io.StringIO()
    clock = iter(float(t) for t in range(0, 1000, 3))
    lines = LineProgress(100_000, "event", "backfill transactions", every_s=10, stream=out, clock=lambda: next(clock))
    for _ in range(10):
        lines.update(10_000)
    lines.close()
    text = out.getvalue()
    assert "\r" not in text
    assert text.splitlines()[-1].startswith("backfill transactions: 100k of 100k events (100%), ")
    assert 2 <= len(text.splitlines()) <= 4  # every 10 s of 30, then the last
    assert isinstance(progress_bar(5, "x", "y", enabled=False, stream=Tty()), type(progress_bar(1, "x", "y", False)))
    short = io.StringIO()
    one = LineProgress(1, "partition", "training set", stream=short, clock=iter([0.0, 0.27, 0.27]).__next__)
    one.update(1)
    one.close()
    assert short.getvalue() == "training set: 1 of 1 partitions (100%), 3.7 partitions/s, 0 s\n"


def write_events(root: Path, amounts: list[float]) -> None:
    events = pd.DataFrame({"user_id": ["u1"] * len(amounts), "ts": [1_700_000_000_000 + i * 1000 for i in range(len(amounts))],
                           "amount": amounts})  # fmt: skip
    frame = EventValidator(TX).to_frame(events.to_dict("records"))
    write_batch(TX, dataset_dir(root, "transactions"), 0, frame, np.arange(len(frame)), frame["ts"].to_numpy())


def test_no_numpy_overflow_warnings_in_command_output(tmp_path):
    """Sums beyond float64 are inf (null online): expected, so no RuntimeWarning in the output, also from the
    processes a training set starts."""
    write_events(tmp_path / "data", [1e308, 1e308, 1e308, 5.0])
    pd.DataFrame({"user_id": ["u1"] * 3, "ts": ["2023-11-14T22:13:21Z", "2023-11-14T22:13:22Z", "2023-11-14T22:13:30Z"],
                  "amount": [1e308] * 3}).to_csv(tmp_path / "big.csv", index=False)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESTREAM_") and k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    for words in (
        ["preview", "big.csv", "--stats"],
        ["training-set", "--vector", "fraud", "--out", "t.parquet", "--workers", "2", "--partitions", "2"],
    ):
        done = subprocess.run([sys.executable, "-m", "featurestream.cli", *words, "--definitions", DEFINITIONS,
                               *(["--data-dir", "data"] if words[0] == "training-set" else [])],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "Warning" not in done.stderr and "overflow" not in done.stderr, done.stderr
    assert np.isinf(pd.read_parquet(tmp_path / "t.parquet")["amount_sum_1d"]).any()


def test_compact_says_why_it_merged_nothing(tmp_path, capsys):
    common = ["--definitions", DEFINITIONS, "--data-dir", str(tmp_path / "data"), "--no-statistics"]
    assert main(["compact", *common]) == 0
    assert "nothing to compact: no data files under" in capsys.readouterr().out
    write_events(tmp_path / "data", [1.0, 2.0])
    assert main(["compact", *common]) == 0
    out = capsys.readouterr().out
    assert "0 files" not in out
    assert ("compact transactions: nothing to merge: 1 file, 1 of them under 32 MB (half of --target-mb 64); "
            "a merge needs at least 2 such files of one date and Kafka partition") in out  # fmt: skip


def test_plan_says_each_fact_in_words():
    lines = describe(SetVersion("transactions", "6f3b", has_state=False, other_versions=["a1b2"], group_committed=True,
                                changes=["window 90d added"]), "fraud")  # fmt: skip
    assert lines == [
        "transactions: definition 6f3b",
        "  online state of this definition: none yet",
        "  other definitions of this set with online state: a1b2 (kept, not read by this one)",
        "  worker group 'fraud' has consumed the source topic: yes",
        "  change from the last deployed definition: window 90d added",
        "  -> changed: run `featurestream bootstrap` before starting workers (they refuse otherwise)",
    ]
