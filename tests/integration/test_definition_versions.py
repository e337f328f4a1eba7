"""A changed definition never starts on empty state behind the group's offsets; `plan` says what changes.

Real broker, real worker processes: a worker runs the example set and commits source offsets; the set
is then changed (the 90d window becomes 30d). `featurestream plan --check` names the change and exits 1,
and a worker started with the changed definition refuses with a one-line cause and the bootstrap hint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaProducer

from tests.integration.test_worker import REPO_ROOT, TIMEOUT_S, Worker, http

pytestmark = pytest.mark.integration

EXAMPLE = REPO_ROOT / "examples" / "transactions" / "features.py"


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "featurestream.cli", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def committed(bootstrap: str, group: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="featurestream-tests")
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset > 0)


def test_a_changed_definition_is_planned_and_refused_on_empty_state(kafka_bootstrap, tmp_path):
    run_id = uuid.uuid4().hex[:8]
    prefix, app_id = f"dv-{run_id}-", f"fs-dv-{run_id}"
    worker = Worker(kafka_bootstrap, tmp_path / "state", prefix, app_id, tmp_path, "v1")
    worker.start()
    try:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        now = int(time.time() * 1000)
        for i in range(50):
            event = {"user_id": f"u{i % 5}", "ts": now - i * 1000, "amount": 1.0 + i}
            producer.send(
                f"{prefix}transactions", key=event["user_id"].encode(), value=json.dumps(event).encode()
            )
        producer.flush(timeout=30)
        producer.close()
        deadline = time.monotonic() + TIMEOUT_S
        while committed(kafka_bootstrap, app_id) < 50:  # Faust commits every few seconds
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.5)
    finally:
        worker.stop()

    unchanged = cli(
        "plan", "--broker", kafka_bootstrap, "--app-id", app_id, "--topic-prefix", prefix, "--check"
    )
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "unchanged" in unchanged.stdout

    changed = tmp_path / "features_v2.py"
    changed.write_text(
        EXAMPLE.read_text().replace('"1h", "1d", "90d"', '"1h", "1d", "30d"').replace("_90d", "_30d")
    )
    plan = cli("plan", "--definitions", str(changed), "--broker", kafka_bootstrap, "--app-id", app_id,
               "--topic-prefix", prefix, "--check")  # fmt: skip
    assert plan.returncode == 1, plan.stdout + plan.stderr
    assert "windows ['1h', '1d', '90d'] -> ['1h', '1d', '30d']" in plan.stdout
    assert "featurestream bootstrap" in plan.stdout

    refused = Worker(kafka_bootstrap, tmp_path / "state2", prefix, app_id, tmp_path, "v2")
    refused.extra_args = ["--definitions", str(changed)]
    refused.launch()
    code = refused.proc.wait(timeout=TIMEOUT_S)
    refused.log_file.close()
    refused.proc = None
    log = refused.log_path.read_text()
    assert code == 2, log
    assert "feature set 'transactions' changed" in log and "featurestream bootstrap" in log, log
    assert "Traceback" not in log, log


def wait_committed(bootstrap: str, group: str, n: int, worker) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while committed(bootstrap, group) < n:  # Faust commits every few seconds
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.5)


def test_rolling_back_to_an_older_definition_is_refused_until_its_state_is_rebuilt(kafka_bootstrap, tmp_path):
    from sinks import ParquetSink
    from tests.integration.test_worker import TX, Events, assert_oracle, make_events

    run_id = uuid.uuid4().hex[:8]
    prefix, app_id = f"rb-{run_id}-", f"fs-rb-{run_id}"
    topic = f"{prefix}transactions"
    data = tmp_path / "data"
    users = [f"r{run_id}-{i}" for i in range(10)]
    events = Events(kafka_bootstrap, topic)
    v2 = tmp_path / "features_v2.py"
    v2.write_text(EXAMPLE.read_text().replace('"1h", "1d", "90d"', '"2h", "1d", "90d"').replace("_1h", "_2h"))

    def sink_once() -> None:
        ParquetSink(TX, data, kafka_bootstrap, group=f"sink-{run_id}", topic=topic).run(once=True)

    def bootstrap(*extra: str) -> subprocess.CompletedProcess:
        return cli("bootstrap", "--feature-set", "transactions", "--broker", kafka_bootstrap, "--data-dir",
                   str(data), "--app-id", app_id, "--sink-group", f"sink-{run_id}", "--no-progress", *extra)  # fmt: skip

    try:
        # Version 1 runs and consumes the first events.
        v1 = Worker(kafka_bootstrap, tmp_path / "state1", prefix, app_id, tmp_path, "v1")
        v1.start()
        events.send(make_events(users, 300, seed=1))
        wait_committed(kafka_bootstrap, app_id, len(events.rows), v1)
        assert v1.stop() == 0
        # Version 2 (1h -> 2h) is bootstrapped from the sink's dataset, runs, and consumes more events.
        sink_once()
        done = bootstrap("--definitions", str(v2))
        assert done.returncode == 0, done.stdout + done.stderr
        second = Worker(kafka_bootstrap, tmp_path / "state2", prefix, app_id, tmp_path, "v2")
        second.extra_args = ["--definitions", str(v2)]
        second.start()
        events.send(make_events(users, 200, seed=2))
        wait_committed(kafka_bootstrap, app_id, len(events.rows), second)
        assert second.stop() == 0

        # Rolling back to version 1: plan says so, and its old state (300 events) is refused.
        plan = cli("plan", "--broker", kafka_bootstrap, "--app-id", app_id, "--topic-prefix", prefix, "--check")
        assert plan.returncode == 1, plan.stdout + plan.stderr
        assert "rolled back" in plan.stdout and "--force" in plan.stdout, plan.stdout
        refused = Worker(kafka_bootstrap, tmp_path / "state1", prefix, app_id, tmp_path, "v1-again")
        refused.launch()
        code = refused.proc.wait(timeout=TIMEOUT_S)
        refused.log_file.close()
        refused.proc = None
        log = refused.log_path.read_text()
        assert code == 2, log
        assert "stopped before what the worker group has consumed" in log and "--force" in log, log
        assert "Traceback" not in log, log

        # Rebuilt from the dataset, version 1 starts on its own state and serves every event once.
        sink_once()
        rebuilt = bootstrap("--force")
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        resumed = Worker(kafka_bootstrap, tmp_path / "state1", prefix, app_id, tmp_path, "v1-rebuilt")
        resumed.start()
        for user in users:
            assert_oracle(events, resumed.features(user), user)
        assert resumed.stop() == 0
    finally:
        events.producer.close()


def test_a_worker_restarted_on_unchanged_definitions_with_transforms_resumes_its_state(kafka_bootstrap, tmp_path):
    from tests.unit.test_fingerprint_stability import DEFINITIONS

    run_id = uuid.uuid4().hex[:8]
    prefix, app_id = f"tf-{run_id}-", f"fs-tf-{run_id}"
    definitions = tmp_path / "features.py"
    definitions.write_text(DEFINITIONS)
    first = Worker(kafka_bootstrap, tmp_path / "state", prefix, app_id, tmp_path, "tf1")
    first.extra_args = ["--definitions", str(definitions)]
    first.start()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    now = int(time.time() * 1000)
    for i in range(20):
        event = {"user_id": f"u{i % 4}", "ts": now - 1000 * (i + 1), "amount": float(i)}
        producer.send(f"{prefix}payments", key=event["user_id"].encode(), value=json.dumps(event).encode())
    producer.flush(timeout=30)
    producer.close()
    deadline = time.monotonic() + TIMEOUT_S
    while committed(kafka_bootstrap, app_id) < 20:
        assert time.monotonic() < deadline, first.log_tail()
        time.sleep(0.5)
    assert first.stop() == 0
    plan = cli("plan", "--definitions", str(definitions), "--broker", kafka_bootstrap, "--app-id", app_id,
               "--topic-prefix", prefix, "--check")  # fmt: skip
    assert plan.returncode == 0 and "unchanged" in plan.stdout, plan.stdout + plan.stderr
    again = Worker(kafka_bootstrap, tmp_path / "state", prefix, app_id, tmp_path, "tf2")
    again.extra_args = ["--definitions", str(definitions)]
    again.start()  # fails the test if the worker refuses its own state
    status, body = http("GET", f"{again.url}/features/payments/u1")
    assert status == 200 and body["features"]["double_sum_1h"] == 2 * sum(float(i) for i in range(1, 20, 4))
    assert again.stop() == 0
