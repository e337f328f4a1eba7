"""Every entity's newest state blob of one feature set, kept from the set's changelog topic.

A read replica (``stream.replica``) applies the changelog's records here in offset order, as Faust's table
recovery applies them to a new owner's store, with the same rule (``recovery_guard.is_stale``): a record
older than the state it would replace (a late write of an expelled owner) is skipped, a tombstone deletes,
and the transaction's checkpoints, which are bookkeeping rather than state, are not kept. So the mirror holds
what a worker recovering the set's every partition would hold. Pure logic: no Kafka here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aggregations.bookkeeping import is_internal_key
from aggregations.codec import EntityStateCodec

from .recovery_guard import is_stale


class ChangelogMirror:
    """Newest blob per entity key, and how far each changelog partition has been applied."""

    def __init__(self, codec: EntityStateCodec):
        self.codec = codec
        self._blobs: dict[bytes, bytes] = {}
        self.positions: dict[int, int] = {}  # partition -> next offset to apply
        self.skipped = 0  # records older than the state they would have replaced
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._blobs)

    def start(self, partition: int, offset: int) -> None:
        """Apply ``partition`` from ``offset`` (its first record still in the log)."""
        self.positions[partition] = offset

    def advance(self, partition: int, position: int) -> None:
        """The consumer's position in ``partition``: offsets below it that were not applied are not in the log
        any more (compacted away)."""
        if position > self.positions.get(partition, 0):
            self.positions[partition] = position

    def get(self, key: bytes) -> bytes | None:
        return self._blobs.get(key)

    def apply(self, partition: int, records: Iterable[tuple[int, bytes | None, bytes | None]]) -> None:
        """Records ``(offset, key, value)`` of one changelog partition, in offset order (value None: deleted)."""
        blobs = self._blobs
        position = self.positions.get(partition, 0)
        for offset, key, value in records:
            position = offset + 1
            if key is None or is_internal_key(key):
                continue
            stored = blobs.get(key)
            if value is None:
                if stored is not None:
                    del blobs[key]
                    self.bytes -= len(key) + len(stored)
                continue
            if stored is not None:
                if is_stale(self.codec, key, stored, value):
                    self.skipped += 1
                    continue
                self.bytes -= len(stored)
            else:
                self.bytes += len(key)
            blobs[key] = value
            self.bytes += len(value)
        self.positions[partition] = position

    def behind(self, ends: Mapping[int, int]) -> int:
        """Records between the applied positions and ``ends`` (partition -> end offset)."""
        return sum(max(0, end - self.positions.get(p, 0)) for p, end in ends.items())
