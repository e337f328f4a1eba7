"""Definition versions on the broker: refuse to start a feature set on online state that has not applied
what the worker group already consumed.

A set's tile table (and changelog) is named after its definition's fingerprint, so a changed definition
never reads old state. Two starts would still serve wrong windows, silently:

* a new or changed definition starts on *empty* state while the group resumes the source after the
  events it already consumed: windows miss their history until the longest window has passed;
* a definition rolled back to starts on *its old* state, which stopped where that version stopped,
  while the group has since consumed more under another version: those events are missing for good.

Both are detected the same way: every transaction ends each changelog partition with a checkpoint record
(``aggregations.bookkeeping.Checkpoint``) saying how far that partition's source was processed, and the
newest checkpoint is compared with the group's committed source offsets. ``check_versions`` refuses such a
start with the ways out (``featurestream bootstrap`` from the Parquet history, or an explicit
``--allow-partial-state``). Each definition a worker runs is recorded in a compacted topic, so
``featurestream plan`` can show what a change does before it is deployed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aggregations.bookkeeping import CHECKPOINT_KEY, Checkpoint
from aggregations.definitions import FeatureSet
from aggregations.naming import changelog_topic, changelog_versions, definitions_topic
from aggregations.retry import Retrying, retrying
from aggregations.versioning import definition_changes

log = logging.getLogger(__name__)


class DefinitionChanged(ValueError):
    """A changed feature set would start on empty state behind the group's committed offsets."""


@dataclass
class SetVersion:
    """What the broker knows about one feature set's definition versions."""

    name: str
    fingerprint: str
    has_state: bool  # this version's changelog holds records
    other_versions: list[str] = field(default_factory=list)  # fingerprints of other deployed versions
    group_committed: bool = False  # the worker group committed offsets of the source topic
    changes: list[str] = field(default_factory=list)  # from the newest recorded other version
    # Source partitions whose state stopped before the group's committed offset: {p: [state, group]}.
    behind: dict[int, list[int]] = field(default_factory=dict)

    @property
    def action(self) -> str:
        if self.has_state and self.behind:
            return (
                "rolled back (or resumed after another version ran): this version's state stopped before "
                f"the group's committed offsets ({_gaps(self.behind)}); run `featurestream bootstrap "
                f"--feature-set {self.name} --force` before starting workers (they refuse otherwise)"
            )
        if self.has_state:
            return "unchanged: the workers resume this version's state"
        if not self.other_versions:
            if self.group_committed:
                return "new state behind committed offsets: bootstrap it first (featurestream bootstrap)"
            return "new: the workers build it from the source topic's beginning"
        if self.group_committed:
            return "changed: run `featurestream bootstrap` before starting workers (they refuse otherwise)"
        return "changed: the workers rebuild it from the source topic's beginning"

    @property
    def blocked(self) -> bool:
        return bool(self.behind) or (not self.has_state and self.group_committed)


def _gaps(behind: Mapping[int, list[int]]) -> str:
    return ", ".join(f"partition {p}: state at {state}, group at {group}" for p, (state, group) in sorted(behind.items()))


def inspect_versions(
    admin, consumer, feature_sets: Iterable[FeatureSet], sources: Mapping[str, str], app_id: str
) -> list[SetVersion]:
    """Each set's version status; ``admin``/``consumer`` are kafka-python clients, ``sources`` set -> topic."""
    topics = set(admin.list_topics())
    offsets = _committed_offsets(admin, app_id)
    committed = {topic for topic, _ in offsets}
    recorded = read_definitions(consumer, app_id) if definitions_topic(app_id) in topics else {}
    out = []
    for fs in feature_sets:
        fp = fs.fingerprint()
        versions = changelog_versions(topics, fs.name, app_id)
        current = changelog_topic(fs, app_id)
        has_state = current in topics and _holds_records(consumer, current)
        others = sorted(v for v in versions if v != fp)
        status = SetVersion(fs.name, fp, has_state, others, sources[fs.name] in committed)
        previous = [recorded[(fs.name, v)] for v in others if (fs.name, v) in recorded]
        if has_state and previous:
            # Judged only when another version ran after this state's last checkpoint: workers of any
            # release that run this same definition share its state, whatever they record.
            source = sources[fs.name]
            group = {p: o for (t, p), o in offsets.items() if t == source}
            newest = newest_checkpoints(consumer, current)
            written = max((ts for found in newest.values() if found for ts in [found[1]]), default=None)
            if written is not None and any(r.get("recorded_ms", 0) > written for r in previous):
                status.behind = state_behind({p: found and found[0] for p, found in newest.items()}, group)
        if previous:
            newest = max(previous, key=lambda r: r.get("recorded_ms", 0))
            status.changes = definition_changes(newest["definition"], fs.definition())
        out.append(status)
    return out


