"""The worker's glue to Faust, aiokafka and RocksDB, without a broker: the batched drain loop
(``stream.batch_drain``), the transaction's ports (``stream.ports``, with a real RocksDB), the agent's
chunking, and the seek fix of ``stream.faust_fixes``. Faust's objects are stand-ins with the attributes
the glue reads; the broker-backed behaviour is covered by tests/integration and tests/e2e."""

from __future__ import annotations

import asyncio
from collections import defaultdict, namedtuple
from types import SimpleNamespace

import numpy as np
import pytest
import rocksdict

from stream import batch_drain, faust_fixes
from stream.envelope import Envelope, open_envelope
from stream.ports import ConsumerSource, GenerationFence, KafkaSideOutputs, TableStore, release
from stream.processor import BatchResult

TOPIC = "pay"
TP = namedtuple("TP", "topic partition")


class FakeMessage(SimpleNamespace):
    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other


def msg(partition: int, offset: int, generation: int = 1, topic: str = TOPIC) -> FakeMessage:
    tp = TP(topic, partition)
    return FakeMessage(topic=topic, partition=partition, offset=offset, tp=tp, generation_id=generation,
                       tracked=False, key=b"k", value=b"{}", headers=[], timestamp=1.0)  # fmt: skip


class FakeFlow:
    def __init__(self, active=True):
        self.active = active

    def is_active(self):
        return self.active


def fake_consumer(app=None):
    return SimpleNamespace(
        app=app, _unacked_messages=set(), _read_offset=defaultdict(lambda: None), acked=[],
        ack=lambda m: None,
    )  # fmt: skip


def fake_app(generation=1, flowing=True):
    async def ebb():
        return None

    return SimpleNamespace(
        flow_control=FakeFlow(flowing), consumer_generation_id=generation,
        producer=SimpleNamespace(buffer=SimpleNamespace(wait_until_ebb=ebb)),
    )  # fmt: skip


# --- batch_drain ---------------------------------------------------------------------------------------


def test_stale_messages_of_a_fetch_are_released_and_their_read_offsets_forgotten():
    app = fake_app(generation=2)
    consumer = fake_consumer(app)
    old, new = [msg(0, 5, generation=1), msg(0, 6, generation=1)], [msg(1, 9, generation=2)]
    for m in old + new:
        m.tracked = True
        consumer._unacked_messages.add(m)
    consumer._read_offset[TP(TOPIC, 0)] = 6
    kept = batch_drain._drop_stale(consumer, app, TOPIC, old + new)
    assert kept == new
    assert consumer._unacked_messages == set(new) and not any(m.tracked for m in old)
    assert consumer._read_offset[TP(TOPIC, 0)] is None


def test_a_whole_fetch_is_released_while_a_rebalance_is_under_way():
    app = fake_app(flowing=False)
    consumer = fake_consumer(app)
    batch = [msg(0, 1), msg(0, 2)]
    assert batch_drain._drop_stale(consumer, app, TOPIC, batch) == []


def test_deliver_releases_the_batches_not_handed_over_when_cancelled():
    app = fake_app()
    consumer = fake_consumer(app)
    first, second = [msg(0, 1)], [msg(1, 1, topic="pay.by-entity")]
    for m in first + second:
        consumer._unacked_messages.add(m)
    seen = []

    async def slow(messages):
        seen.append(messages)
        await asyncio.sleep(10)

    async def scenario():
        task = asyncio.ensure_future(batch_drain.deliver(consumer, app, {TOPIC: first, "pay.by-entity": second},
                                                         {TOPIC: slow, "pay.by-entity": slow}))  # fmt: skip
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert seen == [first]  # the in-flight batch is its own transaction's to ack or release
    assert consumer._unacked_messages == set(first)


