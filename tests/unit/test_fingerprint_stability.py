"""A definitions file gives the same fingerprint in every process and on every load: transforms are
identified by name and source text, not by the (salted, per-load) module name a file loaded by path gets.
A changed transform does change it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aggregations.loading import load_registry

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFINITIONS = '''
import pandas as pd
from aggregations import Aggregation, Entity, FeatureSet


def doubled(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(double=frame["amount"] * FACTOR)


FACTOR = 2
payments = FeatureSet(
    name="payments", entities=[Entity("user_id")], timestamp_key="ts", source="payments",
    schema={"user_id": "string", "ts": "timestamp", "amount": "float64"},
    aggregations=[Aggregation("double", ["sum"], windows=["1h"])], transforms=[doubled],
)
'''


def fingerprint_in_a_fresh_process(path: Path) -> str:
    code = f"from aggregations.loading import load_registry; print(load_registry({str(path)!r}).feature_set('payments').fingerprint())"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120)
    return done.stdout.strip()


def test_the_same_file_has_the_same_fingerprint_in_two_fresh_processes_and_two_loads(tmp_path):
    path = tmp_path / "features.py"
    path.write_text(DEFINITIONS)
    first, second = fingerprint_in_a_fresh_process(path), fingerprint_in_a_fresh_process(path)
    here = [load_registry(str(path)).feature_set("payments").fingerprint() for _ in range(2)]
    assert first == second == here[0] == here[1]


def test_a_changed_transform_changes_the_fingerprint(tmp_path):
    path = tmp_path / "features.py"
    path.write_text(DEFINITIONS)
    before = load_registry(str(path)).feature_set("payments").fingerprint()
    path.write_text(DEFINITIONS.replace('frame["amount"] * FACTOR', 'frame["amount"] * FACTOR + 1'))
    assert load_registry(str(path)).feature_set("payments").fingerprint() != before