def check_versions(statuses: list[SetVersion], allow_partial: bool = False) -> None:
    """Raise ``DefinitionChanged`` for a set that would start on empty state behind committed offsets."""
    for s in statuses:
        if not s.blocked:
            continue
        if s.behind:
            message = (
                f"feature set {s.name!r} (definition {s.fingerprint}) has online state, but it stopped before "
                f"what the worker group has consumed since ({_gaps(s.behind)}): another definition ran in "
                "between (a rollback?) and this state never saw those events. Run `featurestream bootstrap "
                f"--feature-set {s.name} --force` (from the Parquet history) and start again, or pass "
                "--allow-partial-state to serve it as it is."
            )
            if allow_partial:
                log.warning("%s (allowed by --allow-partial-state)", message)
                continue
            raise DefinitionChanged(message)
        what = (
            "changed"
            if s.other_versions
            else "has no online state yet but the group already consumed its source"
        )
        detail = "; ".join(s.changes) if s.changes else "see `featurestream plan`"
        message = (
            f"feature set {s.name!r} {what} (definition {s.fingerprint}; deployed: "
            f"{', '.join(s.other_versions) or 'none'}; {detail}). Its new online state would start empty "
            "after the events the workers already consumed, so windows would miss their history. Run "
            f"`featurestream bootstrap --feature-set {s.name}` (from the Parquet history) and start again, "
            "or pass --allow-partial-state to accept windows that fill up over time."
        )
        if allow_partial:
            log.warning("%s (allowed by --allow-partial-state)", message)
        else:
            raise DefinitionChanged(message)


def record_definitions(producer, feature_sets: Iterable[FeatureSet], app_id: str) -> None:
    """Record each definition this worker runs (key ``set@fingerprint``; the topic is compacted)."""
    topic = definitions_topic(app_id)
    now = int(time.time() * 1000)
    for fs in feature_sets:
        body = {
            "set": fs.name,
            "fingerprint": fs.fingerprint(),
            "definition": fs.definition(),
            "recorded_ms": now,
        }
        producer.send(topic, key=f"{fs.name}@{fs.fingerprint()}".encode(), value=json.dumps(body).encode())
    producer.flush(timeout=30)