def test_the_drain_loop_delivers_each_topic_of_a_fetch_as_one_batch_and_tracks_it():
    app = fake_app()
    app.topics = SimpleNamespace(acks_enabled_for=lambda topic: True)
    app.monitor = SimpleNamespace(stream_inbound_time={})
    fetched = [(TP(TOPIC, 0), msg(0, 0)), (TP(TOPIC, 1), msg(1, 0)), (TP("other", 0), msg(0, 0, topic="other")),
               (TP(TOPIC, 0), msg(0, 1))]  # fmt: skip
    delivered, passed_on = [], []
    stopped = asyncio.Event()

    async def handler(messages):
        delivered.append([(m.partition, m.offset) for m in messages])
        assert all(m.tracked and m in consumer._unacked_messages for m in messages)
        stopped.set()  # one fetch is enough

    async def getmany(timeout):
        for item in fetched:
            yield item

    async def callback(message):
        passed_on.append(message)

    async def wait_first(*coros):
        await coros[0]
        for c in coros[1:]:
            c.close()

    async def nothing(*args, **kwargs):
        return None

    consumer = SimpleNamespace(
        app=app, callback=callback, getmany=getmany, _stopped=stopped, _read_offset=defaultdict(lambda: None),
        diag=SimpleNamespace(set_flag=lambda f: None, unset_flag=lambda f: None), _commit_every=None,
        _unacked_messages=set(), _n_acked=0, sleep=asyncio.sleep, should_stop=False, _add_gap=nothing,
        commit=nothing, wait_first=wait_first, suspend_flow=SimpleNamespace(wait=nothing),
        consumer_stopped_errors=(), log=SimpleNamespace(info=print, exception=print),
    )  # fmt: skip
    app.producer.buffer.wait_until_ebb = nothing
    batch_drain.register(app, TOPIC, handler)
    asyncio.run(batch_drain._drain_messages(consumer, SimpleNamespace(_stopped=asyncio.Event())))
    assert delivered == [[(0, 0), (1, 0), (0, 1)]]
    assert [m.topic for m in passed_on] == ["other"]  # unregistered topics still go Faust's way
    assert consumer._read_offset[TP(TOPIC, 0)] == 1
    # Faust's live-lock check sees the delivered partitions as processing (no false "has not started" error)
    assert set(app.monitor.stream_inbound_time) == {TP(TOPIC, 0), TP(TOPIC, 1)}


# --- ports -------------------------------------------------------------------------------------------


class FakeTableData:
    offset_key = b"__faust\0offset__"

    def __init__(self, path):
        self.path = path
        self.dbs: dict[int, rocksdict.Rdict] = {}

    def _db_for_partition(self, partition):
        if partition not in self.dbs:
            options = rocksdict.Options(raw_mode=True)
            self.dbs[partition] = rocksdict.Rdict(str(self.path / f"p{partition}"), options=options)
        return self.dbs[partition]


def test_the_table_store_writes_blobs_and_changelog_offset_in_one_rocksdb_batch(tmp_path):
    data = FakeTableData(tmp_path)
    store = TableStore(SimpleNamespace(data=data))
    store.write(2, [(b"a", b"1"), (b"b", b"2")], changelog_offset=41)
    assert store.load(2, [b"a", b"b", b"c"]) == [b"1", b"2", None]
    assert data._db_for_partition(2)[data.offset_key] == b"41"
    for db in data.dbs.values():
        db.close()


def test_the_table_store_writes_in_chunks_with_the_offset_in_the_last(tmp_path, monkeypatch):
    """A store write is several RocksDB batches (so the web server's thread gets the interpreter lock in
    between); only the last holds the changelog offset, so a crash between two leaves the persisted offset
    where recovery must resume, and every chunk is in the cache once written."""
    from stream import ports

    monkeypatch.setattr(ports, "STORE_CHUNK", 2)
    data = FakeTableData(tmp_path)
    real = data._db_for_partition(0)
    writes = []

    class Recording:
        def write(self, batch):
            writes.append((len(batch), real.get(data.offset_key)))
            real.write(batch)

        def get(self, keys):
            return real.get(keys)

    data.dbs[0] = Recording()
    store = TableStore(SimpleNamespace(data=data))
    items = [(b"k%d" % i, b"v%d" % i) for i in range(5)]
    store.write(0, items, changelog_offset=9)
    assert writes == [(2, None), (2, None), (2, None)]  # 2 + 2 + (1 and the offset); the offset only at the end
    assert real[data.offset_key] == b"9"
    assert store.load(0, [k for k, _ in items]) == [v for _, v in items]
    store.write(0, items[:2], changelog_offset=10)  # a chunk exactly full: the offset is still in the last one
    assert writes[3:] == [(3, b"9")]
    store.write(0, [], changelog_offset=11)  # nothing but the offset
    assert writes[4:] == [(1, b"10")] and real[data.offset_key] == b"11"
    real.close()


