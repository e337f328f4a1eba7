"""Kafka topics of the online path: names (with an optional prefix) and making sure they exist.

A FeatureSet's ``source`` names its topic; ``prefix`` maps it to ``prefix + source`` so that several
deployments (or test runs) can share one cluster. Each source topic gets ``<topic>.dlq``,
``<topic>.late`` and ``<topic>.by-entity`` (events that arrived in another partition than their
entity's, forwarded there; it must have the source's partition count). The worker's tables are partitioned like their source topic (Faust requires a
table's changelog to be co-partitioned with the stream that writes it), so the partition count is
read from the broker before the app is built; a missing source topic is created.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aggregations.definitions import FeatureSet
from aggregations.naming import BY_ENTITY_SUFFIX

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 4
CHANGELOG_CONFIGS = {"cleanup.policy": "compact"}  # as Faust makes a table's changelog: latest state per key
REPARTITION_SUFFIX = BY_ENTITY_SUFFIX


@dataclass(frozen=True)
class SetTopics:
    """The topics one FeatureSet's agent reads and writes."""

    source: str
    dlq: str
    late: str
    partitions: int

    @property
    def repartition(self) -> str:
        """Where events that arrived in the wrong partition for their entity are forwarded."""
        return f"{self.source}{REPARTITION_SUFFIX}"


def topic_names(feature_set: FeatureSet, prefix: str = "") -> tuple[str, str, str]:
    """(source, dead-letter, late) topic names of a feature set."""
    source = f"{prefix}{feature_set.source}"
    return source, f"{source}.dlq", f"{source}.late"


def bootstrap_servers(broker: str) -> list[str]:
    """``"h1:9092,kafka://h2:9092"`` -> ["h1:9092", "h2:9092"]."""
    servers = [s.strip().removeprefix("kafka://") for s in broker.split(",") if s.strip()]
    if not servers:
        raise ValueError(f"no Kafka bootstrap server in {broker!r}")
    return servers


def resolve_topics(
    broker: str,
    feature_sets: Iterable[FeatureSet],
    prefix: str = "",
    partitions: int = DEFAULT_PARTITIONS,
    timeout_s: float = 60.0,
    client_config: Mapping | None = None,
) -> dict[str, SetTopics]:
    """Topics of every set, by set name; creates missing ones (sources with ``partitions`` partitions).

    Retries while the broker is unreachable, up to ``timeout_s``; then raises the last error.
    ``client_config``: extra kafka-python arguments (TLS/SASL).
    """
    admin = _admin(broker, timeout_s, client_config)
    try:
        sets = list(feature_sets)
        sources = {fs.name: topic_names(fs, prefix) for fs in sets}
        counts = _partition_counts(admin, [s for s, _, _ in sources.values()])
        missing = sorted({s for s, _, _ in sources.values() if s not in counts})
        if missing:
            log.warning("creating missing source topic(s) %s with %d partitions", missing, partitions)
            _create(admin, {name: partitions for name in missing})
            counts.update(_partition_counts(admin, missing))
        side = {}
        for source, dlq, late in sources.values():
            side[dlq] = side[late] = side[source + REPARTITION_SUFFIX] = counts[source]
        existing = _partition_counts(admin, list(side))
        _create(admin, {name: n for name, n in side.items() if name not in existing})
        for source, _, _ in sources.values():
            forwarded = source + REPARTITION_SUFFIX
            if existing.get(forwarded, counts[source]) != counts[source]:
                raise ValueError(
                    f"topic {forwarded} has {existing[forwarded]} partitions but {source} has {counts[source]}: "
                    f"they must match (delete {forwarded}; the worker recreates it)"
                )
        return {name: SetTopics(s, d, lt, counts[s]) for name, (s, d, lt) in sources.items()}
    finally:
        admin.close()


def ensure_changelogs(
    broker: str, changelogs: Mapping[str, int], timeout_s: float = 60.0, client_config: Mapping | None = None
) -> None:
    """Create the tables' changelog topics that do not exist (compacted, ``changelogs``: name -> partitions),
    and wait until the broker's metadata shows every one of them with a leader per partition.

    Faust creates a missing changelog itself moments before its consumer subscribes; when the consumer's
    metadata does not show the new topic yet, the group assigns partitions without it ("Ignoring missing
    topic") and the worker runs without its tables' partitions until its metadata is refreshed, minutes later.
    """
    if not changelogs:
        return
    admin = _admin(broker, timeout_s, client_config)
    try:
        existing = set(admin.list_topics())
        missing = {name: n for name, n in changelogs.items() if name not in existing}
        if missing:
            log.info("creating changelog topic(s) %s", sorted(missing))
            specs = {"replication_factor": -1, "configs": dict(CHANGELOG_CONFIGS)}
            admin.create_topics(
                {name: {"num_partitions": n, **specs} for name, n in missing.items()},
                timeout_ms=30_000,
                raise_errors=False,  # another worker may have created them a moment ago
            )
        admin.wait_for_topics(list(changelogs), timeout_ms=int(timeout_s * 1000))
    finally:
        admin.close()


def _admin(broker: str, timeout_s: float, client_config: Mapping | None):
    """A kafka-python admin client, retrying while the broker is unreachable, up to ``timeout_s``."""
    from kafka import KafkaAdminClient  # imported here: pure unit tests never need kafka-python

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdminClient(
                bootstrap_servers=bootstrap_servers(broker),
                client_id="featurestream-worker-setup",
                **dict(client_config or {}),
            )
        except Exception as exc:
            if time.monotonic() > deadline:
                raise ConnectionError(f"cannot reach Kafka at {broker}: {exc}") from exc
            log.warning("waiting for Kafka at %s: %s", broker, exc)
            time.sleep(1.0)


def _partition_counts(admin, topics: list[str]) -> dict[str, int]:
    if not topics:
        return {}
    existing = set(admin.list_topics())  # never a metadata request naming them: that may auto-create
    wanted = [t for t in topics if t in existing]
    if not wanted:
        return {}
    return {t["topic"] if "topic" in t else t["name"]: len(t["partitions"]) for t in admin.describe_topics(wanted)}


def _create(admin, topics: dict[str, int]) -> None:
    if not topics:
        return
    admin.create_topics(
        {name: {"num_partitions": n, "replication_factor": -1} for name, n in topics.items()},
        timeout_ms=30_000,
        raise_errors=False,  # another worker may have created them a moment ago
    )
    admin.wait_for_topics(list(topics), timeout_ms=30_000)
