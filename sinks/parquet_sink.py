"""The Parquet sink: a feature set's source topic -> its offline dataset, effectively once.

One sink per FeatureSet, in its own consumer group (``featurestream-sink-{name}``), so it reads the
topic independently of the online worker. It polls records (kafka-python's group consumer, each fetch
parsed by aiokafka's compiled record reader: ``compiled_records``), buffers them per Kafka partition and,
every ``flush_events`` events or ``flush_seconds`` seconds:

1. decodes and validates the payloads with ``EventValidator`` (the same rules as the online worker;
   invalid events are counted and skipped here, the worker owns the dead-letter topic);
2. writes the valid ones durably and atomically (``writer.write_batch``: one file per partition and
   event date, fsynced, renamed into place);
3. only then commits the consumed offsets to Kafka.

A crash after 2 and before 3 leaves rows written but not committed. When a partition is (re)assigned,
the sink reads which offsets from the committed position on are already in the dataset
(``writer.written_offsets``) and skips exactly those, so nothing is written twice and nothing is lost.
With several sink processes in one group, a revocation waits for an in-flight write of the revoked
partitions and drops their unwritten buffers; the new owner re-reads them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aggregations import EventValidator, FeatureSet
from aggregations.naming import DEFAULT_APP_ID

from . import kafka_fixes
from .compiled_records import use_compiled_records
from .layout import dataset_dir
from .writer import claim_source, remove_temps, write_batch, written_offsets

log = logging.getLogger(__name__)

DEFAULT_FLUSH_EVENTS = 50_000
DEFAULT_FLUSH_SECONDS = 5.0
RESUBSCRIBE_AFTER_S = 10.0


def default_group(fs: FeatureSet, app_id: str = DEFAULT_APP_ID) -> str:
    """The sink's consumer group for a feature set in the deployment ``app_id``."""
    return f"{app_id}-sink-{fs.name}"


@dataclass
class SinkStats:
    """Counters of one sink run, per record: each record this run settles (flushes) counts once, in exactly
    one of ``written``, ``invalid`` or ``duplicates``, and ``consumed`` is their sum.

    A record read again within the run is not counted again: records dropped from a buffer by a rebalance
    count when they are re-read and flushed, and records re-read after this run flushed them (a commit that
    did not land before a rebalance) are skipped uncounted.
    """

    consumed: int = 0  # records settled: written + invalid + duplicates
    written: int = 0  # valid events written to Parquet
    invalid: int = 0  # events that failed decoding or validation (skipped)
    duplicates: int = 0  # records already in the dataset when read (e.g. written before a restart)
    files: int = 0
    flushes: int = 0
    commit_failures: int = 0
    poll_failures: int = 0  # polls that raised (broker unreachable) and were retried
    reasons: dict[str, int] = field(default_factory=dict)  # invalid events by reason (first 100 reasons)

    def summary(self) -> str:
        return (
            f"consumed {self.consumed}, written {self.written} in {self.files} files, invalid {self.invalid}, "
            f"already written {self.duplicates}"
        )


@dataclass
class _Buffer:
    """Records of one partition read since the last flush: the new ones, and how many were read in all."""

    payloads: list = field(default_factory=list)
    offsets: list = field(default_factory=list)
    arrivals: list = field(default_factory=list)
    read: int = 0  # records read into this buffer, new or already in the dataset

    def add(self, records, offsets: np.ndarray | None = None) -> None:
        """Append records (anything with ``value``, ``offset`` and ``timestamp``), a column at a time;
        ``offsets``: their offsets when the caller already holds them as an array."""
        self.payloads += [r.value for r in records]
        self.offsets += [r.offset for r in records] if offsets is None else offsets.tolist()
        self.arrivals += [r.timestamp for r in records]


@dataclass
class _Known:
    """Offsets of one partition already in the dataset, from where consumption (re)started."""

    written: np.ndarray

    def mask_new(self, offsets: np.ndarray) -> np.ndarray:
        if len(self.written) == 0:
            return np.ones(len(offsets), dtype=bool)
        return ~np.isin(offsets, self.written)