def test_release_untracks_and_forgets_read_offsets_and_ack_goes_to_faust():
    acked = []
    consumer = fake_consumer()
    consumer.ack = acked.append
    batch = [msg(0, 3), msg(0, 4)]
    for m in batch:
        m.tracked = True
        consumer._unacked_messages.add(m)
    consumer._read_offset[TP(TOPIC, 0)] = 4
    source = ConsumerSource(SimpleNamespace(consumer=consumer))
    source.ack(batch[:1])
    assert acked == batch[:1]
    release(consumer, batch)
    assert not consumer._unacked_messages and consumer._read_offset[TP(TOPIC, 0)] is None


def test_the_generation_fence_follows_faust_and_the_live_coordinator():
    coordinator = SimpleNamespace(generation=3)
    thread = SimpleNamespace(_ensure_consumer=lambda: SimpleNamespace(_coordinator=coordinator))
    app = fake_app(generation=3)
    app.consumer = SimpleNamespace(_thread=thread)
    fence = GenerationFence(app)
    assert fence.may_start(3) and fence.owns(3) and not fence.may_start(2)
    app.flow_control.active = False  # a revocation under way: no new batch, the one in flight finishes
    assert not fence.may_start(3) and fence.owns(3)
    coordinator.generation = -1  # expelled (heartbeat failed): the group moved on
    assert not fence.owns(3)




def test_a_side_record_too_large_for_its_topic_becomes_a_dead_letter_without_payload():
    from aiokafka.errors import MessageSizeTooLargeError

    sent = []

    async def send(topic, value, key=None, partition=None, headers=None):
        sent.append((topic, key, value, partition, headers))
        if topic == "pay.late" and len(value) > 100:
            raise MessageSizeTooLargeError("too large")
        future = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(offset=len(sent)))
        return future

    app = SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: SimpleNamespace(send=send)))
    side = KafkaSideOutputs(app, TOPIC, "pay.dlq", "pay.late", "pay.by-entity", partitions=3)
    from stream.envelope import envelope

    result = BatchResult()
    result.late = [Envelope(b"u1", envelope("late: old", TOPIC, 1, 7, b"x" * 500))]
    result.forward = [Envelope(b"u2", b'{"user_id":"u2"}')]
    result.forward_origins = [(0, 9)]

    async def scenario():
        confirm = await side.send(result)
        await confirm

    asyncio.run(scenario())
    topics = [s[0] for s in sent]
    assert topics == ["pay.late", "pay.by-entity", "pay.dlq"]
    forwarded = sent[1]
    assert forwarded[4] == [("featurestream-origin", b"0:9")]
    dead = open_envelope(sent[2][2])
    assert dead["payload"] is None and dead["partition"] == 1 and dead["offset"] == 7
    assert "too large for pay.late" in dead["reason"]


# --- faust_fixes -------------------------------------------------------------------------------------


def test_partitions_without_a_committed_offset_are_sought_to_the_beginning():
    faust_fixes.apply()
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    sought = []

    class Consumer:
        async def seek_to_committed(self):
            return {TP("pay", 0): None, TP("pay", 1): 0, TP("pay", 2): 17, TP("changelog", 0): None}

        async def seek_to_beginning(self, *tps):
            sought.extend(tps)

        def assignment(self):
            return {TP("pay", 0), TP("pay", 1), TP("pay", 2), TP("changelog", 0)}

    recovery = SimpleNamespace(active_tps=set(), standby_tps=set(), active_offsets={}, standby_offsets={})
    tables = SimpleNamespace(changelog_topics={"changelog"}, recovery=recovery, changelog_queue=asyncio.Queue())
    thread = SimpleNamespace(_ensure_consumer=lambda: Consumer(), app=SimpleNamespace(tables=tables))

    async def call_thread(fn):
        return await fn()

    thread.call_thread = call_thread
    committed = asyncio.run(AIOKafkaConsumerThread.seek_to_committed(thread))
    assert committed[TP("pay", 2)] == 17
    assert sorted(sought) == [TP("pay", 0), TP("pay", 1)]  # the changelog is positioned by table recovery


