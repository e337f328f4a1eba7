"""Recently used state blobs of one table, in memory in front of its RocksDB partitions.

A RocksDB read of an entity's state costs a few microseconds (memtables and files to search); a batch
loads most of its entities, and a read serves one. The cache holds the blobs as they are in RocksDB, so
it can only ever answer what RocksDB would:

* it is filled by reads (what RocksDB returned) and by the transaction's store writes, after RocksDB took
  them (write-through);
* every other writer of the table's stores goes through Faust's changelog recovery (a new owner, a
  restart, a standby), whose batches drop the keys they touch (``invalidate``, hooked by
  ``recovery_guard``), and a new consumer generation (any rebalance) drops everything;
* it is bounded by bytes; past the bound the oldest entries (by last write or fill) go first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_ENTRY_OVERHEAD = 120  # bytes of a dict slot, a key and a bytes object beyond their payloads
_ATTR = "_featurestream_state_cache"


class StateCache:
    """Blobs per (partition, key) of one table's stores; see the module docstring."""

    def __init__(self, table, max_bytes: int = DEFAULT_MAX_BYTES):
        self.table = table
        self.max_bytes = max_bytes
        self._entries: dict[tuple[int, bytes], bytes] = {}
        self._bytes = 0
        self._generation = None

    @classmethod
    def of(cls, table) -> StateCache:
        """The cache of ``table`` (made on first use, shared by the agent, the views and recovery)."""
        cache = getattr(table, _ATTR, None)
        if cache is None:
            cache = cls(table)
            setattr(table, _ATTR, cache)
        return cache

    def _db(self, partition: int):
        return self.table.data._db_for_partition(partition)

    def _check_generation(self) -> None:
        generation = getattr(getattr(self.table, "app", None), "consumer_generation_id", None)
        if generation != self._generation:
            self.clear()
            self._generation = generation

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        """The blobs of ``keys`` in ``partition`` (None: no state), from memory or RocksDB."""
        self._check_generation()
        entries = self._entries
        found = [entries.get((partition, k)) for k in keys]
        missing = [i for i, blob in enumerate(found) if blob is None]
        if missing:
            loaded = self._db(partition).get([keys[i] for i in missing])
            for i, blob in zip(missing, loaded, strict=True):
                if blob is not None:
                    found[i] = blob
                    self._put(partition, keys[i], blob)
            self._trim()
        return found

    def get(self, partition: int, key: bytes) -> bytes | None:
        """One blob, as ``get_many``."""
        self._check_generation()
        blob = self._entries.get((partition, key))
        if blob is None:
            blob = self._db(partition).get(key)
            if blob is not None:
                self._put(partition, key, blob)
                self._trim()
        return blob

    def stored(self, partition: int, items: Iterable[tuple[bytes, bytes]]) -> None:
        """``items`` were written to RocksDB: keep them as the current blobs."""
        self._check_generation()
        for key, blob in items:
            self._put(partition, key, blob)
        self._trim()

    def invalidate(self, partition: int, keys: Iterable[bytes]) -> None:
        """Someone else wrote these keys: forget them."""
        entries = self._entries
        for key in keys:
            old = entries.pop((partition, key), None)
            if old is not None:
                self._bytes -= len(old) + len(key) + _ENTRY_OVERHEAD

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _put(self, partition: int, key: bytes, blob: bytes) -> None:
        entries = self._entries
        old = entries.pop((partition, key), None)  # re-inserted at the end: the newest
        if old is not None:
            self._bytes -= len(old) + len(key) + _ENTRY_OVERHEAD
        entries[(partition, key)] = blob
        self._bytes += len(blob) + len(key) + _ENTRY_OVERHEAD

    def _trim(self) -> None:
        if self._bytes <= self.max_bytes:
            return
        entries = self._entries
        target = self.max_bytes * 3 // 4
        drop = max(1, len(entries) // 4)
        while self._bytes > target and entries:
            for where in list(islice(entries, drop)):
                blob = entries.pop(where)
                self._bytes -= len(blob) + len(where[1]) + _ENTRY_OVERHEAD
                if self._bytes <= target:
                    break
