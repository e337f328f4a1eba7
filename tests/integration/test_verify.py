"""``featurestream verify`` against a real broker, a real worker, a real sink and real HTTP.

One worker subprocess and one ``featurestream sink --once`` run over a unique topic; then the ``verify``
command (a subprocess too) must find the two sides consistent (exit 0), and must fail (exit 1), naming the
features, on a copy of the dataset with corrupted amounts or with one entity's events removed. A sink group
that has consumed nothing is reported as not caught up (exit 3); ``--every`` exports the mismatch gauge.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from kafka import KafkaAdminClient

from sinks.layout import dataset_dir, list_parts
from tests.integration.test_worker import TX, Events, Worker, free_port, make_events

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
    return subprocess.run(
        [sys.executable, "-m", "featurestream.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def deployment(kafka_bootstrap, tmp_path_factory):
    run_id = uuid.uuid4().hex[:8]
    prefix, app_id = f"vf-{run_id}-", f"fs-vf-{run_id}"
    topic = f"{prefix}{TX.source}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="featurestream-tests")
    admin.create_topics({topic: {"num_partitions": 3, "replication_factor": 1}}, timeout_ms=30_000)
    admin.wait_for_topics([topic], timeout_ms=30_000)
    admin.close()
    tmp = tmp_path_factory.mktemp(f"verify-{run_id}")
    worker = Worker(kafka_bootstrap, tmp / "state", prefix, app_id, tmp, "vf")
    events = Events(kafka_bootstrap, topic)
    users = [f"v{run_id}-{i}" for i in range(30)]
    worker.start()
    try:
        events.send(make_events(users, 1500, seed=7))
        worker.wait_consumed(len(events.rows))
        data = tmp / "data"
        sink_group = f"sink-{run_id}"
        done = cli("sink", "--once", "--broker", kafka_bootstrap, "--data-dir", str(data),
                   "--topic", topic, "--group", sink_group, "--flush-seconds", "1")  # fmt: skip
        assert done.returncode == 0, done.stderr
        yield {
            "worker": worker, "events": events, "users": users, "topic": topic, "prefix": prefix,
            "app_id": app_id, "data": data, "sink_group": sink_group, "bootstrap": kafka_bootstrap, "tmp": tmp,
        }  # fmt: skip
    finally:
        worker.stop()
        events.producer.close()


def verify_args(d: dict, data: Path, *extra: str) -> list[str]:
    return [
        "verify", "--broker", d["bootstrap"], "--data-dir", str(data), "--url", d["worker"].url,
        "--app-id", d["app_id"], "--topic-prefix", d["prefix"], "--sink-group", d["sink_group"],
        "--feature-set", "transactions", "--wait-caught-up", "60", *extra,
    ]  # fmt: skip


def run_verify(d: dict, data: Path, *extra: str) -> tuple[int, dict]:
    done = cli(*verify_args(d, data, "--json", *extra))
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


def copy_dataset(d: dict, name: str) -> Path:
    target = d["tmp"] / name
    shutil.copytree(d["data"], target)
    return target


def rewrite_parts(data: Path, change) -> int:
    """Apply ``change(table) -> table`` to every data file of the copy; returns the files changed."""
    changed = 0
    for part in list_parts(dataset_dir(data, "transactions")):
        table = pq.read_table(part.path)
        new = change(table)
        if new is not table:
            pq.write_table(new, part.path)
            changed += 1
    return changed


def test_agreement_exits_zero(deployment):
    code, report = run_verify(deployment, deployment["data"])
    assert code == 0, json.dumps(report, indent=1)[:4000]
    (s,) = report["feature_sets"]
    assert s["status"] == "consistent" and s["compared_entities"] == len(deployment["users"])
    assert s["worker_lag"] == {"0": 0, "1": 0, "2": 0} or not any(s["worker_lag"].values())
    for name, f in s["features"].items():
        assert f["compared"] == len(deployment["users"]) and f["inconsistent_ratio"] == 0.0, name
    # Text output, sampled by key hash: deterministic.
    text = cli(*verify_args(deployment, deployment["data"], "--max-entities", "7"))
    assert text.returncode == 0, text.stdout + text.stderr
    assert "CONSISTENT" in text.stdout and "7 sampled" in text.stdout
    assert s["skipped_on_read"] == ["amount_vs_avg_90d"]
    assert "not compared (on-read, they need a request's inputs): amount_vs_avg_90d" in text.stdout


def test_corrupted_amounts_are_reported_per_feature(deployment):
    data = copy_dataset(deployment, "corrupt")
    victim = deployment["users"][3]

    def corrupt(table: pa.Table) -> pa.Table:
        mask = pc.equal(table["user_id"], victim)
        if not pc.any(mask).as_py():
            return table
        amounts = pc.if_else(mask, pc.multiply(table["amount"], 1.5), table["amount"])
        return table.set_column(table.schema.get_field_index("amount"), "amount", amounts)

    assert rewrite_parts(data, corrupt) > 0
    code, report = run_verify(deployment, data)
    assert code == 1, json.dumps(report, indent=1)[:4000]
    (s,) = report["feature_sets"]
    assert s["status"] == "inconsistent"
    assert "amount_sum_90d" in s["inconsistent_features"] and "amount_max_90d" in s["inconsistent_features"]
    assert "amount_count_90d" not in s["inconsistent_features"]  # counts are untouched by a changed amount
    worst = s["features"]["amount_sum_90d"]["largest_deltas"][0]
    assert worst["entity"] == victim and worst["kind"] == "mismatch"
    assert s["features"]["amount_sum_90d"]["mismatch"] == 1
    text = cli(*verify_args(deployment, data))
    assert text.returncode == 1 and "INCONSISTENT: " in text.stdout and "amount_sum_90d" in text.stdout


def test_missing_entity_is_reported(deployment):
    data = copy_dataset(deployment, "missing")
    victim = deployment["users"][5]

    def drop(table: pa.Table) -> pa.Table:
        mask = pc.equal(table["user_id"], victim)
        return table.filter(pc.invert(mask)) if pc.any(mask).as_py() else table

    assert rewrite_parts(data, drop) > 0
    code, report = run_verify(deployment, data)
    assert code == 1, json.dumps(report, indent=1)[:4000]
    (s,) = report["feature_sets"]
    # Listed from the topic, so an entity absent from the dataset is still checked.
    assert s["compared_entities"] == len(deployment["users"])
    f = s["features"]["amount_count_90d"]
    assert f["extra"] == 1 and f["largest_deltas"][0]["entity"] == victim
    assert "amount_count_90d" in s["inconsistent_features"]


def test_not_caught_up_exits_three(deployment):
    # This sink group has consumed nothing: its lag is the whole topic.
    done = cli(
        "verify", "--broker", deployment["bootstrap"], "--data-dir", str(deployment["data"]),
        "--url", deployment["worker"].url, "--app-id", deployment["app_id"], "--topic-prefix",
        deployment["prefix"], "--sink-group", "nobody-" + uuid.uuid4().hex[:6], "--feature-set", "transactions",
        "--wait-caught-up", "1", "--json",
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    report = json.loads(done.stdout)
    (s,) = report["feature_sets"]
    assert s["status"] == "not_caught_up" and sum(s["sink_lag"].values()) == len(deployment["events"].rows)


def test_every_exports_the_mismatch_ratio(deployment):
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
    data = copy_dataset(deployment, "every")
    victim = deployment["users"][2]
    rewrite_parts(data, lambda t: t.filter(pc.invert(pc.equal(t["user_id"], victim))))
    proc = subprocess.Popen(
        [sys.executable, "-m", "featurestream.cli", *verify_args(deployment, data, "--every", "2",
                                                                 "--metrics-port", str(port))],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline, text = time.monotonic() + 90, ""
        line = 'featurestream_verify_mismatch_ratio{feature="amount_count_90d",feature_set="transactions"}'
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                text = ""
            if line in text:
                break
            time.sleep(0.5)
        values = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(line)}
        assert values, text
        assert values[line] == pytest.approx(1 / len(deployment["users"]))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