def test_changelog_partitions_fetched_past_what_recovery_received_are_sought_back():
    """Faust drops a fetch that arrives while flow is off and seeks back to committed offsets, which changelog
    partitions do not have: each is put back to the first record its recovery has not received."""
    cl = "app-set-changelog"
    active, standby, idle, queued_tp = TP(cl, 0), TP(cl, 1), TP(cl, 2), TP(cl, 3)
    recovery = SimpleNamespace(
        active_tps={active, queued_tp}, standby_tps={standby},
        active_offsets={active: 471, queued_tp: 10}, standby_offsets={standby: -1},
    )  # fmt: skip
    queue = asyncio.Queue()
    for offset in (11, 12):  # received by the consumer, waiting for recovery: not fetched again
        queue.put_nowait(SimpleNamespace(message=SimpleNamespace(tp=queued_tp, offset=offset)))
    tables = SimpleNamespace(changelog_topics={cl}, recovery=recovery, changelog_queue=queue)
    expected = faust_fixes.recovery_positions(tables, {active, standby, idle, queued_tp, TP("pay", 0)})
    assert expected == {active: 472, standby: 0, queued_tp: 13}  # idle: not positioned by recovery yet

    class Consumer:
        positions = {active: 500, standby: 0, queued_tp: 13}
        sought: dict = {}

        def assignment(self):
            return set(self.positions)

        async def position(self, tp):
            return self.positions[tp]

        def seek(self, tp, offset):
            self.sought[tp] = offset

    consumer = Consumer()
    asyncio.run(faust_fixes.reposition_changelogs(consumer, expected))
    assert consumer.sought == {active: 472}  # 28 records dropped by Faust: fetched again


def test_the_changelog_queue_keeps_records_when_flow_resumes_while_already_on():
    """Faust's recovery resumes flow again after the standby partitions started fetching: records queued by
    then were fetched from the position this recovery set and must reach recovery, not be cleared."""
    faust_fixes.apply()
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    async def scenario() -> list[tuple[int, int]]:
        flow = FlowControlEvent(initially_suspended=True)
        changelog = FlowControlQueue(flow_control=flow, clear_on_resume=True)
        stream = FlowControlQueue(flow_control=flow, clear_on_resume=True)
        faust_fixes.keep_changelog_events(SimpleNamespace(tables=SimpleNamespace(changelog_queue=changelog)))
        sizes = []
        for queue in (changelog, stream):
            queue.put_nowait("fetched before the rebalance")
        flow.resume()  # after a suspension: both hold stale records, both are cleared
        sizes.append((changelog.qsize(), stream.qsize()))
        for queue in (changelog, stream):
            queue.put_nowait("fetched after this recovery's seek")
        flow.resume()  # already on: the changelog queue keeps its records, Faust's streams do as before
        sizes.append((changelog.qsize(), stream.qsize()))
        flow.suspend()
        flow.resume()  # the next rebalance: cleared again
        sizes.append((changelog.qsize(), stream.qsize()))
        return sizes

    assert asyncio.run(scenario()) == [(0, 0), (1, 0), (0, 0)]


# --- recovery guard ----------------------------------------------------------------------------------


