"""A table partition written without RocksDB's write-ahead log (``stream.store_options``) and killed with SIGKILL
reopens as an earlier state of itself: its persisted changelog offset is the last one a write reached disk with,
and its blobs are those of that offset plus at most a first part of the next transaction's write batches (a
transaction is written in chunks, its offset in the last; the changelog holds all of it), so table recovery,
replaying the changelog from that offset, brings it forward consistently.

A real RocksDB database opened as Faust opens a table partition, in a child process that writes transactions
through ``stream.ports.TableStore`` (chunks made small, so that a transaction takes several) with small
memtables, so that some reach disk before the kill and some do not.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import rocksdict

REPO_ROOT = Path(__file__).resolve().parents[2]
OFFSET_KEY = b"__faust\0offset__"
KEYS_PER_BATCH, KEY_SPACE, BLOB_BYTES = 200, 1000, 300
CHUNK = 64  # records per write batch of the writer: 4 per transaction

WRITER = r"""
import os, signal, sys
from types import SimpleNamespace
import rocksdict
from faust.stores.rocksdb import RocksDBOptions, Store
from stream import store_options
from tests.e2e.test_store_crash import OFFSET_KEY, batch_items

from stream import ports
from tests.e2e.test_store_crash import CHUNK

store_options.install()
path, kill_at = sys.argv[1], int(sys.argv[2])
store = SimpleNamespace(use_rocksdict=True, partition_path=lambda p: path, read_only=False,
                        rocksdb_options=RocksDBOptions(write_buffer_size=256 * 1024, max_write_buffer_number=2))
db = Store._open_for_partition(store, 0)
ports.STORE_CHUNK = CHUNK
table_store = ports.TableStore(SimpleNamespace(data=SimpleNamespace(offset_key=OFFSET_KEY, _db_for_partition=lambda p: db)))
for n in range(1, kill_at + 1):
    table_store.write(0, batch_items(n), n)
os.kill(os.getpid(), signal.SIGKILL)
"""


def batch_items(n: int) -> list[tuple[bytes, bytes]]:
    """Transaction n's blobs: keys spread over the key space (later transactions overwrite earlier ones')."""
    return [(b"k%d" % ((n * 37 + k * 11) % KEY_SPACE), b"%d:" % n + b"x" * BLOB_BYTES) for k in range(KEYS_PER_BATCH)]


def state_after(n: int) -> dict[bytes, bytes]:
    state: dict[bytes, bytes] = {}
    for m in range(1, n + 1):
        state.update(batch_items(m))
    return state


def test_a_partition_killed_without_its_write_ahead_log_reopens_as_an_earlier_state_of_itself(tmp_path):
    persisted = []
    for kill_at in (5, 120, 400):
        path = tmp_path / f"p{kill_at}"
        child = subprocess.run([sys.executable, "-c", WRITER, str(path), str(kill_at)], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert child.returncode == -9, child.stderr
        db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
        try:
            stored = dict(db.items())
        finally:
            db.close()
        offset = stored.pop(OFFSET_KEY, None)
        n = int(offset) if offset is not None else 0
        assert 0 <= n <= kill_at
        states = [state_after(n)]  # that offset's state, then with each first part of the next transaction
        following = batch_items(n + 1)
        for end in range(CHUNK, len(following), CHUNK):
            states.append({**states[-1], **dict(following[end - CHUNK : end])})
        assert stored in states, f"killed after {kill_at}: the blobs are not those of offset {n} (or a part after)"
        persisted.append(n)
    # Not vacuous: the larger runs left memtables on disk (an offset) and lost the newest ones (no log).
    assert persisted[-1] > 0 and persisted[-1] < 400, persisted


CLOSER = r"""
import asyncio, logging, os, signal, sys
from types import SimpleNamespace
import rocksdict
from faust.stores.rocksdb import RocksDBOptions, Store
from stream import store_options
from tests.e2e.test_store_crash import OFFSET_KEY, batch_items

store_options.install()
path, how, n_tx = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = SimpleNamespace(use_rocksdict=True, partition_path=lambda p: path, read_only=False, logger=logging.getLogger(),
                        rocksdb_options=RocksDBOptions(write_buffer_size=256 * 1024, max_write_buffer_number=2))
db = Store._open_for_partition(store, 0)
store._dbs = {0: db}
for n in range(1, n_tx + 1):
    batch = rocksdict.WriteBatch(raw_mode=True)
    for key, value in batch_items(n):
        batch.put(key, value)
    batch.put(OFFSET_KEY, str(n).encode())
    db.write(batch)
if how == "stop":
    asyncio.run(Store.stop(store))
elif how == "revoke":
    table = SimpleNamespace(changelog_topic=SimpleNamespace(topics={"t-changelog"}))
    from faust.types import TP
    Store.revoke_partitions(store, table, {TP("t-changelog", 0)})
# Faust drops its handle without closing it; this process still holds one (as a reader or a cache may), and ends
# without RocksDB's close: only what was flushed is on disk.
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_partition_revoked_or_stopped_is_on_disk_whole(tmp_path):
    """Faust drops a partition's handle without closing it; the store flushes it on revocation and on stop, so
    a graceful stop or hand-over leaves the last transaction on disk (nothing to replay on the next start)."""
    n_tx = 60  # more than one memtable, and the newest transactions in an unflushed one
    for how in ("stop", "revoke"):
        path = tmp_path / how
        child = subprocess.run([sys.executable, "-c", CLOSER, str(path), how, str(n_tx)], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert child.returncode == -9, child.stderr
        db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
        try:
            stored = dict(db.items())
        finally:
            db.close()
        assert stored.pop(OFFSET_KEY, None) == str(n_tx).encode(), how
        assert stored == state_after(n_tx), how
