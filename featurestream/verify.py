"""``featurestream verify``: online/offline consistency of a live deployment.

For each feature set: sample entities deterministically by key hash, read their features from a running
worker over HTTP (each answer carries its read time ``at``), compute the same features at the same ``at``
from the Parquet dataset with ``sinks.get_offline_features``, and report per feature the mismatch, missing
and extra rates and the largest deltas (in the spirit of Chronon's consistency metrics).

In-flight events are never counted as mismatches:

1. Before reading, it takes the source topic's end offsets E and waits (``--wait-caught-up``) until both the
   worker group (``--app-id``) and the sink group (``--sink-group``) have committed at least E on every
   partition (or E is where the partition begins: retention removed everything below it): every event
   below E is then applied online and written offline. If they do not catch up in
   time, it reports the lag and exits 3 without comparing.
2. After the online reads and the offline computation it takes the end offsets again (E2). Events in
   ``[E, E2)`` arrived while verifying and may be seen by one side and not the other: their entities are
   left out of the comparison (reported as ``in_flight``). Every other sampled entity has exactly the events
   below E on both sides, so any difference is a real inconsistency.

Classification per (entity, feature), with "empty" meaning null/NaN, or 0 for count, count_distinct,
approx_count_distinct, sum and sqr (their empty-window values): both empty or equal -> match; online empty,
offline not -> ``missing`` (online lacks it); online not empty, offline empty -> ``extra``; otherwise compared
with the window contract's tolerance (count, count_distinct, min, max, first, last, approx_count_distinct and
last_k exact; float sums, averages and variances within ``--rel-tol`` relative / ``--abs-tol`` absolute) ->
``mismatch`` beyond it. Sketches that are not deterministic under merge (approx_percentile, top_k) agree
exactly while a window holds few values, beyond that only within their error bound, which verify cannot
check from the values: a difference is counted as ``approx_differ`` and reported, but is not an
inconsistency (``featurestream.consistency``).

Exit status: 0 consistent, 1 inconsistent (any mismatch, missing or extra), 3 not caught up, 2 usage error.
With ``--every SECONDS`` it runs until stopped and exports ``featurestream_verify_mismatch_ratio
{feature_set, feature}`` (mismatched + missing + extra over compared) on ``--metrics-port``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .consistency import compare_frames, sample_keys
from .kafka_offsets import Offsets
from .online_reads import read_online

EXIT_OK, EXIT_INCONSISTENT, EXIT_USAGE, EXIT_NOT_CAUGHT_UP = 0, 1, 2, 3


def entity_of_record(fs, key: bytes | None, value: bytes | None) -> set[str]:
    """The entity a source record touches, decoded and validated as every consumer does
    (``aggregations.schema``): the table key of its entity columns, or nothing for a record the worker
    dead-letters. The Kafka key is not an entity: producers may key by anything."""
    from aggregations.schema import EventValidator, InvalidValue, parse_payload

    validator = _validators.get(fs.name)
    if validator is None or validator.feature_set is not fs:
        validator = _validators[fs.name] = EventValidator(fs)
    try:
        row = validator.validate(parse_payload(value), int(time.time() * 1000))
    except InvalidValue:
        return set()
    return {"\x1f".join(str(row[n]) for n in fs.entity_names)}


_validators: dict = {}


@dataclass
class Options:
    broker: str
    data_dir: str
    url: str
    registry: Any
    sets: list[str]
    topic_prefix: str = ""
    topic: str | None = None
    app_id: str = "featurestream"
    sink_group: str | None = None
    sample_rate: float = 1.0
    max_entities: int | None = 1000
    entities_from: str = "both"
    wait_caught_up: float = 60.0
    rel_tol: float = 1e-9
    abs_tol: float = 1e-9
    http_timeout: float = 10.0
    concurrency: int = 8
    http_headers: dict = field(default_factory=dict)  # the worker's bearer token (stream.auth)
    kafka_config: dict = field(default_factory=dict)  # kafka-python TLS/SASL arguments


def _lag(end: dict, committed: dict, begin: dict) -> dict[int, int]:
    """Per partition, the records below ``end`` a group has yet to consume: from its committed offset, or
    from where the topic begins when retention removed more (a group never commits a partition in which it
    found nothing to consume)."""
    return {tp.partition: max(0, end[tp] - max(committed.get(tp, 0), begin.get(tp, 0))) for tp in end}


def verify_set(opts: Options, offsets: Offsets, set_name: str) -> dict:
    from aggregations import FeatureVector
    from sinks import get_offline_features, read_events
    from sinks.parquet_sink import default_group

    fs = opts.registry.feature_set(set_name)
    topic = opts.topic or f"{opts.topic_prefix}{fs.source}"
    sink_group = opts.sink_group or default_group(fs, opts.app_id)
    tps = offsets.partitions(topic)
    end = offsets.end(tps)
    report: dict[str, Any] = {
        "feature_set": set_name,
        "topic": topic,
        "worker_group": opts.app_id,
        "sink_group": sink_group,
        "end_offsets": {tp.partition: end[tp] for tp in tps},
    }

    # 1. Wait until both sides have fully seen everything below `end`.
    deadline = time.monotonic() + opts.wait_caught_up
    while True:
        begin = offsets.begin(tps)
        worker_lag = _lag(end, offsets.committed(opts.app_id, tps), begin)
        sink_lag = _lag(end, offsets.committed(sink_group, tps), begin)
        if not any(worker_lag.values()) and not any(sink_lag.values()):
            break
        if time.monotonic() >= deadline:
            report.update(status="not_caught_up", worker_lag=worker_lag, sink_lag=sink_lag)
            return report
        time.sleep(0.5)
    report.update(worker_lag=worker_lag, sink_lag=sink_lag)

    # 2. Entities: keys in the dataset and/or on the topic within the reach of the longest window.
    reach = fs.plan.reach_ms  # None: a plain feature without ttl (every stored entity)
    reach_ms = 0 if reach is None else int(time.time() * 1000) - reach
    keys: set[str] = set()
    if opts.entities_from in ("dataset", "both"):
        stored = read_events(fs, opts.data_dir, columns=list(fs.entity_names), start_ms=reach_ms)
        if len(stored):
            from aggregations.schema import entity_keys

            keys.update(entity_keys(fs, stored).tolist())
    if opts.entities_from in ("topic", "both"):
        start = offsets.start_at_time(tps, reach_ms, end)
        for _p, _o, key, value in offsets.records(tps, start, end):
            keys.update(entity_of_record(fs, key, value))
    # A Kafka key is an entity key only if it has the set's number of parts: a compound-key set's events
    # may be keyed by one part (e.g. user_id), and the worker forwards them to their entity's partition.
    keys = {k for k in keys if k.count("\x1f") == len(fs.entity_names) - 1}
    sampled = sample_keys(keys, opts.sample_rate, opts.max_entities)
    report.update(entities_seen=len(keys), entities_sampled=len(sampled))

    # 3. Online reads (each at its own `at`), then the same features offline at the same times.
    names = [f.name for f in fs.plan.features] + [f.name for f in fs.plan.latest]
    ops = {f.name: f.op for f in [*fs.plan.features, *fs.plan.latest]}
    with ThreadPoolExecutor(max(1, opts.concurrency)) as pool:
        bodies = list(
            pool.map(lambda k: read_online(opts.url, set_name, k, names, opts.http_timeout, opts.http_headers), sampled)
        )
    online = {b["entity"]: b["features"] for b in bodies}
    offline: dict[str, dict] = {}
    if sampled:
        entity_cols = fs.entity_names
        split = [k.split("\x1f") if len(entity_cols) > 1 else [k] for k in sampled]
        rows = pd.DataFrame({c: [parts[i] for parts in split] for i, c in enumerate(entity_cols)})
        rows["__verify_ts"] = np.array([b["at"] for b in bodies], dtype=np.int64)
        vector = FeatureVector("__verify__", [f"{set_name}.{n}" for n in names])
        frame = get_offline_features(
            vector, rows, opts.data_dir, registry={set_name: fs}, timestamp_column="__verify_ts"
        )
        for i, key in enumerate(sampled):
            offline[key] = {n: frame[n].iloc[i] for n in names}

    # 4. Events that arrived meanwhile: leave their entities out.
    after = offsets.end(tps)
    in_flight: set[str] = set()
    for _p, _o, key, value in offsets.records(tps, end, after):
        in_flight.update(entity_of_record(fs, key, value))
    excluded = sorted(in_flight & set(online))
    for key in excluded:
        online.pop(key, None)
    report.update(
        in_flight_events=sum(after[tp] - end[tp] for tp in tps),
        in_flight_entities=len(excluded),
        compared_entities=len(online),
    )

    stats = compare_frames(ops, online, offline, opts.rel_tol, opts.abs_tol)
    report["features"] = {n: st.as_dict() for n, st in stats.items()}
    bad = [n for n, st in stats.items() if st.bad]
    report["inconsistent_features"] = bad
    # On-read features need a request's inputs (e.g. the payment's amount): there is nothing to read them for.
    report["skipped_on_read"] = [f.name for f in fs.on_read]
    report["status"] = "inconsistent" if bad else "consistent"
    return report


def run_once(opts: Options) -> dict:
    offsets = Offsets(opts.broker, opts.kafka_config)
    try:
        sets = [verify_set(opts, offsets, name) for name in opts.sets]
    finally:
        offsets.close()
    statuses = {s["status"] for s in sets}
    status = (
        "not_caught_up"
        if "not_caught_up" in statuses
        else ("inconsistent" if "inconsistent" in statuses else "consistent")
    )
    return {
        "status": status,
        "checked_at": int(time.time() * 1000),
        "rel_tol": opts.rel_tol,
        "abs_tol": opts.abs_tol,
        "feature_sets": sets,
    }


def exit_code(report: dict) -> int:
    return {"consistent": EXIT_OK, "inconsistent": EXIT_INCONSISTENT}.get(
        report["status"], EXIT_NOT_CAUGHT_UP
    )