def test_recovery_never_moves_an_entitys_state_backwards(tmp_path):
    import json as _json

    from aggregations.bookkeeping import CHECKPOINT_KEY, Checkpoint
    from aggregations.codec import EntityStateCodec
    from aggregations.loading import load_registry
    from stream.processor import BatchProcessor, SourceRecord
    from stream.recovery_guard import install

    tx = load_registry("examples/transactions/features.py").feature_set("transactions")
    now = 1_800_000_000_000
    processor = BatchProcessor(tx, "transactions")
    blobs: dict = {}

    def state_after(offset: int) -> bytes:
        value = _json.dumps({"user_id": "u1", "ts": now - 1000 - offset, "amount": 1.0}).encode()
        (write,) = processor.process([SourceRecord(0, offset, b"u1", value)], now, lambda p, ks: [blobs.get(k) for k in ks]).writes
        blobs[b"u1"] = write.value
        return write.value

    old, new = state_after(5), state_after(9)  # new has applied offset 9, old 5
    data = FakeTableData(tmp_path)
    data._db_for_partition(0)[b"u1"] = new
    data._db_for_partition(0)[CHECKPOINT_KEY] = Checkpoint(10).encode()
    applied = []
    data.apply_changelog_batch = lambda batch, to_key, to_value: applied.extend(e.message.value for e in batch)
    table = SimpleNamespace(data=data, _to_key=None, _to_value=None)
    install(table, EntityStateCodec(tx))

    def event(key, value, offset):
        return SimpleNamespace(message=SimpleNamespace(partition=0, key=key, value=value, offset=offset,
                                                       tp=TP("changelog", 0)))  # fmt: skip

    table.apply_changelog_batch([event(b"u1", old, 100), event(CHECKPOINT_KEY, Checkpoint(6).encode(), 101),
                                 event(CHECKPOINT_KEY, Checkpoint(12).encode(), 102)])  # fmt: skip
    assert applied == [Checkpoint(12).encode()]  # the late state and the older checkpoint are skipped
    applied.clear()
    newer = state_after(15)
    table.apply_changelog_batch([event(b"u1", newer, 103)])
    assert applied == [newer]
    for db in data.dbs.values():
        db.close()


def test_murmur2_matches_kafka_and_the_vectorized_hash_matches_it():
    from aggregations.bookkeeping import home_partitions, murmur2, murmur2_many

    # org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed 32-bit results)
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829, b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
             b"abc": 479470107}  # fmt: skip
    for key, signed in cases.items():
        assert murmur2(key) == signed & 0xFFFFFFFF
    rng = np.random.default_rng(4)
    keys = [rng.bytes(int(n)) for n in rng.integers(0, 40, 3000)] + list(cases)
    assert murmur2_many(keys).tolist() == [murmur2(k) for k in keys]
    assert home_partitions(keys, 7).tolist() == [(murmur2(k) & 0x7FFFFFFF) % 7 for k in keys]


def test_the_state_cache_answers_what_rocksdb_holds(tmp_path):
    from stream.state_cache import StateCache

    data = FakeTableData(tmp_path)
    app = SimpleNamespace(consumer_generation_id=1)
    table = SimpleNamespace(data=data, app=app)
    store = TableStore(table)
    cache = StateCache.of(table)
    assert store.cache is cache
    store.write(0, [(b"a", b"1")], changelog_offset=1)
    data._db_for_partition(0)[b"b"] = b"2"
    assert store.load(0, [b"a", b"b", b"c"]) == [b"1", b"2", None]  # a written through, b filled from RocksDB
    data._db_for_partition(0)[b"a"] = b"recovered"  # another writer: Faust's recovery, which invalidates
    assert store.load(0, [b"a"]) == [b"1"]
    cache.invalidate(0, [b"a"])
    assert store.load(0, [b"a"]) == [b"recovered"]
    data._db_for_partition(0)[b"b"] = b"3"
    app.consumer_generation_id = 2  # a rebalance: everything is read again
    assert cache.get(0, b"b") == b"3"
    # A fill read from RocksDB before another writer's write and invalidation is not kept (a batch loads off
    # the event loop while recovery may write on it).
    real_db = data._db_for_partition(0)

    class WrittenMeanwhile:
        def get(self, keys):
            found = real_db.get(keys)
            real_db[b"d"] = b"new"
            cache.invalidate(0, [b"d"])
            return found

    real_db[b"d"] = b"old"
    data.dbs[0] = WrittenMeanwhile()
    assert store.load(0, [b"d"]) == [b"old"]  # the read itself answers what RocksDB held when asked
    data.dbs[0] = real_db
    assert store.load(0, [b"d"]) == [b"new"]  # but it was not kept
    # More missing keys than one multi-get takes: read in chunks, answered in order.
    from stream.state_cache import GET_CHUNK

    many = [b"m%d" % i for i in range(2 * GET_CHUNK + 7)]
    for i, key in enumerate(many):
        if i % 3:
            real_db[key] = b"%d" % i
    assert store.load(0, many) == [b"%d" % i if i % 3 else None for i in range(len(many))]
    small = StateCache(SimpleNamespace(data=data), max_bytes=1000)
    small.stored(1, [(bytes([i]), b"x" * 100) for i in range(50)])
    assert small._bytes <= 1000 and small.get(1, bytes([49])) == b"x" * 100  # the newest kept
    for db in data.dbs.values():
        db.close()


