"""A batch of tile-table writes: changelog first (batched, acknowledged), then RocksDB in one write.

Faust's ``table[key] = value`` writes the local store at once and queues one changelog record, which
its producer buffer then sends one await at a time, persisting the changelog offset to RocksDB per
record: most of a worker's time at 20,000 events/s. Here a batch's records are all handed to the
producer before any is awaited, and the store is written only after the broker acknowledged them,
as table recovery writes it (``Store.apply_changelog_batch``): one RocksDB WriteBatch per partition
holding the blobs and the highest changelog offset.

The order is what makes state effectively-once across a crash: whatever reached the local store is in
the changelog too. A crash before the acknowledgement leaves the store without the batch; the source
messages were not acked, so they come again, and table recovery first replays whatever part of the
batch did reach the changelog (from the persisted offset on), so the per-entity applied offsets skip
exactly that part. (Faust's order, store first, can leave a store ahead of its changelog: a standby or
a new owner would then never see those events.)
"""

from __future__ import annotations

from collections.abc import Sequence

import rocksdict

from .processor import StateWrite


class TableWriter:
    """Writes batches of state blobs to one Faust table (its changelog, then its RocksDB store)."""

    def __init__(self, app, table):
        self.app = app
        self.table = table
        self.changelog = table.changelog_topic.get_topic_name()

    async def write(self, writes: Sequence[StateWrite]) -> None:
        """Produce every write to the changelog, wait for the acknowledgements, then apply them locally."""
        if not writes:
            return
        # aiokafka's producer directly: Faust's wrapper adds a sensor callback per record.
        send = self.app.producer._ensure_producer().send
        topic = self.changelog
        pending = [await send(topic, w.value, key=w.key, partition=w.partition) for w in writes]
        top: dict[int, int] = {}
        for w, future in zip(writes, pending, strict=True):
            offset = (await future).offset  # raises if the broker refused the record
            if offset > top.get(w.partition, -1):
                top[w.partition] = offset
        store = self.table.data
        batches: dict[int, rocksdict.WriteBatch] = {}
        for w in writes:
            batch = batches.get(w.partition)
            if batch is None:
                batch = batches[w.partition] = rocksdict.WriteBatch(raw_mode=True)
            batch.put(w.key, w.value)
        for partition, batch in batches.items():
            # The changelog offset goes in the same atomic write: recovery resumes right after it.
            batch.put(store.offset_key, str(top[partition]).encode())
            store._db_for_partition(partition).write(batch)
