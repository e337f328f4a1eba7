"""The one decoder every consumer shares (``aggregations.schema``), fuzzed: no record can make it raise,
every record ends as exactly one row or one rejection with a reason, the rows it accepts convert to the
typed frame and have entity keys short enough to be read back; the batch decoder (``decode_frame``) gives
exactly the reference's frame, positions and reasons; and the worker's processor, fed the same records,
dead-letters what the decoder rejects and never raises."""

from __future__ import annotations

import json

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregations import Aggregation, Entity, FeatureSet
from aggregations.loading import load_registry
from aggregations.schema import MAX_ENTITY_BYTES, EventValidator, entity_keys
from stream.processor import BatchProcessor, SourceRecord
from tests.fuzz import NOW, records

TX = load_registry("examples/transactions/features.py").feature_set("transactions")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(records)
def test_every_record_is_a_row_or_a_reasoned_rejection_and_nothing_raises(payloads):
    validator = EventValidator(TX)
    rows, positions, rejected = validator.decode(payloads, NOW)
    assert sorted(positions + [r.index for r in rejected]) == list(range(len(payloads)))
    assert all(r.reason and "\n" not in r.reason for r in rejected)
    frame = validator.to_frame(rows)
    assert len(frame) == len(rows)
    for key in entity_keys(TX, frame):
        assert len(key.encode("utf-8")) <= MAX_ENTITY_BYTES


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(records)
def test_the_processor_dead_letters_what_the_decoder_rejects_and_never_raises(payloads):
    blobs: dict = {}
    processor = BatchProcessor(TX, "transactions", partitions=3)
    batch = [SourceRecord(i % 3, i, b"k", p) for i, p in enumerate(payloads)]
    result = processor.process(batch, NOW, lambda part, keys: [blobs.get((part, k)) for k in keys])
    _, _, rejected = EventValidator(TX).decode(payloads, NOW)
    assert result.rejected == len(rejected)
    accounted = result.applied + result.duplicates + len(result.late) + len(result.forward) + result.rejected
    assert accounted == len(payloads)


MIXED = FeatureSet(
    "mixed",
    [Entity("user_id"), Entity("shop", "int64")],
    "ts",
    "mixed",
    {"user_id": "string", "shop": "int64", "ts": "timestamp", "amount": "float64", "n": "int64", "ok": "bool",
     "seen": "timestamp", "label": "string"},
    [Aggregation("amount", ["count"], windows=["1h"])],
)  # fmt: skip

_value = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=6),
    st.sampled_from([NOW - 5, NOW + 10**9, 1_500_000_000, "2026-01-01T00:00:00Z", 1.7e12, 2**53 + 1, -1, "", 0]),
)  # fmt: skip
_mixed_events = st.dictionaries(
    st.sampled_from([*list(MIXED.schema), "extra"]), _value, max_size=len(MIXED.schema) + 1
).map(lambda d: json.dumps(d).encode())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(records, st.lists(st.one_of(_mixed_events, records.flatmap(st.sampled_from)), min_size=1, max_size=30)))
def test_the_batch_decoder_gives_the_reference_frame_positions_and_reasons(payloads):
    for fs in (TX, MIXED):
        validator = EventValidator(fs)
        rows, positions, rejected = validator.decode(payloads, NOW)
        frame, fast_positions, fast_rejected = validator.decode_frame(payloads, NOW)
        assert fast_positions == positions
        assert [(r.index, r.reason, r.raw) for r in fast_rejected] == [(r.index, r.reason, r.raw) for r in rejected]
        pd.testing.assert_frame_equal(frame, validator.to_frame(rows))
