"""The tables' RocksDB partitions are written without RocksDB's write-ahead log.

The changelog topic is the durable copy of a table; the local RocksDB partition is a materialization of it
that table recovery brings forward from its persisted changelog offset (written with the data, in the same
write batch by the transaction, after the data by Faust's recovery). Without a write-ahead log, a crash loses
what the memtables held and nothing else, and the memtables reach disk in the order they were written, so the
partition after a crash is an earlier state of itself, offset included: recovery replays the changelog from
there, as after any crash. A write costs about half as much (no log append). Kafka Streams keeps its state
stores the same way.

Every writer of a partition must skip the log, or a logged write after unlogged ones would survive a crash that
the earlier ones did not: the options are set on each partition's database when Faust opens it, so Faust's own
recovery writes (active and standby) skip it too. RocksDB flushes the memtables when a database is closed.
"""

from __future__ import annotations

import rocksdict

_INSTALLED = False


def install() -> None:
    """Open every Faust RocksDB partition with unlogged writes (idempotent, process-wide)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from faust.stores.rocksdb import Store

    opened = Store._open_for_partition

    def _open_for_partition(self, partition: int):
        db = opened(self, partition)
        if getattr(self, "use_rocksdict", True) and isinstance(db, rocksdict.Rdict):
            options = rocksdict.WriteOptions()
            options.disable_wal = True
            db.set_write_options(options)
        return db

    Store._open_for_partition = _open_for_partition
    _INSTALLED = True
