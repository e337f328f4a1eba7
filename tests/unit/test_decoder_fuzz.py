"""The one decoder every consumer shares (``aggregations.schema``), fuzzed: no record can make it raise,
every record ends as exactly one row or one rejection with a reason, the rows it accepts convert to the
typed frame and have entity keys short enough to be read back; and the worker's processor, fed the same
records, dead-letters what the decoder rejects and never raises."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

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
