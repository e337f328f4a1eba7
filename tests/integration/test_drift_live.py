"""Drift against a live worker: the worker keeps the rows it served (GET /sample/{vector}), and
``featurestream drift`` compares them with a reference computed offline by the same kernel (no drift),
then with a shifted reference (drift, exit 1). Also checks the worker's new metrics (HTTP timing per
route, readiness, consumer lag) over real HTTP.
"""

from __future__ import annotations

import json
import uuid

import pandas as pd
import pytest
from kafka import KafkaAdminClient

from featurestream.cli import main
from tests.integration.test_worker import TX, Events, Worker, http, make_events

pytestmark = pytest.mark.integration

USERS = 40


@pytest.fixture(scope="module")
def live(kafka_bootstrap, tmp_path_factory):
    run_id = uuid.uuid4().hex[:8]
    prefix = f"drift-{run_id}-"
    topic = f"{prefix}{TX.source}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="featurestream-tests")
    admin.create_topics({topic: {"num_partitions": 2, "replication_factor": 1}}, timeout_ms=30_000)
    admin.wait_for_topics([topic], timeout_ms=30_000)
    tmp = tmp_path_factory.mktemp(f"drift-{run_id}")
    worker = Worker(kafka_bootstrap, tmp / "state", prefix, f"fs-drift-{run_id}", tmp, name="drift")
    events = Events(kafka_bootstrap, topic)
    worker.start()
    try:
        users = [f"user-{run_id}-{i}" for i in range(USERS)]
        events.send(make_events(users, 1200, seed=5))
        worker.wait_consumed(len(events.rows))
        yield {"worker": worker, "events": events, "users": users, "tmp": tmp}
    finally:
        worker.stop()
        events.producer.close()
        admin.close()


def test_served_sample_drift_and_worker_metrics(live, capsys):
    worker, users, tmp = live["worker"], live["users"], live["tmp"]
    entities = [{"user_id": u, "amount": float(10 + 7 * (i % 13))} for i, u in enumerate(users)] * 4
    status, body = http("POST", f"{worker.url}/vectors/fraud", json.dumps({"entities": entities}).encode())
    assert status == 200, body
    at = body["at"]

    status, sample = http("GET", f"{worker.url}/sample/fraud?kind=vector")
    assert status == 200 and sample["kind"] == "vector" and sample["served"] == len(entities)
    assert len(sample["rows"]) == len(entities)
    assert set(sample["rows"][0]) == {"amount_avg_90d", "amount_count_1h", "amount_sum_1d", "amount_vs_avg_90d"}
    assert sample["rows"] == [r["features"] for r in body["results"]]
    assert http("GET", f"{worker.url}/sample/nope")[0] == 404

    # The reference: the same entities at the same time, computed offline from the produced events.
    produced = pd.DataFrame(live["events"].rows).rename(columns={"key": "user_id", "value": "amount"})
    rows = pd.DataFrame(entities).assign(ts=pd.to_datetime(at, unit="ms", utc=True))
    reference = TX.preview(produced[["user_id", "ts", "amount"]], at=rows)
    reference.attrs.clear()
    same = tmp / "reference.parquet"
    reference.to_parquet(same)
    shifted = tmp / "shifted.parquet"
    reference.assign(amount_avg_90d=reference.amount_avg_90d * 3).to_parquet(shifted)

    html = tmp / "drift.html"
    common = ["drift", "--vector", "fraud", "--url", worker.url, "--min-rows", "100"]
    assert main([*common, "--reference", str(same), "--html", str(html), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["current_rows"] == len(entities)
    assert all(f["psi"] < 1e-9 for f in result["features"]), result  # same values: identical bins
    assert html.read_text().count("<svg") == 4
    # The report says where the rows come from: the reference file, and which worker served the current ones.
    assert result["reference"] == str(same) and sample["worker"] and f"worker {sample['worker']} at {worker.url}" in result["current"]
    assert f"worker {sample['worker']} at {worker.url}" in html.read_text() and str(same) in html.read_text()

    assert main([*common, "--reference", str(shifted)]) == 1
    out = capsys.readouterr().out
    assert any(line.startswith("amount_avg_90d") and line.endswith("DRIFT") for line in out.splitlines()), out

    _, text = http("GET", f"{worker.url}/metrics")
    lines = text.splitlines()
    assert "featurestream_ready 1.0" in lines
    assert 'featurestream_consumer_lag_records{feature_set="transactions"} 0.0' in lines
    route = 'route="/vectors/{vector}"'
    assert any(line.startswith("featurestream_http_request_seconds_count{") and route in line for line in lines)
    assert any(
        line.startswith("featurestream_http_requests_total{") and route in line and 'status="200"' in line
        for line in lines
    ), text
