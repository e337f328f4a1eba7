"""``featurestream verify``: online/offline consistency of a live deployment.

For each feature set: sample entities deterministically by key hash, read their features from a running
worker over HTTP (each answer carries its read time ``at``), compute the same features at the same ``at``
from the Parquet dataset with ``sinks.get_offline_features``, and report per feature the mismatch, missing
and extra rates and the largest deltas (in the spirit of Chronon's consistency metrics).

In-flight events are never counted as mismatches:

1. Before reading, it takes the source topic's end offsets E and waits (``--wait-caught-up``) until both the
   worker group (``--app-id``) and the sink group (``--sink-group``) have committed at least E on every
   partition: every event below E is then applied online and written offline. If they do not catch up in
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
inconsistency.

Exit status: 0 consistent, 1 inconsistent (any mismatch, missing or extra), 3 not caught up, 2 usage error.
With ``--every SECONDS`` it runs until stopped and exports ``featurestream_verify_mismatch_ratio
{feature_set, feature}`` (mismatched + missing + extra over compared) on ``--metrics-port``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from aggregations.ops import OPS
from stream.auth import client_headers, resolve_token

from .config import env

EXACT_OPS = frozenset({"count", "count_distinct", "min", "max", "first", "last", "approx_count_distinct", "last_k"})
ZERO_WHEN_EMPTY = frozenset({"count", "count_distinct", "approx_count_distinct", "sum", "sqr"})
#: Sketch ops whose value depends on merge order: differences within their error bound are expected.
APPROX_OPS = frozenset(name for name, op in OPS.items() if not op.deterministic)
EXIT_OK, EXIT_INCONSISTENT, EXIT_USAGE, EXIT_NOT_CAUGHT_UP = 0, 1, 2, 3
TOP_DELTAS = 5


# --- pure parts: sampling and comparison -----------------------------------------------------------------


def key_hash(key: str) -> int:
    """A stable 64-bit hash of an entity key (the same on every machine and run)."""
    return int.from_bytes(
        hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"
    )


def sample_keys(keys, sample_rate: float = 1.0, max_entities: int | None = None) -> list[str]:
    """Keys whose hash falls under ``sample_rate``; at most ``max_entities``, those of smallest hash."""
    scored = sorted((key_hash(k), k) for k in set(keys))
    limit = int(sample_rate * 2**64)
    chosen = [k for h, k in scored if sample_rate >= 1.0 or h < limit]
    return chosen if max_entities is None else chosen[:max_entities]


def is_empty(op: str, value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return op in ZERO_WHEN_EMPTY and isinstance(value, int | float) and value == 0


def _plain(value):
    """numpy/pandas scalars -> Python; NaN/NA -> None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.ndarray):  # a list-valued feature (top_k, last_k) read back through Arrow
        value = value.tolist()
    return value


def compare_value(op: str, online, offline, rel_tol: float, abs_tol: float) -> tuple[str, float | None]:
    """('match' | 'missing' | 'extra' | 'mismatch' | 'approx_differ', |delta| when both numeric)."""
    online, offline = _plain(online), _plain(offline)
    e_on, e_off = is_empty(op, online), is_empty(op, offline)
    if e_on and e_off:
        return "match", None
    numeric = isinstance(online, int | float) and isinstance(offline, int | float)
    delta = abs(float(online) - float(offline)) if numeric and not (e_on or e_off) else None
    if e_on:
        return "missing", (abs(float(offline)) if isinstance(offline, int | float) else None)
    if e_off:
        return "extra", (abs(float(online)) if isinstance(online, int | float) else None)
    if op in EXACT_OPS or not numeric:
        same = (float(online) == float(offline)) if numeric else online == offline
    else:
        same = math.isclose(float(online), float(offline), rel_tol=rel_tol, abs_tol=abs_tol)
    if not same and op in APPROX_OPS:
        return "approx_differ", delta
    return ("match" if same else "mismatch"), delta