def read_definitions(consumer, app_id: str, timeout_s: float = 10.0) -> dict[tuple[str, str], dict]:
    """(set, fingerprint) -> recorded definition, read from the definitions topic to its end."""
    from kafka.structs import TopicPartition

    tp = TopicPartition(definitions_topic(app_id), 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    end = consumer.end_offsets([tp])[tp]
    out: dict[tuple[str, str], dict] = {}
    deadline = time.monotonic() + timeout_s
    while consumer.position(tp) < end and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                try:
                    body = json.loads(record.value)
                    out[(body["set"], body["fingerprint"])] = body
                except (ValueError, KeyError, TypeError):
                    log.warning("ignoring a malformed record in %s", tp.topic)
    return out


def state_behind(checkpoints: Mapping[int, Checkpoint | None], group: Mapping[int, int]) -> dict[int, list[int]]:
    """Source partitions where the group committed past the state's newest checkpoint: {p: [state, group]}.

    A partition without a checkpoint (state written before checkpoints existed) is not judged."""
    out = {}
    for partition, offset in group.items():
        checkpoint = checkpoints.get(partition)
        if checkpoint is not None and offset > checkpoint.source:
            out[int(partition)] = [checkpoint.source, int(offset)]
    return out


#: How far back from a changelog partition's end to look for its newest checkpoint, in growing windows:
#: normally the last record is one; after a crash at most one batch of state records follows it.
CHECKPOINT_WINDOWS = (1, 64, 4096, 20_000)


def newest_checkpoints(consumer, topic: str, timeout_s: float = 30.0) -> dict[int, tuple[Checkpoint, int] | None]:
    """Per partition of a changelog, its newest checkpoint record and the record's timestamp (ms); None when
    none is found near the end in time (the partition is then not judged: an older checkpoint would make a
    current state look stale)."""
    from kafka.structs import TopicPartition

    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    if not tps:
        return {}
    begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
    deadline = time.monotonic() + timeout_s
    out: dict[int, tuple[Checkpoint, int] | None] = {}
    for tp in tps:
        out[tp.partition] = None
        for window in CHECKPOINT_WINDOWS:
            start = max(begin[tp], end[tp] - window)
            found = _last_checkpoint(consumer, tp, start, end[tp], deadline)
            if found is not None or start == begin[tp] or time.monotonic() > deadline:
                out[tp.partition] = found
                break
    consumer.unsubscribe()
    return out


def _last_checkpoint(consumer, tp, start: int, stop: int, deadline: float) -> tuple[Checkpoint, int] | None:
    """The last checkpoint record among offsets [start, stop) of ``tp`` and its timestamp; None if none,
    or if the range could not be read to its end before ``deadline``."""
    if start >= stop:
        return None
    consumer.assign([tp])
    consumer.seek(tp, start)
    found = None
    while consumer.position(tp) < stop:
        if time.monotonic() > deadline:
            return None
        for records in consumer.poll(timeout_ms=500, max_records=5000).values():
            for record in records:
                if record.offset < stop and record.key == CHECKPOINT_KEY:
                    found = (Checkpoint.decode(record.value), int(record.timestamp))
    return found


def _committed_offsets(admin, group: str) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the group's committed offset (empty for an unknown group)."""
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    except Exception as exc:  # an unknown group has no offsets
        log.debug("no committed offsets of group %s: %s", group, exc)
        return {}
    return {(tp.topic, tp.partition): int(meta.offset) for tp, meta in offsets.items() if meta.offset >= 0}


def _holds_records(consumer, topic: str) -> bool:
    from kafka.structs import TopicPartition

    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in partitions]
    if not tps:
        return False
    begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
    return any(end[tp] > begin[tp] for tp in tps)


def guard_versions(
    broker_servers: list[str],
    feature_sets: list[FeatureSet],
    sources: Mapping[str, str],
    app_id: str,
    allow_partial: bool = False,
    client_config: Mapping | None = None,
) -> list[SetVersion]:
    """The worker's startup check (``check_versions``), then the record of the definitions it runs.

    ``client_config``: extra kafka-python arguments (TLS/SASL)."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    extra = dict(client_config or {})
    where = f"connecting to Kafka at {','.join(broker_servers)}"
    admin = Retrying(
        retrying(lambda: KafkaAdminClient(bootstrap_servers=broker_servers, client_id="featurestream-versions", **extra), where)
    )
    consumer = Retrying(
        retrying(
            lambda: KafkaConsumer(
                bootstrap_servers=broker_servers, enable_auto_commit=False, client_id="featurestream-versions", **extra
            ),
            where,
        )
    )
    try:
        statuses = inspect_versions(admin, consumer, feature_sets, sources, app_id)
        check_versions(statuses, allow_partial)
        topic = definitions_topic(app_id)
        if topic not in set(admin.list_topics()):
            admin.create_topics(
                {
                    topic: {
                        "num_partitions": 1,
                        "replication_factor": -1,
                        "configs": {"cleanup.policy": "compact"},
                    }
                },
                timeout_ms=30_000,
                raise_errors=False,
            )
    finally:
        consumer.close()
        admin.close()
    producer = retrying(
        lambda: KafkaProducer(bootstrap_servers=broker_servers, client_id="featurestream-versions", **extra), where
    )
    try:
        record_definitions(producer, feature_sets, app_id)
    finally:
        producer.close()
    return statuses
