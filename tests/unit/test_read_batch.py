"""Concurrent single-entity reads answered in one batch (``stream.read_batch``): each request gets exactly
what a read of its entity alone gives at the batch's time, with its own feature list and on-read inputs,
and a failing read fails only the requests of its batch."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

from aggregations.kernel import EventBatch, build_levels
from aggregations.loading import load_registry
from stream.read_batch import ReadBatcher
from stream.reading import FeatureReader

REGISTRY = load_registry("examples/transactions/features.py")
FS = REGISTRY.feature_sets["transactions"]
NOW = 1_700_000_000_000


class CountingReader(FeatureReader):
    """The real reader, counting its calls and the entities of each."""

    def __init__(self, fs):
        super().__init__(fs)
        self.calls: list[int] = []

    def read(self, blobs, at_ms, features=None, request=None):
        self.calls.append(len(blobs))
        return super().read(blobs, at_ms, features, request)


def blobs(n: int) -> list[bytes]:
    rng = np.random.default_rng(3)
    entity = rng.integers(0, n, 400)
    ts = NOW - rng.integers(1, 3 * 86_400_000, 400)
    batch = EventBatch(entity.astype(np.int64), ts.astype(np.int64), np.arange(400, dtype=np.int64),
                       {"amount": rng.lognormal(3, 1, 400)})  # fmt: skip
    codec = FeatureReader(FS).codec
    return codec.encode_all(build_levels(FS.plan, batch), list(range(n)), [{"offsets": {"0": i}} for i in range(n)])


BLOBS = blobs(6)


async def gather_reads(batcher, requests):
    return await asyncio.gather(*(batcher.read(blob, features, req) for blob, features, req in requests))


def test_reads_arriving_together_are_one_call_and_each_equals_its_lone_read():
    reader = CountingReader(FS)
    batcher = ReadBatcher(reader, lambda: NOW)
    requests = [(b, None, None) for b in BLOBS] + [(None, None, None)]  # an entity without state too
    answers = asyncio.run(gather_reads(batcher, requests))
    assert reader.calls == [len(requests)]
    alone = FeatureReader(FS)
    for (blob, _, _), (at, values) in zip(requests, answers, strict=True):
        assert at == NOW
        assert values == alone.read([blob], NOW)[0]


def test_feature_lists_and_on_read_inputs_are_read_apart():
    reader = CountingReader(FS)
    batcher = ReadBatcher(reader, lambda: NOW)
    some = ["amount_count_1h", "amount_avg_90d"]
    amount = pd.DataFrame({"amount": [10.0]})
    requests = [(BLOBS[0], None, None), (BLOBS[1], some, None), (BLOBS[2], None, None), (BLOBS[3], [*some, "amount_vs_avg_90d"], amount),
                (BLOBS[4], some, None)]  # fmt: skip
    answers = asyncio.run(gather_reads(batcher, requests))
    assert sorted(reader.calls) == [1, 2, 2]  # the on-read request alone; two groups of two
    alone = FeatureReader(FS)
    for (blob, features, req), (_, values) in zip(requests, answers, strict=True):
        assert values == alone.read([blob], NOW, features, req)[0]
    assert list(answers[1][1]) == some
    assert answers[3][1]["amount_vs_avg_90d"] == pytest.approx(10.0 / answers[3][1]["amount_avg_90d"])


def test_batches_are_capped():
    reader = CountingReader(FS)
    batcher = ReadBatcher(reader, lambda: NOW, max_batch=4)
    asyncio.run(gather_reads(batcher, [(BLOBS[i % 6], None, None) for i in range(10)]))
    assert reader.calls == [4, 4, 2]


def test_a_failing_read_fails_its_requests_and_the_next_batch_still_reads():
    class Failing(CountingReader):
        fail = True

        def read(self, blobs, at_ms, features=None, request=None):
            if self.fail:
                self.fail = False
                raise RuntimeError("corrupt state")
            return super().read(blobs, at_ms, features, request)

    reader = Failing(FS)
    batcher = ReadBatcher(reader, lambda: NOW)

    async def scenario():
        first = await asyncio.gather(batcher.read(BLOBS[0], None), batcher.read(BLOBS[1], None), return_exceptions=True)
        second = await batcher.read(BLOBS[2], None)
        return first, second

    first, (_, values) = asyncio.run(scenario())
    assert all(isinstance(e, RuntimeError) for e in first)
    assert values == FeatureReader(FS).read([BLOBS[2]], NOW)[0]


def test_a_cancelled_request_does_not_break_its_batch():
    reader = CountingReader(FS)
    batcher = ReadBatcher(reader, lambda: NOW)

    async def scenario():
        gone = asyncio.ensure_future(batcher.read(BLOBS[0], None))
        kept = asyncio.ensure_future(batcher.read(BLOBS[1], None))
        await asyncio.sleep(0)  # both queued
        gone.cancel()
        return await kept

    _, values = asyncio.run(scenario())
    assert values == FeatureReader(FS).read([BLOBS[1]], NOW)[0]


def test_a_lone_read_is_answered_at_once():
    reader = CountingReader(FS)
    batcher = ReadBatcher(reader, lambda: NOW)

    async def lone():
        step = batcher.read(BLOBS[0], None)
        with pytest.raises(StopIteration) as done:  # finished on its first step: it never waited
            step.send(None)
        return done.value.value

    at, values = asyncio.run(lone())
    assert reader.calls == [1] and at == NOW
    assert values == FeatureReader(FS).read([BLOBS[0]], NOW)[0]
