"""The worker folds a batch on a thread of its own (``PartitionTransaction(executor=...)``): the outcome, the
changelog, the store and the acks are those of the same transaction run inline."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from stream.processor import BatchProcessor
from stream.transaction import BatchKind, PartitionTransaction, TxState
from tests.unit.test_transaction import FS, NOW, PARTITIONS, Rig, mixed_batch


def _run(executor) -> Rig:
    rig = Rig()
    processor = BatchProcessor(FS, "pay", partitions=PARTITIONS)
    messages = mixed_batch(0) + mixed_batch(1)
    tx = PartitionTransaction(processor, BatchKind.SOURCE, messages, 1, rig.ports(), lambda: NOW, executor=executor)
    outcome = asyncio.run(tx.run())
    assert outcome.state is TxState.COMPLETE
    return rig


def test_a_batch_folded_on_a_thread_ends_as_the_same_batch_inline():
    with ThreadPoolExecutor(max_workers=1) as pool:
        threaded = _run(pool)
    inline = _run(None)
    assert threaded.changelog.records == inline.changelog.records
    assert threaded.store.data == inline.store.data and threaded.store.persisted == inline.store.persisted
    assert [m.offset for m in threaded.source.acked] == [m.offset for m in inline.source.acked]
    assert threaded.dlq.records == inline.dlq.records and threaded.forward.records == inline.forward.records
