"""Recently used state blobs of one table, in memory in front of its RocksDB partitions.

A RocksDB read of an entity's state costs a few microseconds (memtables and files to search); a batch
loads most of its entities, and a read serves one. The cache holds the blobs as they are in RocksDB, so
it can only ever answer what RocksDB would:

* it is filled by reads (what RocksDB returned) and by the transaction's store writes, after RocksDB took
  them (write-through);
* every other writer of the table's stores goes through Faust's changelog recovery (a new owner, a
  restart, a standby), whose batches drop the keys they touch (``invalidate``, hooked by
  ``recovery_guard``), and a new consumer generation (any rebalance) drops everything;
* a fill from a RocksDB read made outside the lock is dropped if any write, invalidation or clear came
  between the read and the fill (it may be older than what was written meanwhile);
* it is bounded by bytes; past the bound the oldest entries (by last write or fill) go first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from itertools import islice

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_max_bytes = DEFAULT_MAX_BYTES  # of caches made from now on (the worker's ``--state-cache-mb``)
#: Keys per RocksDB multi-get: rocksdict keeps the interpreter lock for a whole call (tens of ms for thousands
#: of keys), and reads on the web server's thread wait for it.
GET_CHUNK = 64
_ENTRY_OVERHEAD = 120  # bytes of a dict slot, a key and a bytes object beyond their payloads
_ATTR = "_featurestream_state_cache"


class PartitionNotOpen(LookupError):
    """A read off the event loop found the partition's database not open (being opened or just dropped)."""


class StateCache:
    """Blobs per (partition, key) of one table's stores; see the module docstring. Thread-safe: the views read
    through it on the web server's thread while batches load and store through it on the event loop."""

    def __init__(self, table, max_bytes: int | None = None):
        self.table = table
        self.max_bytes = _max_bytes if max_bytes is None else max_bytes
        # partition -> {key: blob}: dicts of bytes only, which the garbage collector does not track
        self._partitions: dict[int, dict[bytes, bytes]] = {}
        self._bytes = 0
        self._generation = None
        self._changes = 0  # writes, invalidations and clears so far: a fill read before one is not kept
        self._lock = threading.Lock()

    @staticmethod
    def set_default_max_bytes(max_bytes: int) -> None:
        """The bound of every cache made after this call (one per table)."""
        global _max_bytes
        if max_bytes < 0:
            raise ValueError(f"state cache size must be >= 0 bytes, got {max_bytes}")
        _max_bytes = max_bytes

    @classmethod
    def of(cls, table) -> StateCache:
        """The cache of ``table`` (made on first use, shared by the agent, the views and recovery)."""
        cache = getattr(table, _ATTR, None)
        if cache is None:
            cache = cls(table)
            setattr(table, _ATTR, cache)
        return cache

    def _db(self, partition: int, open_db: bool = True):
        """The partition's RocksDB database. ``open_db=False`` (a read on another thread than the event loop's):
        only one already open, else ``PartitionNotOpen``; Faust opens and drops them on its loop (a rebalance),
        and an open from another thread would race it for the database's lock."""
        data = self.table.data
        if open_db:
            return data._db_for_partition(partition)
        dbs = getattr(data, "_dbs", None)
        db = dbs.get(partition) if dbs is not None else data._db_for_partition(partition)
        if db is None:
            raise PartitionNotOpen(partition)
        return db

    def _entries(self, partition: int) -> dict[bytes, bytes]:
        """The partition's entries, after dropping everything if the consumer generation changed."""
        generation = getattr(getattr(self.table, "app", None), "consumer_generation_id", None)
        if generation != self._generation:
            self._clear()
            self._generation = generation
            self._changes += 1
        entries = self._partitions.get(partition)
        if entries is None:
            entries = self._partitions[partition] = {}
        return entries

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        """The blobs of ``keys`` in ``partition`` (None: no state), from memory or RocksDB."""
        with self._lock:
            get = self._entries(partition).get
            found = [get(k) for k in keys]
            changes = self._changes
        missing = [i for i, blob in enumerate(found) if blob is None]
        if missing:
            db, wanted = self._db(partition), [keys[i] for i in missing]
            loaded = []
            for start in range(0, len(wanted), GET_CHUNK):  # RocksDB holds the interpreter lock per call
                loaded += db.get(wanted[start : start + GET_CHUNK])
            with self._lock:
                entries = self._entries(partition)
                keep = changes == self._changes
                for i, blob in zip(missing, loaded, strict=True):
                    if blob is not None:
                        found[i] = blob
                        if keep:
                            self._put(entries, keys[i], blob)
                self._trim()
        return found

    def get(self, partition: int, key: bytes, open_db: bool = True) -> bytes | None:
        """One blob, as ``get_many``; ``open_db``: as ``_db``."""
        with self._lock:
            blob = self._entries(partition).get(key)
            changes = self._changes
        if blob is None:
            blob = self._db(partition, open_db).get(key)
            if blob is not None:
                with self._lock:
                    entries = self._entries(partition)
                    if changes == self._changes:
                        self._put(entries, key, blob)
                        self._trim()
        return blob

    def stored(self, partition: int, items: Iterable[tuple[bytes, bytes]]) -> None:
        """``items`` were written to RocksDB: keep them as the current blobs."""
        with self._lock:
            entries = self._entries(partition)
            self._changes += 1
            for key, blob in items:
                self._put(entries, key, blob)
            self._trim()

    def invalidate(self, partition: int, keys: Iterable[bytes]) -> None:
        """Someone else wrote these keys: forget them."""
        with self._lock:
            self._changes += 1
            entries = self._partitions.get(partition)
            if not entries:
                return
            for key in keys:
                old = entries.pop(key, None)
                if old is not None:
                    self._bytes -= len(old) + len(key) + _ENTRY_OVERHEAD

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._partitions = {}
        self._bytes = 0
        self._changes += 1

    def _put(self, entries: dict[bytes, bytes], key: bytes, blob: bytes) -> None:
        old = entries.pop(key, None)  # re-inserted at the end: the newest
        if old is not None:
            self._bytes -= len(old) + len(key) + _ENTRY_OVERHEAD
        entries[key] = blob
        self._bytes += len(blob) + len(key) + _ENTRY_OVERHEAD

    def _trim(self) -> None:
        """Past the bound, drop the oldest quarter of every partition's entries until under 3/4 of it."""
        if self._bytes <= self.max_bytes:
            return
        target = self.max_bytes * 3 // 4
        while self._bytes > target and any(self._partitions.values()):
            for entries in self._partitions.values():
                for key in list(islice(entries, max(1, len(entries) // 4))):
                    blob = entries.pop(key)
                    self._bytes -= len(blob) + len(key) + _ENTRY_OVERHEAD