class ParquetSink:
    """Consumes ``topic`` (default ``fs.source``) and appends its valid events to ``<data_dir>/<fs.name>``.

    ``before_commit`` (tests) is called with the offsets about to be committed, after the files are durable.
    """

    def __init__(
        self,
        fs: FeatureSet,
        data_dir: str | Path,
        bootstrap: str,
        *,
        group: str | None = None,
        topic: str | None = None,
        flush_events: int = DEFAULT_FLUSH_EVENTS,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        max_future: str = "1h",
        consumer_config: dict | None = None,
        before_commit: Callable[[dict[int, int]], None] | None = None,
    ):
        if flush_events < 1 or flush_seconds <= 0:
            raise ValueError("flush_events must be >= 1 and flush_seconds > 0")
        self.fs = fs
        self.root = dataset_dir(data_dir, fs.name)
        self.bootstrap = bootstrap
        self.group = group or default_group(fs)
        self.topic = topic or fs.source
        self.flush_events = flush_events
        self.flush_seconds = flush_seconds
        self.validator = EventValidator(fs, max_future=max_future)
        self.consumer_config = dict(consumer_config or {})
        self.before_commit = before_commit
        self.stats = SinkStats()
        self._stop = threading.Event()
        self._lock = threading.RLock()  # buffers and per-partition state; shared with the rebalance listener
        self._buffers: dict[int, _Buffer] = {}
        self._known: dict[int, _Known] = {}
        self._to_commit: dict[int, int] = {}  # partition -> next offset, consumed since the last commit
        self._pending = 0
        self._generation = 0  # bumped by every assignment change
        self._unflushed_from: dict[int, int] = {}  # partition -> first offset accepted since the last flush
        self._seek_back: dict[int, int] = {}  # partition -> offset to re-read from (its buffer was dropped)
        self._settled: dict[int, int] = {}  # partition -> offset after the last record this run flushed

    # -- lifecycle ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to flush, commit and return (thread-safe, e.g. from a signal handler)."""
        self._stop.set()

    connect_retry_s = 1.0
    poll_timeout_ms = 200  # how long one poll waits for records (or for a rebalance in progress)

    def _connect(self, consumer_class, config: dict, timeout_s: float):
        """A consumer once the broker answers: retried (with a warning each second) for ``timeout_s``, as the
        worker does, so a sink started a moment before its broker does not exit."""
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return consumer_class(**config)
            except KafkaError as exc:
                if time.monotonic() > deadline or self._stop.is_set():
                    raise
                log.warning("sink %s: waiting for Kafka at %s: %s", self.fs.name, self.bootstrap, exc)
                self._stop.wait(self.connect_retry_s)

    def run(self, once: bool = False, assignment_timeout_s: float = 60.0) -> SinkStats:
        """Consume until ``stop()`` (or, with ``once``, until the end of the topic as of assignment)."""
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        kafka_fixes.apply()
        claim_source(self.root, self.topic)
        config = {
            "bootstrap_servers": self.bootstrap.split(","),
            "group_id": self.group,
            "client_id": f"featurestream-sink-{self.fs.name}",
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "allow_auto_create_topics": False,
            "max_poll_records": max(500, min(self.flush_events, 10_000)),
            # A killed sink's partitions go to its successor after this long (heartbeats run on
            # kafka-python's IO thread, so a long flush does not expire the session).
            "session_timeout_ms": 10_000,
            "heartbeat_interval_ms": 2_000,
        }
        config.update(self.consumer_config)
        consumer = self._connect(KafkaConsumer, config, assignment_timeout_s)
        use_compiled_records(consumer)
        started = time.monotonic()
        last_flush = started
        end_offsets: dict | None = None
        try:
            self._subscribe(consumer, once, assignment_timeout_s)
            log.info("sink %s: topic %r -> %s (group %s)", self.fs.name, self.topic, self.root, self.group)
            unassigned_since = time.monotonic()
            while not self._stop.is_set():
                with self._lock:
                    generation = self._generation
                try:
                    polled = consumer.poll(timeout_ms=self.poll_timeout_ms)
                except KafkaError as exc:
                    if once:
                        raise
                    # The broker went away mid-poll (a coordinator or metadata call that gave up): nothing
                    # was consumed, so poll again once it answers; buffered events flush when polls resume.
                    self.stats.poll_failures += 1
                    log.warning("sink %s: poll failed (%s); retrying", self.fs.name, exc)
                    self._stop.wait(self.connect_retry_s)
                    continue
                with self._lock:
                    if self._generation != generation and polled:
                        # The assignment changed while we polled: these records may predate it. Rewind
                        # and take them again from the next poll, under the current assignment.
                        self._rewind(consumer, polled)
                        polled = {}
                    if self._seek_back:
                        self._seek_dropped(consumer, polled)
                    for tp, records in polled.items():
                        self._accept(tp.partition, records)
                now = time.monotonic()
                due = self._to_commit and now - last_flush >= self.flush_seconds
                if self._pending >= self.flush_events or due:
                    self._flush(consumer)
                    last_flush = now
                if once:
                    assigned = consumer.assignment()
                    if not assigned:
                        if now - started > assignment_timeout_s:
                            raise TimeoutError(
                                f"sink {self.fs.name}: no partition of topic {self.topic!r} assigned after "
                                f"{assignment_timeout_s:.0f}s (is another sink of group {self.group!r} running?)"
                            )
                        if now - unassigned_since > RESUBSCRIBE_AFTER_S:
                            # Still nothing assigned: subscribing again makes the group rebalance (a safety
                            # net, logged so that it is visible whenever it is needed).
                            log.info(
                                "sink %s: no partition assigned yet; rejoining group %s",
                                self.fs.name,
                                self.group,
                            )
                            consumer.unsubscribe()
                            self._subscribe(consumer, once, assignment_timeout_s)
                            unassigned_since = time.monotonic()
                        continue
                    if end_offsets is None or set(end_offsets) != assigned:
                        end_offsets = consumer.end_offsets(sorted(assigned))
                    if all(consumer.position(tp) >= end for tp, end in end_offsets.items()):
                        break
            self._flush(consumer)
        finally:
            consumer.close(autocommit=False)
        log.info("sink %s: %s", self.fs.name, self.stats.summary())
        return self.stats

    def _subscribe(self, consumer, once: bool, timeout_s: float) -> None:
        """Subscribe, then wait until the consumer's metadata holds the topic's partitions.

        Order matters: kafka-python snapshots the subscribed topics' partitions on each metadata update, and
        a group leader that assigns before any update since ``subscribe`` records an empty snapshot; the
        next update then differs from it and forces a second rebalance a moment after the first, dropping
        and re-reading whatever was polled in between. Loading metadata after subscribing makes the first
        assignment final.
        """
        consumer.subscribe([self.topic], listener=_Listener(self))
        self._await_topic(consumer, once, timeout_s)

    def _await_topic(self, consumer, once: bool, timeout_s: float) -> None:
        """Wait until the topic exists: each check is a metadata fetch (``topics()``), which also updates the
        subscription's partition snapshot."""
        deadline = time.monotonic() + timeout_s
        warned = False
        while self.topic not in consumer.topics() or not consumer.partitions_for_topic(self.topic):
            if self._stop.is_set():
                return
            if once and time.monotonic() > deadline:
                raise TimeoutError(f"sink {self.fs.name}: topic {self.topic!r} does not exist")
            if not warned:
                log.warning("sink %s: waiting for topic %r to exist", self.fs.name, self.topic)
                warned = True
            time.sleep(1.0)

    # -- consuming ---------------------------------------------------------------------------------

    def _accept(self, partition: int, records) -> None:
        """Buffer polled records of one partition, skipping offsets already in the dataset."""
        if not records:
            return
        offsets = np.array([r.offset for r in records], dtype=np.int64)
        self._to_commit[partition] = max(self._to_commit.get(partition, 0), int(offsets.max()) + 1)
        self._unflushed_from.setdefault(partition, int(offsets.min()))
        settled = self._settled.get(partition, 0)
        if offsets.min() < settled:  # flushed by this run already (its commit did not land): skip, uncounted
            keep = offsets >= settled
            records = [r for r, k in zip(records, keep.tolist(), strict=True) if k]
            offsets = offsets[keep]
            if not records:
                return
        known = self._known.get(partition)
        if known is None:  # first records since this partition was assigned
            removed = remove_temps(self.root, partition)
            known = _Known(written_offsets(self.root, partition, int(offsets.min())))
            self._known[partition] = known
            if removed or len(known.written):
                log.info(
                    "sink %s: partition %d resumes at offset %d; %d offsets from there are already written%s",
                    self.fs.name,
                    partition,
                    int(offsets.min()),
                    len(known.written),
                    f", removed {removed} temporary files" if removed else "",
                )
        new = known.mask_new(offsets)
        buffer = self._buffers.setdefault(partition, _Buffer())
        buffer.read += len(records)
        if not new.all():
            records = [r for r, keep in zip(records, new.tolist(), strict=True) if keep]
            offsets = offsets[new]
        buffer.add(records, offsets)
        self._pending += len(records)

    def _seek_dropped(self, consumer, polled) -> None:
        """Re-read buffers dropped by a rebalance that left the partition with us.

        kafka-python may keep the fetch position of a partition that stays assigned across a
        rebalance; without this seek its dropped records would never be written, and a later commit
        of that partition would pass over them.
        """
        from kafka.structs import TopicPartition

        assigned = consumer.assignment()
        for partition, offset in self._seek_back.items():
            tp = TopicPartition(self.topic, partition)
            if tp in assigned:
                consumer.seek(tp, offset)
                polled.pop(tp, None)
        self._seek_back.clear()

    def _rewind(self, consumer, polled) -> None:
        assigned = consumer.assignment()
        for tp, records in polled.items():
            if records and tp in assigned:
                consumer.seek(tp, min(r.offset for r in records))

    def _flush(self, consumer) -> None:
        """Write every buffered event durably, then commit what was consumed."""
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata, TopicPartition

        with self._lock:  # a revocation waits until these files are in place
            buffers, self._buffers, self._pending = self._buffers, {}, 0
            commits, self._to_commit = self._to_commit, {}
            self._unflushed_from = {}
            written = self.stats.written
            for partition, buffer in sorted(buffers.items()):
                self._write(partition, buffer)
            for partition, end in commits.items():  # every record read up to there is settled now
                self._settled[partition] = max(self._settled.get(partition, 0), end)
            if buffers:
                self.stats.flushes += 1
                log.debug(
                    "sink %s: flushed %d events; %s",
                    self.fs.name,
                    self.stats.written - written,
                    self.stats.summary(),
                )
        if not commits:
            return
        if self.before_commit is not None:
            self.before_commit(dict(commits))
        offsets = {TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1) for p, o in commits.items()}
        try:
            consumer.commit(offsets)
        except KafkaError as exc:
            # The files are durable: a restarted or new owner skips them. Retry ours at the next flush.
            self.stats.commit_failures += 1
            log.warning("sink %s: offset commit failed (%s); will retry", self.fs.name, exc)
            with self._lock:
                for p, o in commits.items():
                    if p in self._known:  # still ours
                        self._to_commit[p] = max(self._to_commit.get(p, 0), o)

    def _write(self, partition: int, buffer: _Buffer) -> None:
        """Write the buffer's new events; count each record it read once (written, invalid or duplicate)."""
        self.stats.consumed += buffer.read
        self.stats.duplicates += buffer.read - len(buffer.payloads)
        if not buffer.payloads:
            return
        now_ms = int(time.time() * 1000)
        frame, positions, rejected = self.validator.decode_frame(buffer.payloads, now_ms)
        self.stats.invalid += len(rejected)
        for bad in rejected:
            if bad.reason in self.stats.reasons or len(self.stats.reasons) < 100:
                self.stats.reasons[bad.reason] = self.stats.reasons.get(bad.reason, 0) + 1
        if rejected:
            log.debug(
                "sink %s: %d invalid events in partition %d, e.g. %s",
                self.fs.name,
                len(rejected),
                partition,
                rejected[0].reason,
            )
        if not positions:
            return
        positions = np.asarray(positions, dtype=np.int64)
        offsets = np.asarray(buffer.offsets, dtype=np.int64)[positions]
        arrivals = np.asarray(buffer.arrivals, dtype=np.int64)[positions]
        arrivals = np.where(arrivals >= 0, arrivals, now_ms)  # a record without a timestamp arrived now
        files = write_batch(self.fs, self.root, partition, frame, offsets, arrivals)
        self.stats.written += len(positions)
        self.stats.files += len(files)

    def _forget(self, partitions) -> None:
        """Partitions taken away: drop their unwritten buffers and state (the next owner re-reads them)."""
        with self._lock:
            self._generation += 1
            for tp in partitions:
                buffer = self._buffers.pop(tp.partition, None)
                if buffer is not None:
                    self._pending -= len(buffer.payloads)
                self._known.pop(tp.partition, None)
                self._to_commit.pop(tp.partition, None)
                start = self._unflushed_from.pop(tp.partition, None)
                if start is not None:  # accepted but not written: read again if the partition stays ours
                    self._seek_back[tp.partition] = min(start, self._seek_back.get(tp.partition, start))


def _listener_base():
    from kafka import ConsumerRebalanceListener

    return ConsumerRebalanceListener


class _Listener(_listener_base()):
    """Rebalance callbacks (run on kafka-python's IO thread): forget partitions we no longer own."""

    def __init__(self, sink: ParquetSink):
        self.sink = sink

    def on_partitions_revoked(self, revoked):
        self.sink._forget(revoked)

    def on_partitions_assigned(self, assigned):
        self.sink._forget(assigned)  # fresh state: offsets already written are re-read on first records

    def on_partitions_lost(self, lost):
        self.sink._forget(lost)
