"""The state cache under real threads and a real RocksDB: readers on other threads (the views, a batch's
load off the event loop) never get a state older than one RocksDB held before their read began, and when
the writers stop the cache holds exactly what RocksDB holds.

The writers take the two paths the worker has: a transaction's store write (RocksDB, then ``stored``) and
Faust's changelog recovery (``invalidate``, RocksDB, ``invalidate``, as ``recovery_guard`` does), and a
rebalance (a new consumer generation) now and then. Every value is a per-key version number, so "older"
is a comparison, and a stale fill that survived would show as a read going backwards.
"""

from __future__ import annotations

import random
import sys
import threading
from types import SimpleNamespace

import rocksdict

from stream.state_cache import StateCache

KEYS = [b"k%02d" % i for i in range(24)]
PARTITIONS = (0, 1)


class _Data:
    def __init__(self, path):
        self.dbs = {
            p: rocksdict.Rdict(str(path / f"p{p}"), options=rocksdict.Options(raw_mode=True))
            for p in PARTITIONS
        }

    def _db_for_partition(self, partition):
        return self.dbs[partition]


def test_readers_on_other_threads_never_see_a_state_older_than_rocksdb_held(tmp_path):
    data = _Data(tmp_path)
    app = SimpleNamespace(consumer_generation_id=1)
    cache = StateCache(SimpleNamespace(data=data, app=app), max_bytes=600)  # small: trims run too
    committed: dict[tuple[int, bytes], int] = {}  # the newest version RocksDB holds, per key
    lock = threading.Lock()  # orders a version's RocksDB write with its entry in ``committed``
    stop = threading.Event()
    failures: list[str] = []

    def write(rng: random.Random, writer: int) -> None:
        version = 0
        while not stop.is_set():
            partition, keys = rng.choice(PARTITIONS), rng.sample(KEYS, rng.randint(1, 6))
            version += 1
            stamp = version * 10 + writer  # distinct per writer, increasing per writer
            with lock:
                items = [(k, b"%d" % max(stamp, committed.get((partition, k), 0) + 1)) for k in keys]
                if rng.random() < 0.5:  # a transaction: RocksDB, then the cache
                    batch = rocksdict.WriteBatch(raw_mode=True)
                    for key, value in items:
                        batch.put(key, value)
                    data.dbs[partition].write(batch)
                    for key, value in items:
                        committed[(partition, key)] = int(value)
                    cache.stored(partition, items)
                else:  # Faust's recovery through recovery_guard's hook
                    cache.invalidate(partition, keys)
                    for key, value in items:
                        data.dbs[partition][key] = value
                        committed[(partition, key)] = int(value)
                    cache.invalidate(partition, keys)
            if rng.random() < 0.01:
                app.consumer_generation_id += 1  # a rebalance

    def read(rng: random.Random) -> None:
        while not stop.is_set() and not failures:
            partition, keys = rng.choice(PARTITIONS), rng.sample(KEYS, rng.randint(1, 8))
            with lock:
                floor = [committed.get((partition, k), 0) for k in keys]
            if len(keys) == 1 and rng.random() < 0.5:
                got = [cache.get(partition, keys[0])]
            else:
                got = cache.get_many(partition, keys)
            for key, low, blob in zip(keys, floor, got, strict=True):
                seen = 0 if blob is None else int(blob)
                if seen < low:
                    failures.append(
                        f"partition {partition} key {key!r}: read version {seen}, RocksDB held {low}"
                    )

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads as often as possible: interleavings, not luck
    try:
        threads = [threading.Thread(target=write, args=(random.Random(w), w)) for w in (1, 2)]
        threads += [threading.Thread(target=read, args=(random.Random(100 + r),)) for r in range(3)]
        for t in threads:
            t.start()
        stop.wait(3.0)
        stop.set()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(previous)
    assert not failures, failures[:5]
    for partition in PARTITIONS:
        entries = cache._partitions.get(partition, {})
        for key, blob in entries.items():
            assert blob == data.dbs[partition][key], (partition, key)
    assert sum(len(e) for e in cache._partitions.values()) > 0  # the cache was in use, not always empty
    for db in data.dbs.values():
        db.close()
