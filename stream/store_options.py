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
recovery writes (active and standby) skip it too.

Faust never closes a partition's database (its ``close()`` calls are commented out): it drops the handle, and
RocksDB flushes unlogged memtables only when a database is really closed. So a partition is flushed when Faust
revokes it and when the store stops: a graceful stop or hand-over leaves the state on disk, and the next owner or
restart replays no changelog it already had.
"""

from __future__ import annotations

import logging

import rocksdict

log = logging.getLogger(__name__)

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

    revoke_partitions = Store.revoke_partitions

    def _revoke_partitions(self, table, tps):
        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                flush(self._dbs.get(tp.partition))
        revoke_partitions(self, table, tps)

    Store.revoke_partitions = _revoke_partitions

    stop = Store.stop

    async def _stop(self) -> None:
        for db in list(self._dbs.values()):
            flush(db)
        await stop(self)

    Store.stop = _stop
    _INSTALLED = True


def flush(db) -> None:
    """Write a partition's memtables to disk (unlogged writes are otherwise lost when the process ends)."""
    if isinstance(db, rocksdict.Rdict):
        try:
            db.flush(wait=True)
        except Exception as exc:  # a closed or failing database: recovery replays the changelog instead
            log.warning("could not flush a table partition before closing it: %s", exc)