@dataclass
class FeatureStats:
    op: str
    compared: int = 0
    mismatch: int = 0
    missing: int = 0
    extra: int = 0
    approx_differ: int = 0  # approximate sketch values that differ (not an inconsistency; see the docstring)
    worst: list = field(default_factory=list)  # (delta, entity, online, offline, kind)

    def add(self, entity: str, online, offline, rel_tol: float, abs_tol: float) -> None:
        kind, delta = compare_value(self.op, online, offline, rel_tol, abs_tol)
        self.compared += 1
        if kind == "match":
            return
        setattr(self, kind, getattr(self, kind) + 1)
        self.worst.append(
            (math.inf if delta is None else delta, entity, _plain(online), _plain(offline), kind)
        )
        self.worst.sort(key=lambda w: -w[0])
        del self.worst[TOP_DELTAS:]

    @property
    def bad(self) -> int:
        return self.mismatch + self.missing + self.extra

    def ratio(self, n: int) -> float:
        return n / self.compared if self.compared else 0.0

    def as_dict(self) -> dict:
        return {
            "op": self.op,
            "compared": self.compared,
            "mismatch": self.mismatch,
            "missing": self.missing,
            "extra": self.extra,
            "approx_differ": self.approx_differ,
            "mismatch_rate": self.ratio(self.mismatch),
            "missing_rate": self.ratio(self.missing),
            "extra_rate": self.ratio(self.extra),
            "inconsistent_ratio": self.ratio(self.bad),
            "largest_deltas": [
                {"entity": e, "online": on, "offline": off, "kind": k, "delta": None if math.isinf(d) else d}
                for d, e, on, off, k in self.worst
            ],
        }


def compare_frames(
    ops: dict[str, str], online: dict[str, dict], offline: dict[str, dict], rel_tol: float, abs_tol: float
) -> dict[str, FeatureStats]:
    """Per feature stats over the entities of ``online`` (entity -> {feature: value}); ``offline`` likewise."""
    stats = {name: FeatureStats(op) for name, op in ops.items()}
    for entity, values in online.items():
        other = offline.get(entity, {})
        for name, st in stats.items():
            st.add(entity, values.get(name), other.get(name), rel_tol, abs_tol)
    return stats


# --- Kafka: offsets, lag, keys ---------------------------------------------------------------------------


class Offsets:
    """End offsets of a topic and committed offsets of consumer groups (kafka-python)."""

    def __init__(self, broker: str, kafka_config: dict | None = None):
        from kafka import KafkaAdminClient, KafkaConsumer

        self.broker = broker
        self.admin = KafkaAdminClient(bootstrap_servers=broker, client_id="featurestream-verify", **(kafka_config or {}))
        self.consumer = KafkaConsumer(
            bootstrap_servers=broker,
            client_id="featurestream-verify",
            enable_auto_commit=False,
            group_id=None,
            **(kafka_config or {}),
        )

    def close(self) -> None:
        self.consumer.close()
        self.admin.close()

    def partitions(self, topic: str) -> list:
        from kafka import TopicPartition

        deadline = time.monotonic() + 30
        while True:
            parts = self.consumer.partitions_for_topic(topic)
            if parts:
                return [TopicPartition(topic, p) for p in sorted(parts)]
            if time.monotonic() > deadline:
                raise ValueError(f"topic {topic!r} not found on {self.broker}")
            self.consumer.topics()  # refresh metadata
            time.sleep(0.5)

    def end(self, tps) -> dict:
        return {tp: int(o) for tp, o in self.consumer.end_offsets(list(tps)).items()}

    def committed(self, group: str, tps) -> dict:
        got = self.admin.list_group_offsets({group: None}).get(group, {})
        out = {}
        for tp in tps:
            meta = got.get(tp)
            out[tp] = (
                int(meta.offset) if meta is not None and meta.offset is not None and meta.offset >= 0 else 0
            )
        return out

    def records(self, tps, start: dict, stop: dict, timeout_s: float = 60.0):
        """(partition, offset, key bytes, value bytes) of each record in ``[start[tp], stop[tp])``."""
        todo = [tp for tp in tps if stop.get(tp, 0) > start.get(tp, 0)]
        if not todo:
            return
        self.consumer.assign(todo)
        for tp in todo:
            self.consumer.seek(tp, start[tp])
        done: set = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(todo):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading records of {todo[0].topic} timed out after {timeout_s:g}s")
            for tp, batch in self.consumer.poll(timeout_ms=500, max_records=5000).items():
                for r in batch:
                    if r.offset < stop[tp]:
                        yield tp.partition, r.offset, r.key, r.value
                if self.consumer.position(tp) >= stop[tp]:
                    done.add(tp)
                    self.consumer.pause(tp)
            for tp in todo:  # compacted gaps, transaction markers: the position may pass stop without records
                if tp not in done and self.consumer.position(tp) >= stop[tp]:
                    done.add(tp)
        self.consumer.resume(*todo)
        self.consumer.unsubscribe()

    def start_at_time(self, tps, ms: int, end: dict) -> dict:
        found = self.consumer.offsets_for_times({tp: max(0, int(ms)) for tp in tps})
        return {tp: (int(found[tp].offset) if found.get(tp) is not None else end[tp]) for tp in tps}


