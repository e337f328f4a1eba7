"""Hostile records over a real broker: the Parquet sink and backfill, which decode with the same shared
decoder as the worker, never stop on them (no crash, no stuck offset) and store every valid event exactly
once; ``verify``'s entity extraction never raises on them either. Records come from ``tests.fuzz``."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from kafka import KafkaProducer

from aggregations.loading import load_registry
from aggregations.schema import EventValidator
from featurestream.verify import entity_of_record
from sinks import ParquetSink, read_events
from sinks.backfill import backfill
from tests.fuzz import NOW, records

pytestmark = pytest.mark.integration

TX = load_registry("examples/transactions/features.py").feature_set("transactions")


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(payloads=records)
def test_the_sink_and_backfill_store_every_valid_event_once_and_survive_the_rest(kafka_bootstrap, new_topic, tmp_path_factory, payloads):
    topic = new_topic(2)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=4 << 20)
    where = []
    for i, payload in enumerate(payloads):
        meta = producer.send(topic, key=str(i).encode(), value=payload).get(timeout=30)
        where.append((meta.partition, meta.offset))
    producer.close()
    _rows, positions, _ = EventValidator(TX).decode(payloads, NOW)
    valid = {where[i] for i in positions}

    live, replayed = (tmp_path_factory.mktemp(name) for name in ("live", "replayed"))
    stats = ParquetSink(TX, live, kafka_bootstrap, group=f"fuzz-{uuid.uuid4().hex[:8]}", topic=topic).run(once=True)
    assert stats.consumed == len(payloads)
    assert stats.written == len(valid) and stats.invalid == len(payloads) - len(valid)
    again = backfill(TX, replayed, kafka_bootstrap, topic=topic, until_sink=False)
    assert again.written == len(valid)
    for store in (live, replayed):
        stored = read_events(TX, store) if valid else None
        pairs = [] if stored is None else list(zip(stored["_partition"], stored["_offset"], strict=True))
        assert sorted(pairs) == sorted(valid) and len(set(pairs)) == len(pairs)
    for i, payload in enumerate(payloads):
        entities = entity_of_record(TX, str(i).encode(), payload)
        assert len(entities) == (1 if where[i] in valid else 0), json.dumps(repr(payload[:80] if payload else payload))
