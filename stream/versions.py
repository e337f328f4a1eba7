"""Definition versions on the broker: refuse to start a changed feature set on empty online state.

A set's tile table (and changelog) is named after its definition's fingerprint, so a changed definition
never reads old state. But it would start *empty* while the worker group resumes the source topic after
the events it already consumed: every window would miss its history, silently, until the longest window
has passed. ``check_versions`` refuses that start with the ways out (``featurestream bootstrap`` from the
Parquet history, or an explicit ``--allow-partial-state``). Each definition a worker runs is recorded in
a compacted topic, so ``featurestream plan`` can show what a change does before it is deployed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aggregations.definitions import FeatureSet
from aggregations.naming import changelog_topic, changelog_versions, definitions_topic
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

    @property
    def action(self) -> str:
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
        return not self.has_state and self.group_committed


def inspect_versions(
    admin, consumer, feature_sets: Iterable[FeatureSet], sources: Mapping[str, str], app_id: str
) -> list[SetVersion]:
    """Each set's version status; ``admin``/``consumer`` are kafka-python clients, ``sources`` set -> topic."""
    topics = set(admin.list_topics())
    committed = _committed_topics(admin, app_id)
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


def _committed_topics(admin, group: str) -> set[str]:
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    except Exception as exc:  # an unknown group has no offsets
        log.debug("no committed offsets of group %s: %s", group, exc)
        return set()
    return {tp.topic for tp, meta in offsets.items() if meta.offset >= 0}


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
    admin = KafkaAdminClient(bootstrap_servers=broker_servers, client_id="featurestream-versions", **extra)
    consumer = KafkaConsumer(
        bootstrap_servers=broker_servers,
        enable_auto_commit=False,
        client_id="featurestream-versions",
        **extra,
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
    producer = KafkaProducer(bootstrap_servers=broker_servers, client_id="featurestream-versions", **extra)
    try:
        record_definitions(producer, feature_sets, app_id)
    finally:
        producer.close()
    return statuses