def entity_of_record(fs, key: bytes | None, value: bytes | None) -> set[str]:
    """The entity keys a record may touch: its payload's entity key and its Kafka key."""
    out = set()
    if key:
        out.add(key.decode("utf-8", "replace"))
    try:
        obj = json.loads(value) if value else None
    except (ValueError, TypeError):
        obj = None
    if isinstance(obj, dict):
        parts = [obj.get(n) for n in fs.entity_names]
        if all(isinstance(p, str) and p for p in parts):
            out.add("\x1f".join(parts))
    return out


# --- online reads ---------------------------------------------------------------------------------------


def read_online(
    url: str, set_name: str, entity: str, features: list[str], timeout: float, headers: dict | None = None
) -> dict:
    path = "/features/{}/{}".format(
        urllib.parse.quote(set_name, safe=""), urllib.parse.quote(entity, safe="")
    )
    query = "?" + urllib.parse.urlencode({"features": ",".join(features)})
    last: Exception | None = None
    for attempt in range(5):
        try:
            request = urllib.request.Request(url.rstrip("/") + path + query, headers=headers or {})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                detail = exc.read()[:200]
                raise ValueError(
                    f"worker answered HTTP {exc.code} for {set_name}/{entity}: {detail!r}"
                ) from None
            last = exc
        except OSError as exc:
            last = exc
        time.sleep(0.5 * (attempt + 1))
    raise ConnectionError(f"cannot read {set_name}/{entity} from {url}: {last}")


# --- one verification run ---------------------------------------------------------------------------------


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


def _lag(end: dict, committed: dict) -> dict[int, int]:
    return {tp.partition: max(0, end[tp] - committed.get(tp, 0)) for tp in end}


def verify_set(opts: Options, offsets: Offsets, set_name: str) -> dict:
    from aggregations import FeatureVector
    from sinks import get_offline_features, read_events
    from sinks.parquet_sink import default_group

    fs = opts.registry.feature_set(set_name)
    topic = opts.topic or f"{opts.topic_prefix}{fs.source}"
    sink_group = opts.sink_group or default_group(fs)
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
        worker_lag = _lag(end, offsets.committed(opts.app_id, tps))
        sink_lag = _lag(end, offsets.committed(sink_group, tps))
        if not any(worker_lag.values()) and not any(sink_lag.values()):
            break
        if time.monotonic() >= deadline:
            report.update(status="not_caught_up", worker_lag=worker_lag, sink_lag=sink_lag)
            return report
        time.sleep(0.5)
    report.update(worker_lag=worker_lag, sink_lag=sink_lag)

    # 2. Entities: keys in the dataset and/or on the topic within the reach of the longest window.
    longest = fs.plan.longest
    reach_ms = int(time.time() * 1000) - (longest.length + longest.period)
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
    names = [f.name for f in fs.plan.features]
    ops = {f.name: f.op for f in fs.plan.features}
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


