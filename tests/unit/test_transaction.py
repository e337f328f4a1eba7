"""The partition transaction (``stream.transaction``) without a broker: in-memory fakes of the changelog,
the side topics, the store, the consumer and the fence; a crash or a rebalance at every step.

Two kinds of tests. Step tests run one transaction and stop it at each step (an exception, or the
fence moving) and check what must hold there: nothing acked before the changelog is durable, nothing
written when a batch is abandoned before producing, side records durable before a checkpoint covers
them. The lifetime test runs a whole simulated worker (fetch from committed offsets, transactions,
forwarded events through a ``.by-entity`` log, batches folded on a thread as the worker folds them, a
rebalance or an expulsion while a batch is folded, recovery of the store from the changelog after every
crash) under hypothesis-chosen crashes and rebalances, and compares the final online values with the
brute-force oracle: no event lost, none counted twice.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aggregations import Aggregation, Entity, FeatureSet
from aggregations.bookkeeping import CHECKPOINT_KEY, Checkpoint, home_partition
from stream.envelope import open_envelope
from stream.forwarding import origin_header
from stream.processor import BatchProcessor
from stream.reading import FeatureReader
from stream.transaction import BatchKind, PartitionTransaction, Ports, TxState
from tests import oracle

NOW = 1_800_000_000_000
HOUR = 3_600_000
PARTITIONS = 3
FS = FeatureSet(
    name="pay",
    entities=[Entity("user_id")],
    timestamp_key="ts",
    source="pay",
    schema={"user_id": "string", "ts": "timestamp", "amount": "float64"},
    aggregations=[Aggregation("amount", ["count", "sum", "last"], windows=["1d"])],
)


class Crash(Exception):
    """The process died here (raised by a fake, or by the step hook)."""


# --- fakes -----------------------------------------------------------------------------------------------


class Log:
    """An append-only topic: partition -> list of (key, value, headers); sends are delivered at once."""

    def __init__(self):
        self.records: dict[int, list[tuple[bytes | None, bytes, list]]] = {}

    def append(self, partition: int, key, value, headers=None) -> int:
        records = self.records.setdefault(partition, [])
        records.append((key, value, headers or []))
        return len(records) - 1

    def end(self, partition: int) -> int:
        return len(self.records.get(partition, []))


async def _done(value):
    return value


class FakeChangelog:
    def __init__(self, log: Log, crash_at_send: int | None = None):
        self.log, self.sends, self.crash_at_send = log, 0, crash_at_send

    async def send_batch(self, records, partition):
        """Records reach the log one by one, so a crash can leave any prefix of a batch (a superset of what
        Kafka, which appends a record batch whole, can leave)."""
        last = -1
        for key, value in records:
            self.sends += 1
            if self.crash_at_send is not None and self.sends >= self.crash_at_send:
                raise Crash(f"changelog send {self.sends}")
            last = self.log.append(partition, key, value)
        return _done(last)


class FakeSide:
    """Dead letters, late events and forwards, each to its own log."""

    def __init__(self, dlq: Log, late: Log, forward: Log, crash: str | None = None):
        self.dlq, self.late, self.forward, self.crash = dlq, late, forward, crash  # crash: "send" or "ack"
        self.confirmed = 0

    async def send(self, result):
        """Hands the records over; they reach their logs only when the returned awaitable is awaited (the
        broker's acknowledgement), so a crash before that loses them, as a real crash may."""
        if self.crash == "send" and (result.dead or result.late or result.forward):
            raise Crash("side send")
        return self._confirm(result)

    async def _confirm(self, result):
        if self.crash == "ack" and (result.dead or result.late or result.forward):
            raise Crash("died waiting for the side records' acknowledgement")
        for e in result.dead:
            self.dlq.append(0, e.key, e.value)
        for e in result.late:
            self.late.append(0, e.key, e.value)
        for e, origin in zip(result.forward, result.forward_origins, strict=True):
            self.forward.append(home_partition(e.key, PARTITIONS), e.key, e.value, [origin_header(*origin)])
        self.confirmed += 1


class FakeStore:
    """The local tile store: partition -> {key: value}, plus the persisted changelog offset."""

    def __init__(self):
        self.data: dict[int, dict[bytes, bytes]] = {}
        self.persisted: dict[int, int] = {}
        self.crash_on_write = False
        self.crash_partway = False  # a crash between two RocksDB write batches of one store write

    def load(self, partition, keys):
        db = self.data.get(partition, {})
        return [db.get(k) for k in keys]

    def write(self, partition, items, changelog_offset):
        if self.crash_on_write:
            raise Crash("store write")
        if self.crash_partway:  # ``TableStore`` writes in batches, the persisted offset (and checkpoint) last
            self.data.setdefault(partition, {}).update(items[: len(items) // 2])
            raise Crash("between two store write batches")
        self.data.setdefault(partition, {}).update(items)
        self.persisted[partition] = changelog_offset

    def recover(self, changelog: Log) -> None:
        """Faust's table recovery: apply the changelog from the persisted offset on."""
        for partition, records in changelog.records.items():
            start = self.persisted.get(partition, -1) + 1
            db = self.data.setdefault(partition, {})
            for offset in range(start, len(records)):
                key, value, _ = records[offset]
                db[key] = value
                self.persisted[partition] = offset


class FakeSource:
    def __init__(self):
        self.acked: list = []
        self.released: list = []

    def ack(self, messages):
        self.acked.extend(messages)

    def release(self, messages):
        self.released.extend(messages)


@dataclass
class FakeFence:
    generation: int = 1
    flowing: bool = True

    def may_start(self, token):
        return self.flowing and self.generation == token

    def owns(self, token):
        return self.generation == token


def message(partition: int, offset: int, event: dict | bytes, key: bytes | None = None, headers=None):
    value = event if isinstance(event, bytes) else json.dumps(event).encode()
    return SimpleNamespace(partition=partition, offset=offset, key=key, value=value, headers=headers or [],
                           generation_id=1)  # fmt: skip


@dataclass
class Rig:
    changelog: Log = field(default_factory=Log)
    dlq: Log = field(default_factory=Log)
    late: Log = field(default_factory=Log)
    forward: Log = field(default_factory=Log)
    store: FakeStore = field(default_factory=FakeStore)
    source: FakeSource = field(default_factory=FakeSource)
    fence: FakeFence = field(default_factory=FakeFence)

    def ports(self, crash_at_send=None, side_crash=None) -> Ports:
        return Ports(self.fence, FakeChangelog(self.changelog, crash_at_send),
                     FakeSide(self.dlq, self.late, self.forward, side_crash), self.store, self.source)  # fmt: skip


def run(tx: PartitionTransaction):
    return asyncio.run(tx.run())


def transaction(rig: Rig, messages, kind=BatchKind.SOURCE, on_step=None, executor=None, **ports) -> PartitionTransaction:
    processor = BatchProcessor(FS, "pay", partitions=PARTITIONS)
    return PartitionTransaction(processor, kind, messages, 1, rig.ports(**ports), lambda: NOW, on_step,
                                executor=executor)  # fmt: skip


#: The worker's way: each batch folded on a thread of its own (one at a time), the other steps on the loop.
FOLD_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-fold")


def at_home(user: str) -> int:
    return home_partition(user.encode(), PARTITIONS)


def mixed_batch(partition: int) -> list:
    """A valid event at home, one misplaced (forwarded), one late, one not JSON: every kind of outcome."""
    home_user = next(f"u{i}" for i in range(100) if at_home(f"u{i}") == partition)
    away_user = next(f"u{i}" for i in range(100) if at_home(f"u{i}") != partition)
    return [
        message(partition, 0, {"user_id": home_user, "ts": NOW - 1000, "amount": 1.0}),
        message(partition, 1, {"user_id": away_user, "ts": NOW - 2000, "amount": 2.0}),
        message(partition, 2, {"user_id": home_user, "ts": NOW - 40 * 86_400_000, "amount": 3.0}),
        message(partition, 3, b"{not json"),
    ]


# --- one transaction, every step ------------------------------------------------------------------------


def test_a_complete_transaction_writes_changelog_then_store_then_acks():
    rig = Rig()
    batch = mixed_batch(0)
    outcome = run(transaction(rig, batch))
    assert outcome.state is TxState.COMPLETE
    assert (outcome.result.applied, len(outcome.result.late), outcome.result.rejected) == (1, 1, 1)
    assert len(outcome.result.forward) == 1 and rig.forward.end(at_home(json.loads(batch[1].value)["user_id"])) == 1
    assert rig.source.acked == batch and not rig.source.released
    records = rig.changelog.records[0]
    assert records[-1][0] == CHECKPOINT_KEY and Checkpoint.decode(records[-1][1]).source == 4
    assert rig.store.persisted[0] == len(records) - 1  # the store reaches the changelog's last record
    assert rig.store.data[0] == {k: v for k, v, _ in records}


STEPS = [TxState.STARTED, TxState.PROCESSED, TxState.PREPARED, TxState.STORED, TxState.COMPLETE]


@pytest.mark.parametrize("step", [TxState.PROCESSED, TxState.PREPARED, TxState.STORED])
def test_a_crash_after_each_step_never_acks_what_is_not_durable(step):
    rig = Rig()
    batch = mixed_batch(0)

    def crash(state):
        if state is step:
            raise Crash(state.value)

    with pytest.raises(Crash):
        run(transaction(rig, batch, on_step=crash))
    assert not rig.source.acked and rig.source.released == batch
    if step is TxState.PROCESSED:  # nothing was produced yet
        assert not rig.changelog.records and not rig.dlq.records
    else:  # the changelog is complete and its side records with it
        assert Checkpoint.decode(rig.changelog.records[0][-1][1]).source == 4 and rig.dlq.end(0) == 1
    if step is not TxState.STORED:
        assert not rig.store.data


@pytest.mark.parametrize("send", [1, 2])  # the state write, then the checkpoint
def test_a_crash_while_producing_leaves_no_checkpoint_ahead_of_its_side_records(send):
    rig = Rig()
    with pytest.raises(Crash):
        run(transaction(rig, mixed_batch(0), crash_at_send=send))
    checkpoints = [v for k, v, _ in rig.changelog.records.get(0, []) if k == CHECKPOINT_KEY]
    assert not checkpoints or rig.dlq.end(0) == 1
    assert not rig.source.acked and not rig.store.data


@pytest.mark.parametrize("when", ["send", "ack"])
def test_no_checkpoint_is_written_before_the_side_records_are_acknowledged(when):
    rig = Rig()
    with pytest.raises(Crash):
        run(transaction(rig, mixed_batch(0), side_crash=when))
    assert not any(k == CHECKPOINT_KEY for k, _, _ in rig.changelog.records.get(0, []))
    assert not rig.source.acked


def test_a_store_failure_releases_the_batch():
    rig = Rig()
    rig.store.crash_on_write = True
    batch = mixed_batch(0)
    with pytest.raises(Crash):
        run(transaction(rig, batch))
    assert rig.source.released == batch and not rig.source.acked


@pytest.mark.parametrize("moment", ["before start", "while processing"])
def test_a_rebalance_before_producing_abandons_the_batch_with_nothing_written(moment):
    rig = Rig()
    batch = mixed_batch(0)
    if moment == "before start":
        rig.fence.flowing = False

    def rebalance(state):
        if state is TxState.PROCESSED:
            rig.fence.flowing = False

    outcome = run(transaction(rig, batch, on_step=rebalance))
    assert outcome.state is TxState.ABANDONED
    assert not rig.changelog.records and not rig.dlq.records and not rig.forward.records
    assert rig.source.released == batch and not rig.source.acked


def test_a_rebalance_under_way_while_the_changelog_is_written_lets_the_batch_complete():
    # Flow stops when a revocation starts; the revocation waits for this batch (Faust's wait_empty).
    rig = Rig()

    def revoke(state):
        if state is TxState.PREPARED:
            rig.fence.flowing = False

    outcome = run(transaction(rig, mixed_batch(0), on_step=revoke))
    assert outcome.state is TxState.COMPLETE and rig.store.data and rig.source.acked


def test_expelled_from_the_group_while_the_changelog_is_written_stores_and_acks_nothing():
    rig = Rig()

    def expel(state):
        if state is TxState.PREPARED:
            rig.fence.generation = 2

    batch = mixed_batch(0)
    outcome = run(transaction(rig, batch, on_step=expel))
    assert outcome.state is TxState.ABANDONED
    assert not rig.store.data and not rig.source.acked and rig.source.released == batch


def test_a_replay_below_the_checkpoint_is_skipped_whole_so_side_records_are_not_repeated():
    rig = Rig()
    batch = mixed_batch(0)
    run(transaction(rig, batch))
    before = (rig.dlq.end(0), rig.late.end(0), sum(rig.forward.end(p) for p in range(PARTITIONS)))
    again = run(transaction(rig, batch))  # redelivered after a crash that came after the checkpoint
    assert again.state is TxState.COMPLETE and again.skipped == len(batch) and again.result.applied == 0
    assert (rig.dlq.end(0), rig.late.end(0), sum(rig.forward.end(p) for p in range(PARTITIONS))) == before


def test_a_batch_that_begins_past_its_checkpoint_is_abandoned_with_the_gap():
    # Messages fetched before a seek and delivered after it can skip records this state never applied.
    rig = Rig()
    run(transaction(rig, mixed_batch(0)))  # checkpoint of partition 0: 4
    user = next(f"u{i}" for i in range(100) if at_home(f"u{i}") == 0)
    ahead = [message(0, o, {"user_id": user, "ts": NOW - 1000, "amount": 1.0}) for o in (40, 41)]
    changelog_before = rig.changelog.end(0)
    outcome = run(transaction(rig, ahead))
    assert outcome.state is TxState.ABANDONED and outcome.gaps == {0: (4, 40)}
    assert rig.changelog.end(0) == changelog_before and rig.source.released[-2:] == ahead
    # Once the offsets in between prove gone from the topic, the caller accepts the gap.
    processor = BatchProcessor(FS, "pay", partitions=PARTITIONS)
    accepted = PartitionTransaction(processor, BatchKind.SOURCE, ahead, 1, rig.ports(), lambda: NOW, accept_gaps={0: 40})
    assert run(accepted).state is TxState.COMPLETE
    assert Checkpoint.decode(rig.store.data[0][CHECKPOINT_KEY]).source == 42


def test_forwarded_copies_in_one_batch_count_once():
    rig = Rig()
    user = "u1"
    home = at_home(user)
    origin = ((home + 1) % PARTITIONS, 7)
    event = {"user_id": user, "ts": NOW - 5000, "amount": 4.0}
    copies = [message(home, i, event, user.encode(), [origin_header(*origin)]) for i in range(3)]
    outcome = run(transaction(rig, copies, kind=BatchKind.FORWARDED))
    assert (outcome.result.applied, outcome.result.duplicates) == (1, 2)
    assert Checkpoint.decode(rig.store.data[home][CHECKPOINT_KEY]).by_entity == 3


# --- a whole worker's life under crashes and rebalances ---------------------------------------------------


@dataclass
class SimWorker:
    """One worker over a source log and a ``.by-entity`` log, with durable changelog, store and commits."""

    source: Log
    batch: int
    rig: Rig = field(default_factory=Rig)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)

    def pending(self, topic: str, log: Log) -> list[tuple[int, int]]:
        return [(p, self.committed.get((topic, p), 0)) for p in range(PARTITIONS) if self.committed.get((topic, p), 0) < log.end(p)]

    def fetch(self, topic: str, log: Log, partition: int, skip: int = 0) -> list:
        """The next batch from the committed offset; ``skip`` > 0 delivers it that far ahead, as messages
        fetched before a seek and delivered after it would be."""
        start = self.committed.get((topic, partition), 0) + skip
        out = []
        for offset in range(start, min(log.end(partition), start + self.batch)):
            key, value, headers = log.records[partition][offset]
            out.append(SimpleNamespace(partition=partition, offset=offset, key=key, value=value, headers=headers,
                                       generation_id=1, topic=topic))  # fmt: skip
        return out

    def commit(self, topic: str) -> None:
        """Faust commits the highest contiguous acked offset + 1 (here: acks come in order)."""
        for m in self.rig.source.acked:
            if m.topic == topic:
                key = (topic, m.partition)
                self.committed[key] = max(self.committed.get(key, 0), m.offset + 1)
        self.rig.source.acked = [m for m in self.rig.source.acked if m.topic != topic]

    def restart(self) -> None:
        """kill -9 and start again: uncommitted acks are gone; the store recovers from the changelog."""
        self.rig.source = FakeSource()
        self.rig.fence = FakeFence()
        self.rig.store.crash_on_write = self.rig.store.crash_partway = False
        self.rig.store.recover(self.rig.changelog)


class StrikeWhileFolding(Executor):
    """The fold thread, with ``strike`` run on the event loop while the fold is under way (the fold waits for
    it): a rebalance or an expulsion that happens while the worker's thread folds a batch."""

    def __init__(self, strike):
        self.strike = strike

    def submit(self, fn, /, *args, **kwargs):
        loop, struck = asyncio.get_running_loop(), threading.Event()

        def strike_on_loop():
            self.strike()
            struck.set()

        def fold():
            loop.call_soon_threadsafe(strike_on_loop)
            assert struck.wait(10), "the event loop did not run while the batch was folded"
            return fn(*args, **kwargs)

        return FOLD_THREAD.submit(fold)


def simulate(events: list[tuple[int, dict | bytes]], faults: list[tuple[int, str]], batch: int) -> SimWorker:
    """A worker's life: batches folded on a thread as the worker folds them, faults at every step (a
    ``folding:*`` fault strikes on the event loop while the thread folds)."""
    source = Log()
    for partition, event in events:
        value = event if isinstance(event, bytes) else json.dumps(event).encode()
        source.append(partition, None, value)
    w = SimWorker(source, batch)
    faults = dict(faults)
    n = 0
    for _round in range(10_000):
        work = [("src", source, p) for p, _ in w.pending("src", source)]
        work += [("fwd", w.rig.forward, p) for p, _ in w.pending("fwd", w.rig.forward)]
        if not work:
            return w
        topic, log, partition = work[n % len(work)]
        fault = faults.pop(n, None)
        # Delivered ahead of the committed offset (fetched before a seek, delivered after it): only a
        # partition this state has processed before can be told from a fresh start, by its checkpoint.
        ahead = fault == "fetch:skip-ahead" and w.committed.get((topic, partition), 0) > 0
        if fault == "fetch:skip-ahead" and not ahead:
            faults.setdefault(n + 1, fault)  # not applicable here: try it at the next transaction
        messages = w.fetch(topic, log, partition, skip=3 if ahead else 0)
        if not messages:
            messages = w.fetch(topic, log, partition)
        n += 1
        kind = BatchKind.SOURCE if topic == "src" else BatchKind.FORWARDED

        def hook(state, fault=fault):
            if fault is None or not fault.startswith(state.value):
                return
            if fault.endswith(":crash"):
                raise Crash(fault)
            if fault.endswith(":expel"):
                w.rig.fence.generation += 1  # expelled: the group moved on without this worker
            else:
                w.rig.fence.flowing = False  # a rebalance: this worker keeps its partitions afterwards

        if fault == "started:rebalance":
            w.rig.fence.flowing = False

        ports = {}
        if fault == "send:crash":
            ports["crash_at_send"] = 2
        if fault == "store:crash":
            w.rig.store.crash_on_write = True
        if fault == "store:crash-partway":
            w.rig.store.crash_partway = True
        if fault == "side-ack:crash":
            ports["side_crash"] = "ack"
        executor = FOLD_THREAD
        if fault == "folding:rebalance":
            executor = StrikeWhileFolding(lambda: setattr(w.rig.fence, "flowing", False))
        elif fault == "folding:expel":
            executor = StrikeWhileFolding(lambda: setattr(w.rig.fence, "generation", w.rig.fence.generation + 1))
        try:
            outcome = run(transaction(w.rig, messages, kind=kind, on_step=hook, executor=executor, **ports))
        except Crash:
            w.restart()
            continue
        w.commit(topic)
        if outcome.state is TxState.ABANDONED or not w.rig.fence.flowing:
            # The rebalance ends (the worker rejoins, keeping its partitions): replay from the committed offsets.
            w.rig.fence = FakeFence()
            w.rig.source = FakeSource()
    raise AssertionError("the simulated worker did not drain its input")


FAULTS = st.sampled_from(
    ["started:rebalance", "processed:crash", "processed:rebalance", "prepared:crash", "prepared:rebalance",
     "prepared:expel", "stored:crash", "complete:crash", "send:crash", "store:crash", "store:crash-partway",
     "side-ack:crash",
     "fetch:skip-ahead", "folding:rebalance", "folding:expel"]
)  # fmt: skip

users = st.sampled_from([f"u{i}" for i in range(6)])
events_strategy = st.lists(
    st.tuples(
        st.integers(0, PARTITIONS - 1),
        st.one_of(
            st.builds(lambda u, age, a: {"user_id": u, "ts": NOW - age, "amount": a},
                      users, st.integers(1, 30 * HOUR), st.sampled_from([1.0, 2.5, 4.0, None])),
            st.just(b"\xff\xfe not json"),
            st.builds(lambda u: {"user_id": u, "ts": NOW - 45 * 86_400_000, "amount": 1.0}, users),  # late
        ),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(  # an expelled transaction's state and checkpoint reach the changelog, the store never; then a state
    # written from that older store and a crash before its checkpoint: the forwarded event must still count.
    events=[(0, b"\xff\xfe not json"), (0, b"\xff\xfe not json"),
            (1, {"user_id": "u2", "ts": NOW - 30 * HOUR, "amount": 1.0}), (2, {"user_id": "u1", "ts": NOW - 1, "amount": 1.0}),
            (1, {"user_id": "u1", "ts": NOW - 30 * HOUR, "amount": 1.0})],
    faults=[(0, "started:rebalance"), (3, "prepared:expel"), (5, "send:crash")],
    batch=1,
)  # fmt: skip
@given(events=events_strategy, faults=st.lists(st.tuples(st.integers(0, 12), FAULTS), max_size=10),
       batch=st.integers(1, 7))  # fmt: skip
def test_a_worker_life_with_crashes_and_rebalances_counts_every_event_once(events, faults, batch):
    w = simulate(events, faults, batch)
    valid = [(p, o, e) for o, (p, e) in enumerate(events) if isinstance(e, dict)]
    # Per-partition offsets as the source log assigned them.
    offsets: dict[int, int] = {}
    rows = []
    for partition, event in events:
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        if isinstance(event, dict) and event["ts"] >= NOW - 40 * 86_400_000:
            rows.append({"key": event["user_id"], "ts": event["ts"], "seq": (offset, partition), "value": event["amount"]})
    rows.sort(key=lambda r: r["seq"])
    for i, r in enumerate(rows):
        r["seq"] = i
    reader = FeatureReader(FS)
    for user in {e["user_id"] for _, _, e in valid}:
        blob = w.rig.store.data.get(at_home(user), {}).get(user.encode())
        (got,) = reader.read([blob], NOW)
        for op in ("count", "sum", "last"):
            want = oracle.feature_at(rows, user, NOW, op, 86_400_000, 3_600_000)
            value = got[f"amount_{op}_1d"]
            if op == "sum":
                assert value == pytest.approx(want), (user, op)
            else:
                assert value == want, (user, op, value, want)
    # Every bad record reached the dead-letter topic (at least once; more only after a crash between the
    # side records' acknowledgement and the checkpoint).
    bad = sum(1 for _, e in events if isinstance(e, bytes))
    dead = {(b["partition"], b["offset"]) for b in (open_envelope(v) for _, v, _ in w.rig.dlq.records.get(0, []))}
    assert len(dead) == bad
