"""``featurestream bootstrap``: write a feature set's online state, rebuilt from Parquet, to its changelog topic.

A new or changed FeatureSet gets a new tile table (its name carries the definition fingerprint). Instead
of replaying the whole source topic, bootstrap builds each entity's state from the offline dataset
(``online_state.rebuild_states``) and produces it to the table's changelog topic, in the entity's source
partition (the worker's table is co-partitioned with its source). A worker started afterwards on a fresh
state dir recovers the table from the changelog, then consumes the source topic: every event at or
below an entity's stored offset is skipped as already applied, every later one (the sink's lag, live
traffic) is applied. Windows are full on day one, and no event counts twice or goes missing at the seam.

Two conditions make that exact, and bootstrap checks both before writing anything:

* the changelog topic holds no records yet (else a worker already built this state; ``force``
  writes on top, the newest record per key winning);
* the worker group (the Faust app id) has not committed source offsets past what the dataset holds
  (or the sink has committed): a worker resuming there would skip events that are in neither.

Each changelog partition ends with a checkpoint record (``aggregations.bookkeeping.Checkpoint``): the
source offset the dataset covers there, so the worker skips what the state already holds and ``plan``
can tell a bootstrapped state from a stale one. Where retention removed more of the topic than the sink
wrote (history older than the topic, brought in by ``ingest --offline-only``), the checkpoint is where
the topic begins and the summary says which offsets the state may lack: the workers start there instead
of finding a gap.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from aggregations import FeatureSet
from aggregations.bookkeeping import CHECKPOINT_KEY, Checkpoint
from aggregations.naming import BY_ENTITY_SUFFIX, DEFAULT_APP_ID, changelog_topic
from aggregations.retry import Retrying, retrying

from .dataset import count_events
from .layout import dataset_dir, source_path
from .online_state import rebuild_states
from .parquet_sink import default_group
from .progress import progress_bar
from .snapshot import live_parts, reading


class BootstrapRefused(RuntimeError):
    """Bootstrapping would double-count or lose events (see the message); nothing was written."""


@dataclass
class BootstrapStats:
    """What one bootstrap wrote."""

    topic: str = ""
    entities: int = 0
    events: int = 0
    applied: int = 0
    bytes: int = 0
    seconds: float = 0.0
    #: {source partition: (first, end)}: offsets [first, end) the dataset's sink files do not hold and the
    #: topic no longer has (retention); the state holds those events only if a history ingest brought them.
    gone: dict[int, tuple[int, int]] = field(default_factory=dict)

    def summary(self) -> str:
        text = (
            f"{self.entities:,} entities from {self.events:,} events ({self.applied:,} in live windows), "
            f"{self.bytes / 1e6:.1f} MB to {self.topic} in {self.seconds:.1f} s"
        )
        for partition, (first, end) in sorted(self.gone.items()):
            text += (
                f"\n  partition {partition}: offsets {first}..{end - 1} are neither in the dataset's sink files nor on "
                f"the topic any more (retention): workers start at {end}; the state holds those events only if a "
                "history ingest (ingest --offline-only) brought them in"
            )
        return text


def dataset_topic(fs: FeatureSet, store: str | Path) -> str:
    """The topic the dataset was written from (its ``_source.json`` claim), else the set's source."""
    path = source_path(dataset_dir(store, fs.name))
    if path.exists():
        return json.loads(path.read_text())["topic"]
    return fs.source