def format_text(report: dict) -> str:
    lines = [
        f"verify: {report['status'].upper()} (float tolerance rel {report['rel_tol']:g}, "
        f"abs {report['abs_tol']:g})"
    ]
    for s in report["feature_sets"]:
        lines.append(f"feature set {s['feature_set']} (topic {s['topic']}):")
        if s["status"] == "not_caught_up":
            lines.append(
                f"  not caught up: worker group {s['worker_group']} lag {s['worker_lag']}, "
                f"sink group {s['sink_group']} lag {s['sink_lag']}; nothing compared"
            )
            continue
        lines.append(
            f"  entities: {s['entities_seen']} seen, {s['entities_sampled']} sampled, "
            f"{s['compared_entities']} compared, {s['in_flight_entities']} left out "
            f"({s['in_flight_events']} events arrived while verifying)"
        )
        lines.append(
            f"  {'feature':<24} {'compared':>8} {'mismatch':>9} {'missing':>8} {'extra':>8}  largest deltas"
        )
        for name, f in s["features"].items():
            worst = "; ".join(
                f"{d['entity']}: online {d['online']!r} offline {d['offline']!r} ({d['kind']})"
                for d in f["largest_deltas"][:3]
            )
            lines.append(
                f"  {name:<24} {f['compared']:>8} {f['mismatch_rate']:>9.2%} {f['missing_rate']:>8.2%} "
                f"{f['extra_rate']:>8.2%}  {worst}"
            )
        approx = [f"{name} ({f['approx_differ']})" for name, f in s["features"].items() if f.get("approx_differ")]
        if approx:
            lines.append(f"  approximate sketches that differ (expected within their error bound): {', '.join(approx)}")
        if s["inconsistent_features"]:
            lines.append(f"  INCONSISTENT: {', '.join(s['inconsistent_features'])}")
    return "\n".join(lines)


# --- CLI ------------------------------------------------------------------------------------------------


def add_command(subparsers, common: argparse.ArgumentParser) -> None:
    v = subparsers.add_parser(
        "verify",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="check that online (worker over HTTP) and offline (Parquet) features agree",
        description=(
            "Sample entities by key hash, read their features from a running worker at t, compute the same\n"
            "features at t from the Parquet dataset, and report per feature the mismatch, missing and extra\n"
            "rates and the largest deltas. Waits until the worker and sink groups have committed the source\n"
            "topic's end offsets first; entities with events arriving while it runs are left out.\n"
            "Exit: 0 consistent, 1 inconsistent, 3 not caught up within --wait-caught-up, 2 usage error."
        ),
        epilog="examples:\n  featurestream verify --url http://127.0.0.1:6066 --max-entities 500\n"
        "  featurestream verify --every 300 --metrics-port 9310 --json",
    )
    v.add_argument(
        "--url",
        default=env("URL", "http://127.0.0.1:6066"),
        help="a worker's base URL (env FEATURESTREAM_URL; default http://127.0.0.1:6066)",
    )
    v.add_argument(
        "--feature-set",
        action="append",
        dest="feature_sets",
        metavar="NAME",
        help="feature set to verify (repeatable; default: every set)",
    )
    v.add_argument(
        "--app-id",
        default=env("APP_ID", "featurestream"),
        help="the workers' app id = consumer group (env FEATURESTREAM_APP_ID; default featurestream)",
    )
    v.add_argument(
        "--topic-prefix",
        default=env("TOPIC_PREFIX", ""),
        help="source topic = PREFIX + FeatureSet.source, as for the worker (env FEATURESTREAM_TOPIC_PREFIX)",
    )
    v.add_argument("--topic", help="the source topic (one feature set only; overrides --topic-prefix)")
    v.add_argument(
        "--sink-group", help="the sink's consumer group (one set only; default featurestream-sink-<set>)"
    )
    v.add_argument(
        "--sample-rate",
        type=float,
        default=1.0,
        help="fraction of entities to check, chosen by key hash (deterministic; default 1.0)",
    )
    v.add_argument(
        "--max-entities",
        type=int,
        default=1000,
        help="at most this many entities per set, those of smallest key hash (default 1000; 0: no limit)",
    )
    v.add_argument(
        "--entities-from",
        choices=["dataset", "topic", "both"],
        default="both",
        help="where entity keys are listed: the Parquet dataset, the source topic within the longest "
        "window, or both (default both: an entity missing from either side is still checked)",
    )
    v.add_argument(
        "--wait-caught-up",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="wait this long for worker and sink to commit the topic's end (default 60); else exit 3",
    )
    v.add_argument(
        "--rel-tol", type=float, default=1e-9, help="relative tolerance of float features (default 1e-9)"
    )
    v.add_argument(
        "--abs-tol", type=float, default=1e-9, help="absolute tolerance of float features (default 1e-9)"
    )
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument(
        "--every",
        type=float,
        metavar="SECONDS",
        help="run every SECONDS until stopped, exporting the mismatch ratio to Prometheus",
    )
    v.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("VERIFY_METRICS_PORT", "9310")),
        help="with --every: port of the Prometheus endpoint (default 9310)",
    )
    v.set_defaults(func=run_verify)


