"""The Spark engine (``engine="spark"``) against the oracle and the local engine, on a local directory and on
the object store, through the Python API and the CLI; bootstrap states on Spark; and one run on a standalone
Spark cluster (a master and a worker started from pyspark's own scripts).

Spark runs for real: one local[2] session for the whole test session (``spark`` fixture).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aggregations import EventValidator, FeatureVector
from aggregations.loading import load_registry
from sinks import get_offline_features
from sinks.layout import dataset_dir
from sinks.online_state import rebuild_states
from sinks.spark_engine import bootstrap_partitions
from sinks.storage import open_location, read_parquet
from sinks.writer import write_batch
from tests.conftest import REPO_ROOT, free_port_pair
from tests.unit.test_offline_features import (
    PAY,
    REGISTRY,
    SHOP,
    check_against_oracle,
    oracle_events,
    random_events,
    write_events,
)


def parity_rows(rng, events, n, keys, entity="user"):
    """Random rows plus rows at event times exactly, one millisecond after them and on tile boundaries."""
    ts = rng.integers(0, 160_000, size=n)
    ts[: n // 4] = (ts[: n // 4] // 1000) * 1000
    at_events = [e["ts"] for e in events[: n // 4]]
    stamps = np.concatenate([ts, at_events, np.asarray(at_events) + 1])
    users = np.concatenate([rng.choice(keys, size=n), [e[entity] for e in events[: n // 4]] * 2])
    rows = pd.DataFrame({entity: users, "ts": stamps.astype(np.int64)})
    rows["ts_ms"] = rows["ts"]
    return rows


@pytest.fixture(scope="module")
def pay_data(tmp_path_factory):
    rng = np.random.default_rng(21)
    events = random_events(rng, 500, ["a", "b", "c", "d", "e"])
    events += [  # ties whose arrival order differs from offset order, across partitions
        {"user": "a", "ts": 50_000, "amount": 1.0, "partition": 0, "offset": 1000, "arrival": 50_010},
        {"user": "a", "ts": 50_000, "amount": 2.0, "partition": 1, "offset": 1000, "arrival": 50_005},
        {"user": "a", "ts": 50_000, "amount": 3.0, "partition": 0, "offset": 1001, "arrival": 50_005},
    ]
    store = tmp_path_factory.mktemp("spark-store")
    write_events(store, PAY, events)
    return store, events


@pytest.mark.parametrize(("partitions", "known_at"), [(None, False), (3, True), (1, False)])
def test_spark_engine_matches_the_oracle_and_the_local_engine(spark, pay_data, partitions, known_at):
    store, events = pay_data
    rows = parity_rows(np.random.default_rng(partitions or 7), events, 160, ["a", "b", "c", "d", "e", "zz"])
    vector = FeatureVector("all", ["pay.*"])
    options = dict(registry=[PAY], partitions=partitions, as_known_at=known_at)
    ours = get_offline_features(vector, rows, store, engine="spark", spark=spark, **options)
    check_against_oracle(PAY, ours, rows, oracle_events(events, "user"), "user", known_at=known_at)
    pd.testing.assert_frame_equal(ours, get_offline_features(vector, rows, store, **options))


def test_spark_engine_on_the_object_store_across_feature_sets(spark, s3_store):
    rng = np.random.default_rng(5)
    pay = random_events(rng, 300, ["a", "b", "c"])
    shop = random_events(rng, 200, ["s1", "s2"], entity="shop")
    write_events(s3_store, PAY, pay)
    write_events(s3_store, SHOP, shop)
    rows = parity_rows(rng, pay, 80, ["a", "b", "c", "x"])
    rows["shop"] = rng.choice(["s1", "s2", "s3"], size=len(rows))
    vector = FeatureVector("mix", ["pay.*", "shop.amount_count_10s", "shop.amount_last_10s"])
    out = f"{s3_store}/train/mix.parquet"
    ours = get_offline_features(vector, rows, s3_store, registry=REGISTRY, engine="spark", spark=spark, out=out)
    clash = {"amount_count_10s", "amount_last_10s"}  # in both sets: named set.feature
    pay_names = {f.name: f"pay.{f.name}" for f in PAY.plan.features if f.name in clash}
    shop_names = {f.name: f"shop.{f.name}" if f.name in clash else "(not requested)" for f in SHOP.plan.features}
    check_against_oracle(PAY, ours, rows, oracle_events(pay, "user"), "user", columns=pay_names)
    check_against_oracle(SHOP, ours, rows, oracle_events(shop, "shop"), "shop", columns=shop_names)
    assert {"pay.amount_count_10s", "shop.amount_count_10s", "shop.amount_last_10s"} <= set(ours.columns)
    local = get_offline_features(vector, rows, s3_store, registry=REGISTRY)
    pd.testing.assert_frame_equal(ours, local)  # on-read features and names included
    pd.testing.assert_frame_equal(read_parquet(open_location(out)).to_pandas(), ours, check_dtype=False)


DEFINITIONS = '''
    """Loaded by path: not importable on Spark executors, so its module travels by value."""
    from aggregations import Aggregation, Entity, Feature, FeatureSet


    def cents(frame):
        frame = frame.copy()
        frame["cents"] = (frame["amount"] * 100).round()
        return frame


    pairs = FeatureSet(
        name="pairs",
        entities=[Entity("user"), Entity("merchant")],
        timestamp_key="ts",
        source="pairs",
        schema={"user": "string", "merchant": "string", "ts": "timestamp", "amount": "float64"},
        transforms=[cents],
        aggregations=[Aggregation("cents", ["count", "sum", "max", "last"], windows=["10s", "60s"], periods=["1s", "10s"])],
        features=[Feature("amount", name="last_amount"), Feature("cents", dtype="float64", ttl="30s")],
    )
'''


def test_a_transform_plain_features_and_a_compound_entity_from_a_definitions_file(spark, tmp_path):
    path = tmp_path / "pair_definitions.py"
    path.write_text(textwrap.dedent(DEFINITIONS))
    fs = load_registry(str(path)).feature_set("pairs")
    rng = np.random.default_rng(9)
    events = pd.DataFrame(
        {
            "user": rng.choice(["u1", "u2", "u3"], 400),
            "merchant": rng.choice(["m1", "m2"], 400),
            "ts": rng.integers(0, 120_000, 400),
            "amount": rng.integers(1, 10_000, 400) / 100,
        }
    )
    frame = EventValidator(fs).to_frame(events.to_dict("records"))
    write_batch(fs, dataset_dir(tmp_path / "data", fs.name), 0, frame, np.arange(400), events["ts"].to_numpy() + 3)
    rows = pd.DataFrame(
        {"user": rng.choice(["u1", "u2", "u4"], 100), "merchant": rng.choice(["m1", "m2"], 100),
         "ts": rng.integers(0, 130_000, 100)}
    )  # fmt: skip
    vector = FeatureVector("p", ["pairs.*"])
    ours = get_offline_features(vector, rows, tmp_path / "data", registry=[fs], engine="spark", spark=spark)
    local = get_offline_features(vector, rows, tmp_path / "data", registry=[fs])
    pd.testing.assert_frame_equal(ours, local)
    assert ours["cents_count_60s"].sum() > 0 and ours["last_amount"].notna().any()


def test_cli_training_set_engine_spark_writes_a_versioned_dataset(spark, s3_store, tmp_path):
    from featurestream.cli import main

    rng = np.random.default_rng(3)
    events = random_events(rng, 300, ["a", "b"])
    defs = tmp_path / "defs.py"
    defs.write_text("from tests.unit.test_offline_features import PAY, REGISTRY as registry\n")
    write_events(s3_store, PAY, events)
    rows = parity_rows(rng, events, 50, ["a", "b"])[["user", "ts"]]
    rows.to_parquet(tmp_path / "rows.parquet")
    args = ["training-set", "--definitions", str(defs), "--data-dir", s3_store, "--feature-set", "pay",
            "--rows", str(tmp_path / "rows.parquet"), "--name", "payset", "--engine", "spark",
            "--spark-master", spark.sparkContext.master]  # fmt: skip
    assert main(args) == 0
    from sinks.training_sets import read_manifest, stored

    manifest = read_manifest(s3_store, "payset")
    got = stored(s3_store, "payset")
    local = get_offline_features(FeatureVector("payset", ["pay.*"]), rows, s3_store, registry=[PAY])
    pd.testing.assert_frame_equal(got.reset_index(drop=True), local, check_dtype=False)
    assert manifest["version"] == 1


def test_bootstrap_states_on_spark_equal_the_local_rebuild(spark, pay_data):
    store, _events = pay_data
    now = 200_000
    local = {(s.partition, s.key, s.value) for part in rebuild_states(PAY, store, now, 3, partitions=2) for s in part.states}
    parts = list(bootstrap_partitions(PAY, store, now, 3, spark, 3))
    ours = {(s.partition, s.key, s.value) for part in parts for s in part.states}
    assert ours == local and len(ours) > 0
    assert sum(p.events for p in parts) == sum(p.events for p in rebuild_states(PAY, store, now, 3))


# -- a standalone cluster ------------------------------------------------------------------------------


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _start(cls: str, args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", SPARK_HOME=str(_spark_home()))
    return subprocess.Popen(
        [str(_spark_home() / "bin" / "spark-class"), cls, *args],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def _wait_log(path: Path, text: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, f"{path.name} exited:\n{path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in {path.name}:\n{path.read_text()[-3000:]}"
        time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)  # the process group we started: the daemon and its executors
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)


@pytest.mark.spark_cluster
@pytest.mark.timeout(420)
def test_training_set_on_a_standalone_cluster_from_the_object_store(s3_store, tmp_path):
    """A master and a worker from pyspark's scripts (spark-class); the CLI as the driver, in its own process."""
    rng = np.random.default_rng(13)
    events = random_events(rng, 600, ["a", "b", "c", "d"])
    write_events(s3_store, PAY, events)
    rows = parity_rows(rng, events, 120, ["a", "b", "c", "d"])[["user", "ts"]]
    rows.to_parquet(tmp_path / "rows.parquet")
    defs = tmp_path / "defs.py"
    defs.write_text("from tests.unit.test_offline_features import REGISTRY as registry\n")
    port, ui = free_port_pair()
    master = _start("org.apache.spark.deploy.master.Master",
                    ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)], tmp_path / "master.log")  # fmt: skip
    worker = None
    try:
        _wait_log(tmp_path / "master.log", "I have been elected leader", master)
        worker = _start("org.apache.spark.deploy.worker.Worker",
                        [f"spark://127.0.0.1:{port}", "--host", "127.0.0.1", "--cores", "2", "--memory", "2g",
                         "--webui-port", str(free_port_pair()[0]), "--work-dir", str(tmp_path / "work")],
                        tmp_path / "worker.log")  # fmt: skip
        _wait_log(tmp_path / "worker.log", "Successfully registered with master", worker)
        out = f"{s3_store}/cluster.parquet"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
        env["FEATURESTREAM_SPARK_DRIVER_MEMORY"] = "1g"
        done = subprocess.run(
            [sys.executable, "-m", "featurestream.cli", "training-set", "--definitions", str(defs),
             "--data-dir", s3_store, "--feature-set", "pay", "--rows", str(tmp_path / "rows.parquet"),
             "--out", out, "--engine", "spark", "--spark-master", f"spark://127.0.0.1:{port}",
             "--spark-conf", "spark.executor.memory=1g", "--spark-conf", "spark.sql.shuffle.partitions=4"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr[-4000:]
        assert "Registering app featurestream" in (tmp_path / "master.log").read_text()
        assert list((tmp_path / "work").glob("app-*/*/stderr")), "no executor ran on the worker"
    finally:
        if worker is not None:
            _stop(worker)
        _stop(master)
    got = read_parquet(open_location(out)).to_pandas()
    rows["ts_ms"] = rows["ts"]
    check_against_oracle(PAY, got, rows, oracle_events(events, "user"), "user")
    local = get_offline_features(FeatureVector("pay", ["pay.*"]), rows[["user", "ts"]], s3_store, registry=[PAY])
    pd.testing.assert_frame_equal(got, local, check_dtype=False)
