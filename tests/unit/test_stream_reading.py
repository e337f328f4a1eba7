"""Serving helpers of the worker: JSON-safe values, request parsing, envelopes, metrics, app wiring."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from aggregations import FeatureVector
from aggregations.loading import load_registry
from stream.envelope import envelope, open_envelope
from stream.metrics import WorkerMetrics
from stream.processor import BatchResult
from stream.reading import (
    BadRequest,
    FeatureReader,
    NotFound,
    json_values,
    output_names,
    parse_feature_list,
    parse_vector_request,
    put_vector_values,
    request_columns,
    resolve_vector,
    vector_entity_keys,
)
from stream.topics import bootstrap_servers, topic_names
from tests import oracle

REGISTRY = load_registry("examples/transactions/features.py")
TX = REGISTRY.feature_set("transactions")


def test_envelope_keeps_the_original_bytes_and_where_they_came_from():
    raw = b"\xff\x00not utf-8"
    body = json.loads(envelope("not valid JSON", "transactions", 3, 42, raw))
    assert body == {
        "reason": "not valid JSON",
        "topic": "transactions",
        "partition": 3,
        "offset": 42,
        "payload_b64": base64.b64encode(raw).decode(),
    }
    assert open_envelope(envelope("r", "t", 0, 0, raw))["payload"] == raw
    assert open_envelope(envelope("r", "t", 0, 0, None))["payload"] is None


def test_json_values_turn_nan_and_numpy_into_json():
    assert json_values(np.array([1.5, np.nan])) == [1.5, None]
    assert json_values(np.array([3, 0], dtype=np.int64)) == [3, 0]
    assert json_values(np.array(["a", None, float("nan"), np.float64(2.0)], dtype=object)) == ["a", None, None, 2.0]
    assert json.dumps(json_values(np.array([np.int64(1)], dtype=object))) == "[1]"


def test_feature_selection_and_unknown_names():
    reader = FeatureReader(TX)
    assert parse_feature_list(None) is None and parse_feature_list(" , ") is None
    assert parse_feature_list("amount_count_1h, amount_sum_1d") == ["amount_count_1h", "amount_sum_1d"]
    (values,) = reader.read([None], 1_800_000_000_000, ["amount_sum_1d", "amount_count_1h"])
    assert values == {"amount_sum_1d": 0.0, "amount_count_1h": 0}
    with pytest.raises(BadRequest, match="no feature"):
        reader.check_features(["amount_count_2h"])


def test_on_read_features_take_request_columns():
    query = {"amount": "12.5", "features": "x"}
    frame = request_columns(TX, query)
    assert frame.to_dict("records") == [{"amount": 12.5}]
    with pytest.raises(BadRequest, match="amount"):
        request_columns(TX, {"amount": "abc"})
    (values,) = FeatureReader(TX).read([None], 1, ["amount_vs_avg_90d"], frame)
    assert values == {"amount_vs_avg_90d": None}  # empty window: average is null


@pytest.mark.parametrize(
    "body,message",
    [
        (b"{not json", "not valid JSON"),
        (b"", "JSON object"),
        (b"[]", "JSON object"),
        (b'{"entities": {}}', "JSON object"),
        (b'{"entities": [1]}', r"entities\[0\] must be a JSON object"),
        (json.dumps({"entities": [{"user_id": "u"}] * 1001}).encode(), "too many entities"),
    ],
)
def test_malformed_vector_requests(body, message):
    with pytest.raises(BadRequest, match=message):
        parse_vector_request(body)


def test_vector_request_entity_keys():
    entities = parse_vector_request(b'{"entities": [{"user_id": "u1", "amount": 2}, {"user_id": "u2"}]}')
    assert vector_entity_keys(TX, entities) == ["u1", "u2"]
    assert vector_entity_keys(TX, []) == []
    with pytest.raises(BadRequest, match="entities\\[1\\] lacks a valid entity key 'user_id'"):
        vector_entity_keys(TX, [{"user_id": "u1"}, {"amount": 1.0}])


def test_output_names_are_bare_unless_they_collide():
    vector = FeatureVector("v", ["a.x", "b.x", "a.y"])
    names = output_names(vector, {"a": ["x", "y"], "b": ["x"]})
    assert names == {("a", "x"): "a.x", ("a", "y"): "y", ("b", "x"): "b.x"}


def test_a_vector_request_resolves_to_its_sets_features_and_fills_rows_by_output_name():
    with pytest.raises(NotFound, match="unknown feature vector 'nope'; known: fraud"):
        resolve_vector(REGISTRY, "nope", [])
    with pytest.raises(BadRequest, match="amount"):
        resolve_vector(REGISTRY, "fraud", [{"user_id": "u1", "amount": "abc"}])
    resolved, names = resolve_vector(REGISTRY, "fraud", [{"user_id": "u1", "amount": 1.0}])
    assert resolved == {"transactions": ["amount_avg_90d", "amount_count_1h", "amount_sum_1d", "amount_vs_avg_90d"]}
    assert names == {("transactions", f): f for f in resolved["transactions"]}
    results = [{"entity": {"user_id": "u1"}, "features": {}}, {"entity": {"user_id": "u2"}, "features": {}}]
    put_vector_values(results, "a", ["x", "y"], {("a", "x"): "a.x", ("a", "y"): "y"}, [{"x": 1, "y": 2}, {"x": 3}])
    assert [r["features"] for r in results] == [{"a.x": 1, "y": 2}, {"a.x": 3, "y": None}]


def test_metrics_render_counters_per_feature_set():
    metrics = WorkerMetrics()
    metrics.touch("transactions")
    result = BatchResult(consumed=5, applied=3, duplicates=1, max_event_ts=1_800_000_000_000)
    metrics.observe("transactions", result, 0.01, 1_800_000_000_500)
    text = metrics.render().decode()
    assert 'featurestream_events_consumed_total{feature_set="transactions"} 5.0' in text
    assert 'featurestream_events_applied_total{feature_set="transactions"} 3.0' in text
    assert 'featurestream_events_duplicate_total{feature_set="transactions"} 1.0' in text
    assert 'featurestream_events_rejected_total{feature_set="transactions"} 0.0' in text
    assert 'featurestream_last_event_timestamp_seconds{feature_set="transactions"} 1.8e+09' in text
    assert "featurestream_batch_seconds_bucket" in text


def test_topic_names_and_bootstrap_servers():
    assert topic_names(TX) == ("transactions", "transactions.dlq", "transactions.late")
    assert topic_names(TX, "run7-") == ("run7-transactions", "run7-transactions.dlq", "run7-transactions.late")
    assert bootstrap_servers("kafka://a:1, b:2") == ["a:1", "b:2"]
    with pytest.raises(ValueError):
        bootstrap_servers(" ")


def test_create_app_wires_one_table_and_agent_per_set(tmp_path):
    from stream.app import create_app, table_name
    from stream.topics import SetTopics

    topics = {"transactions": SetTopics("transactions", "transactions.dlq", "transactions.late", 6)}
    app = create_app(REGISTRY, "127.0.0.1:1", tmp_path / "state", 6099, topics=topics, worker_id="w1")
    ctx = app.featurestream
    table = ctx.tables["transactions"]
    assert table.name == table_name(TX) == f"transactions-tiles-{TX.fingerprint()}"
    assert table.partitions == 6 and app.conf.topic_partitions == 6
    assert table.key_serializer == "raw" and table.value_serializer == "raw"
    assert str(app.conf.canonical_url) == "http://127.0.0.1:6099"
    assert app.conf.store.scheme == "rocksdb"
    assert [a.name for a in app.agents.values()] == ["featurestream.transactions"]
    paths = [getattr(v, "view_path", None) for v in app.web.views.values()]
    assert paths.index("/features/transactions/{entity}") < paths.index("/features/{feature_set}/{entity}")
    assert {"/vectors/{vector}", "/health", "/metrics"} <= set(paths)
    assert isinstance(ctx.readers["transactions"].read([None], 0)[0], dict)


def test_entities_without_state_read_empty_windows_at_any_time():
    """Unknown entities skip the kernel; their values must still be the oracle's over no events."""
    reader = FeatureReader(TX)
    for at in (0, 1_800_000_000_000):
        want = {
            f.name: oracle.feature_at([], "nobody", at, f.op, f.window.length, f.window.period)
            for f in TX.plan.features
        }
        for got in reader.read([None, None], at):
            for name, value in want.items():
                assert got[name] == value, (name, got[name], value)