def bootstrap(
    fs: FeatureSet,
    store: str | Path,
    broker: str,
    *,
    app_id: str = DEFAULT_APP_ID,
    topic: str | None = None,
    now: int | None = None,
    force: bool = False,
    sink_group: str | None = None,
    partitions: int | None = None,
    progress: bool = True,
    client_config: dict | None = None,
    spark=None,
) -> BootstrapStats:
    """Rebuild ``fs``'s online state from ``store`` and produce it to its changelog (see the module docstring).

    ``topic``: the source topic (default: the dataset's claimed topic). ``now``: the time state is
    expired at (default: the wall clock). ``partitions``: entity-hash partitions of the work (default:
    from the data size). ``client_config``: extra kafka-python arguments (TLS/SASL). Raises ``BootstrapRefused`` (nothing written) when a check fails and not ``force``.
    """
    from kafka import KafkaAdminClient, KafkaProducer

    started = time.monotonic()
    now = int(time.time() * 1000) if now is None else int(now)
    servers = [s.strip().removeprefix("kafka://") for s in broker.split(",") if s.strip()]
    source = topic or dataset_topic(fs, store)
    changelog = changelog_topic(fs, app_id)
    stats = BootstrapStats(topic=changelog)
    security = dict(client_config or {})
    admin = Retrying(
        retrying(
            lambda: KafkaAdminClient(bootstrap_servers=servers, client_id="featurestream-bootstrap", **security),
            f"connecting to Kafka at {broker}",
        )
    )
    try:
        n_source = _partition_count(admin, source)
        if n_source is None:
            raise BootstrapRefused(f"source topic {source!r} does not exist on {broker}")
        n_changelog = _partition_count(admin, changelog)
        if n_changelog is not None and n_changelog != n_source:
            raise BootstrapRefused(
                f"changelog {changelog!r} has {n_changelog} partitions, source {source!r} has {n_source}"
            )
        elif n_changelog is not None and not force and _holds_records(
            *retrying(lambda: _offset_range(servers, changelog, n_changelog, security), "reading the changelog's offsets")
        ):
            raise BootstrapRefused(
                f"changelog {changelog!r} already holds state of feature set {fs.name!r} (definition "
                f"{fs.fingerprint()}): a worker built it, or an earlier bootstrap did. Use --force to write on "
                "top of it (stop the workers and wipe their state dirs first)"
            )
        worker_committed = _committed(admin, app_id, source)
        # What the group consumed of <source>.by-entity: forwarded events of source records the dataset
        # holds (the gap check below makes sure it holds all the group consumed), applied in the rebuild.
        forwarded_committed = _committed(admin, app_id, source + BY_ENTITY_SUFFIX)
        sink_committed = _committed(admin, sink_group or default_group(fs), source)
        frontier = dataset_frontier(fs, store)
        _check_gap(source, app_id, worker_committed, sink_committed, frontier)
        log_start, _ = retrying(lambda: _offset_range(servers, source, n_source, security), "reading the source's offsets")
        if n_changelog is None:
            _create_changelog(admin, changelog, n_source)
    finally:
        admin.close()

    bar = progress_bar(count_events(fs, store), "event", f"bootstrap {fs.name}", enabled=progress)
    producer = KafkaProducer(
        bootstrap_servers=servers, acks="all", linger_ms=50, batch_size=1 << 20,
        max_request_size=16 << 20, client_id="featurestream-bootstrap", **security,
    )  # fmt: skip
    errors: list[BaseException] = []
    try:
        if spark is not None:
            from .spark_engine import bootstrap_partitions

            parts = bootstrap_partitions(fs, store, now, partitions, spark, n_source)
        else:
            parts = rebuild_states(fs, store, now, n_source, partitions=partitions)
        for part in parts:
            for state in part.states:
                future = producer.send(changelog, key=state.key, value=state.value, partition=state.partition)
                future.add_errback(errors.append)
                stats.bytes += len(state.key) + len(state.value)
            stats.entities += len(part.states)
            stats.events += part.events
            stats.applied += part.applied
            bar.update(part.events)
            if errors:
                break
        producer.flush()
        # Last in each partition: how far its source is covered (in the dataset, or skipped by the sink as
        # invalid). A worker skips source records below it whole; `plan` compares it with the group.
        # Offsets retention removed that the dataset's sink files do not hold either can never be applied: the
        # workers start where the topic begins (reported: a history ingest may hold those events).
        for partition in range(n_source):
            covered = max(frontier.get(partition, 0), sink_committed.get(partition, 0))
            if log_start[partition] > covered:
                stats.gone[partition] = (covered, log_start[partition])
            checkpoint = Checkpoint(max(covered, log_start[partition]), forwarded_committed.get(partition, 0))
            future = producer.send(changelog, key=CHECKPOINT_KEY, value=checkpoint.encode(), partition=partition)
            future.add_errback(errors.append)
        producer.flush()
    finally:
        producer.close()
        bar.close()
    if errors:
        raise RuntimeError(f"producing to {changelog!r} failed for {len(errors)} record(s): {errors[0]!r}")
    stats.seconds = time.monotonic() - started
    return stats


def dataset_frontier(fs: FeatureSet, store: str | Path) -> dict[int, int]:
    """Per source partition, one past the highest offset the dataset holds (from its file names)."""
    root = dataset_dir(store, fs.name)
    if not root.exists():
        return {}
    out: dict[int, int] = {}
    with reading(root):
        for part in live_parts(root):
            out[part.partition] = max(out.get(part.partition, 0), part.last + 1)
    return out


def _check_gap(source, app_id, worker_committed, sink_committed, frontier) -> None:
    """Refuse when the worker group would resume past what the dataset holds (those events would be lost,
    ``force`` or not: it only allows writing over existing state)."""
    gaps = []
    for p, committed in sorted(worker_committed.items()):
        covered = max(frontier.get(p, 0), sink_committed.get(p, 0))
        if committed > covered:
            gaps.append(f"partition {p}: offsets {covered}..{committed - 1}")
    if gaps:
        raise BootstrapRefused(
            f"worker group {app_id!r} has committed source offsets of {source!r} beyond what the dataset holds "
            f"({'; '.join(gaps)}): a worker resuming there would count those events in neither. Let the sink "
            "catch up (featurestream sink --once) and bootstrap again, or use another --app-id"
        )


def _partition_count(admin, topic: str) -> int | None:
    if topic not in set(admin.list_topics()):  # never a metadata request naming it: that may auto-create
        return None
    (described,) = admin.describe_topics([topic])
    return len(described["partitions"])


def _create_changelog(admin, topic: str, partitions: int) -> None:
    """A compacted topic co-partitioned with the source, as Faust would create it."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    with contextlib.suppress(TopicAlreadyExistsError):
        admin.create_topics(
            [NewTopic(topic, partitions, -1, topic_configs={"cleanup.policy": "compact"})], timeout_ms=30_000
        )
    admin.wait_for_topics([topic], timeout_ms=30_000)


def _holds_records(begin: dict[int, int], end: dict[int, int]) -> bool:
    return any(end[p] > begin[p] for p in begin)


def _offset_range(
    servers: list[str], topic: str, partitions: int, security: dict | None = None
) -> tuple[dict[int, int], dict[int, int]]:
    """Per partition of ``topic``, its first offset still held (after retention) and its end offset."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=servers, enable_auto_commit=False, client_id="featurestream-bootstrap",
        **dict(security or {}),
    )  # fmt: skip
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
    finally:
        consumer.close()
    return {tp.partition: begin[tp] for tp in tps}, {tp.partition: end[tp] for tp in tps}


def _committed(admin, group: str, topic: str) -> dict[int, int]:  # admin: a Retrying client
    """A consumer group's committed offsets of ``topic`` (empty if it never committed)."""
    offsets = admin.list_group_offsets({group: None}).get(group, {})
    return {
        tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0
    }