def test_the_state_cache_size_is_the_workers_setting(monkeypatch):
    from featurestream.cli import build_parser
    from stream import state_cache
    from stream.state_cache import StateCache

    monkeypatch.setenv("FEATURESTREAM_STATE_CACHE_MB", "64")
    args = build_parser().parse_args(["worker"])
    assert args.state_cache_mb == 64
    monkeypatch.setattr(state_cache, "_max_bytes", state_cache.DEFAULT_MAX_BYTES)
    StateCache.set_default_max_bytes(args.state_cache_mb * 1024 * 1024)
    assert StateCache(SimpleNamespace()).max_bytes == 64 * 1024 * 1024
    assert StateCache(SimpleNamespace(), max_bytes=10).max_bytes == 10
    with pytest.raises(ValueError, match=">= 0"):
        StateCache.set_default_max_bytes(-1)


def test_table_partitions_are_written_without_a_write_ahead_log(tmp_path):
    from pathlib import Path

    from faust.stores.rocksdb import RocksDBOptions, Store

    from stream import store_options

    store_options.install()
    store = SimpleNamespace(use_rocksdict=True, partition_path=lambda p: tmp_path / f"p{p}", read_only=False,
                            rocksdb_options=RocksDBOptions())  # fmt: skip
    db = Store._open_for_partition(store, 0)
    batch = rocksdict.WriteBatch(raw_mode=True)
    for i in range(2000):
        batch.put(f"k{i}".encode(), b"v" * 500)
    db.write(batch)
    db.put(b"offset", b"1")  # Faust's own writes (recovery's persisted offset) skip the log too
    assert db[b"k7"] == b"v" * 500
    logs = [f for f in Path(tmp_path / "p0").iterdir() if f.suffix == ".log"]
    assert logs and all(f.stat().st_size == 0 for f in logs)
    db.close()


def _fetcher_with_a_retrying_fetch():
    """A real aiokafka ``Fetcher`` (its ``close`` and nothing else) with one fetch task sleeping in its retry
    backoff, as when the broker is gone; built without a client."""
    from aiokafka.consumer.fetcher import Fetcher

    fetcher = Fetcher.__new__(Fetcher)
    fetcher._fetch_task = asyncio.ensure_future(asyncio.sleep(3600))
    fetcher._fetch_waiters = set()
    fetcher._pending_tasks = {asyncio.ensure_future(asyncio.sleep(3600)), asyncio.ensure_future(asyncio.sleep(3600))}
    return fetcher


def test_closing_a_fetcher_with_a_fetch_in_flight_finishes_instead_of_raising():
    from aiokafka.consumer.fetcher import Fetcher

    async def close_with(close):
        fetcher = _fetcher_with_a_retrying_fetch()
        pending = list(fetcher._pending_tasks)
        await asyncio.sleep(0)
        try:
            await close(fetcher)
        except asyncio.CancelledError:
            return "raised", all(t.done() for t in pending)
        return "closed", all(t.done() for t in pending)

    faust_fixes.apply()
    assert asyncio.run(close_with(Fetcher.close.__wrapped_close__))[0] == "raised"  # aiokafka's own close
    assert asyncio.run(close_with(Fetcher.close)) == ("closed", True)


def test_a_cancelled_fetcher_close_is_still_cancelled():
    from aiokafka.consumer.fetcher import Fetcher

    faust_fixes.apply()

    async def cancel_the_close():
        fetcher = _fetcher_with_a_retrying_fetch()
        closing = asyncio.ensure_future(Fetcher.close(fetcher))
        await asyncio.sleep(0)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        return True

    assert asyncio.run(cancel_the_close())