def options_from_args(args) -> Options:
    from aggregations.loading import load_registry

    registry = load_registry(args.definitions)
    sets = args.feature_sets or list(registry.feature_sets)
    for name in sets:
        registry.feature_set(name)  # KeyError with the known names
    if (args.topic or args.sink_group) and len(sets) != 1:
        raise ValueError("--topic and --sink-group apply to one feature set: pass exactly one --feature-set")
    if not 0.0 < args.sample_rate <= 1.0:
        raise ValueError(f"--sample-rate must be in (0, 1], got {args.sample_rate}")
    return Options(
        broker=args.broker,
        data_dir=args.data_dir,
        url=args.url,
        registry=registry,
        sets=sets,
        topic_prefix=args.topic_prefix,
        topic=args.topic,
        app_id=args.app_id,
        sink_group=args.sink_group,
        sample_rate=args.sample_rate,
        max_entities=args.max_entities or None,
        entities_from=args.entities_from,
        wait_caught_up=args.wait_caught_up,
        rel_tol=args.rel_tol,
        abs_tol=args.abs_tol,
        http_headers=client_headers(resolve_token(getattr(args, "auth_token_file", None))),
        kafka_config=args.kafka.client_config() if getattr(args, "kafka", None) else {},
    )


def _emit(report: dict, as_json: bool) -> None:
    print(json.dumps(report, indent=2, default=str) if as_json else format_text(report), flush=True)


def run_verify(args) -> int:
    import logging

    logging.getLogger("kafka").setLevel(logging.ERROR)
    opts = options_from_args(args)
    if args.every is None:
        report = run_once(opts)
        _emit(report, args.json)
        return exit_code(report)
    return run_periodically(opts, args.every, args.metrics_port, args.json)


def run_periodically(opts: Options, every_s: float, port: int, as_json: bool) -> int:
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

    registry = CollectorRegistry()
    ratio = Gauge(
        "featurestream_verify_mismatch_ratio",
        "Share of compared values that mismatch, are missing online or extra online",
        ["feature_set", "feature"],
        registry=registry,
    )
    runs = Counter("featurestream_verify_runs", "Verification runs by outcome", ["status"], registry=registry)
    last = Gauge("featurestream_verify_last_run_timestamp_seconds", "End of the last run", registry=registry)
    lag = Gauge(
        "featurestream_verify_lag_events",
        "Events not yet committed by a group at the last run",
        ["feature_set", "group"],
        registry=registry,
    )
    start_http_server(port, addr="0.0.0.0", registry=registry)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        try:
            report = run_once(opts)
        except Exception as exc:  # a broker or worker hiccup must not end the periodic check
            runs.labels("error").inc()
            print(f"featurestream verify: run failed: {exc}", file=sys.stderr, flush=True)
        else:
            for s in report["feature_sets"]:
                lag.labels(s["feature_set"], "worker").set(sum(s.get("worker_lag", {}).values()))
                lag.labels(s["feature_set"], "sink").set(sum(s.get("sink_lag", {}).values()))
                for name, f in s.get("features", {}).items():
                    ratio.labels(s["feature_set"], name).set(f["inconsistent_ratio"])
            runs.labels(report["status"]).inc()
            last.set(time.time())
            _emit(report, as_json)
        stop.wait(every_s)
    return 0
