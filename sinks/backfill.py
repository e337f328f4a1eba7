"""Backfill by replay: a topic, from the beginning, an offset or a time, into the Parquet dataset.

A consumer without a group (manual ``assign`` + ``seek``; no commits) reads each partition from its
start to a stop offset fixed when the run starts, and writes through the sink's own validation and
atomic writer, skipping the exact offsets already in the dataset (``written_offsets``) — so it is
idempotent with the live sink and with itself.

Stop offsets: the end of each partition, but no further than the live sink group's committed offset
when that group has one. The live sink never writes below its committed offset again and backfill
never writes at or above it, so the two can run at the same time without ever writing one event
twice; what the live sink has not committed yet is its own to write. (``until_sink=False`` replays to
the end regardless: run it only while no sink of the topic is running.)

Resumable: after every flush the next offset of each partition is written atomically to
``_backfill.json`` in the dataset; a run with the same start and topic continues from there (and the
file is removed once the run completes). A killed run loses nothing: what it wrote is skipped next
time by offset anyway.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aggregations import FeatureSet
from aggregations.retry import Retrying, retrying

from .compiled_records import use_compiled_records
from .parquet_sink import ParquetSink, _Buffer, default_group
from .progress import progress_bar
from .writer import claim_source, remove_temps, write_text_atomic, written_offsets

log = logging.getLogger(__name__)

PROGRESS_FILE = "_backfill.json"
DEFAULT_FLUSH_EVENTS = 200_000


@dataclass
class BackfillStats:
    consumed: int = 0
    written: int = 0
    skipped: int = 0  # already in the dataset
    invalid: int = 0
    seconds: float = 0.0
    resumed: bool = False

    def summary(self) -> str:
        rate = self.consumed / self.seconds if self.seconds else 0.0
        return (
            f"replayed {self.consumed} records ({rate:,.0f}/s): written {self.written}, already in the dataset "
            f"{self.skipped}, invalid {self.invalid}"
        )


def parse_start(spec: str | int | None) -> tuple[str, int | None]:
    """'earliest' | an offset (int) | 'ts:<epoch ms or ISO-8601>' -> (kind, value)."""
    if spec is None or spec == "earliest":
        return ("earliest", None)
    if isinstance(spec, int) or str(spec).isdigit():
        return ("offset", int(spec))
    text = str(spec)
    if text.startswith("ts:"):
        from aggregations.schema import parse_timestamp

        return ("timestamp", parse_timestamp(text[3:] if not text[3:].isdigit() else int(text[3:])))
    raise ValueError(f"start must be 'earliest', an offset or ts:<time>, got {spec!r}")


def backfill(
    fs: FeatureSet,
    store: str | Path,
    bootstrap: str,
    *,
    topic: str | None = None,
    start: str | int | None = "earliest",
    until_sink: bool = True,
    sink_group: str | None = None,
    flush_events: int = DEFAULT_FLUSH_EVENTS,
    progress: bool = False,
    max_future: str = "1h",
    max_poll_records: int = 10_000,
    stop_after_flushes: int | None = None,
    client_config: dict | None = None,
) -> BackfillStats:
    """Replay ``topic`` (default ``fs.source``) into the dataset of ``fs``; see the module docstring.

    ``stop_after_flushes`` (tests) returns early after that many flushes, as if interrupted.
    ``client_config``: extra kafka-python arguments (TLS/SASL).
    """
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    topic = topic or fs.source
    kind, value = parse_start(start)
    writer = ParquetSink(fs, store, bootstrap, topic=topic, flush_events=flush_events, max_future=max_future)
    root = writer.root
    claim_source(root, topic)
    stats = BackfillStats()
    began = time.monotonic()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        group_id=None,
        enable_auto_commit=False,
        client_id=f"featurestream-backfill-{fs.name}",
        max_poll_records=max_poll_records,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
        fetch_min_bytes=1 << 20,
        fetch_max_wait_ms=100,
        **dict(client_config or {}),
    )
    use_compiled_records(consumer)
    try:
        ids = _partitions(consumer, topic)
        tps = [TopicPartition(topic, p) for p in ids]
        ends = consumer.end_offsets(tps)
        begins = consumer.beginning_offsets(tps)
        spec = {"topic": topic, "start": [kind, value]}
        saved = _load_progress(root)
        if saved is not None and saved.get("spec") == spec:
            first = {int(p): int(o) for p, o in saved["next"].items()}
            stop = {int(p): int(o) for p, o in saved["stop"].items()}
            stats.resumed = True
        else:
            first = _starts(consumer, tps, kind, value, begins, ends)
            stop = {tp.partition: ends[tp] for tp in tps}
            if until_sink:
                committed = _committed(bootstrap, sink_group or default_group(fs), topic, client_config)
                for p, offset in committed.items():
                    if p in stop:
                        stop[p] = min(stop[p], offset)
            stop = {p: max(stop[p], first[p]) for p in stop}
        todo = {p: (first[p], stop[p]) for p in ids if first.get(p, 0) < stop.get(p, 0)}
        total = sum(b - a for a, b in todo.values())
        log.info("backfill %s: topic %r, %d records in %d partitions", fs.name, topic, total, len(todo))
        bar = progress_bar(total, "event", f"backfill {fs.name}") if progress else None
        known = {}
        for p, (a, _b) in todo.items():
            remove_temps(root, p)
            known[p] = written_offsets(root, p, a)
        assigned = [TopicPartition(topic, p) for p in todo]
        consumer.assign(assigned)
        for tp in assigned:
            consumer.seek(tp, todo[tp.partition][0])
        position = {p: a for p, (a, _b) in todo.items()}
        active = set(todo)
        buffers: dict[int, _Buffer] = {}
        pending = flushes = 0
        while active:
            polled = consumer.poll(timeout_ms=500)
            for tp, records in polled.items():
                p = tp.partition
                if p not in active:
                    continue
                end = todo[p][1]
                if records and records[-1].offset >= end:
                    records = [r for r in records if r.offset < end]
                seen = len(records)
                if seen:
                    position[p] = records[-1].offset + 1
                    offsets = None
                    if len(known[p]):
                        offsets = np.array([r.offset for r in records], dtype=np.int64)
                        at = np.minimum(np.searchsorted(known[p], offsets), len(known[p]) - 1)
                        new = known[p][at] != offsets
                        records = [r for r, keep in zip(records, new.tolist(), strict=True) if keep]
                        offsets = offsets[new]
                    buffers.setdefault(p, _Buffer()).add(records, offsets)
                    pending += len(records)
                    stats.consumed += seen
                    stats.skipped += seen - len(records)
                    if bar is not None:
                        bar.update(seen)
            for p in list(active):
                tp = TopicPartition(topic, p)
                if consumer.position(tp) >= todo[p][1]:  # offsets may have gaps (transaction markers)
                    if bar is not None:
                        bar.update(todo[p][1] - position[p])
                    position[p] = todo[p][1]
                    active.discard(p)
                    consumer.pause(tp)
            if pending >= flush_events or not active:
                _flush(writer, buffers, stats)
                buffers, pending = {}, 0
                flushes += 1
                _save_progress(root, spec, position, stop)
                if stop_after_flushes is not None and flushes >= stop_after_flushes and active:
                    break
        if bar is not None:
            bar.close()
        if not active:
            (root / PROGRESS_FILE).unlink(missing_ok=True)
    finally:
        consumer.close()
    stats.seconds = time.monotonic() - began
    log.info("backfill %s: %s", fs.name, stats.summary())
    return stats


def _flush(writer: ParquetSink, buffers: dict[int, _Buffer], stats: BackfillStats) -> None:
    written, invalid = writer.stats.written, writer.stats.invalid
    for p, buffer in sorted(buffers.items()):
        writer._write(p, buffer)  # the sink's own validation and atomic, fsynced file writes
    stats.written += writer.stats.written - written
    stats.invalid += writer.stats.invalid - invalid


def _partitions(consumer, topic: str, timeout_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        ids = consumer.partitions_for_topic(topic)
        if ids:
            return sorted(ids)
        if time.monotonic() > deadline:
            raise ValueError(f"topic {topic!r} does not exist")
        time.sleep(0.5)


def _starts(consumer, tps, kind, value, begins, ends) -> dict[int, int]:
    if kind == "earliest":
        return {tp.partition: begins[tp] for tp in tps}
    if kind == "offset":
        return {tp.partition: min(max(value, begins[tp]), ends[tp]) for tp in tps}
    found = consumer.offsets_for_times({tp: value for tp in tps})
    return {tp.partition: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in tps}


def _committed(bootstrap: str, group: str, topic: str, client_config: dict | None = None) -> dict[int, int]:
    """The live sink group's committed offsets of ``topic`` (empty if it never committed)."""
    from kafka import KafkaAdminClient

    admin = Retrying(
        retrying(
            lambda: KafkaAdminClient(
                bootstrap_servers=bootstrap.split(","), client_id="featurestream-backfill", **dict(client_config or {})
            ),
            f"connecting to Kafka at {bootstrap}",
        )
    )
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {
        tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0
    }


def _load_progress(root: Path) -> dict | None:
    try:
        return json.loads((root / PROGRESS_FILE).read_text())
    except FileNotFoundError:
        return None


def _save_progress(root: Path, spec: dict, position: dict[int, int], stop: dict[int, int]) -> None:
    """Next offset to replay of every partition (done ones at their stop), atomically and durably."""
    nxt = {str(p): int(position.get(p, o)) for p, o in stop.items()}
    progress = {"spec": spec, "next": nxt, "stop": {str(p): int(o) for p, o in stop.items()}}
    write_text_atomic(root / PROGRESS_FILE, json.dumps(progress))
