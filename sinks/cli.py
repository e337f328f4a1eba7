"""``featurestream sink``, ``training-set``, ``compact``, ``backfill``, ``prune`` and ``bootstrap``: the offline command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pandas as pd

from aggregations.loading import load_registry

from .parquet_sink import DEFAULT_FLUSH_EVENTS, DEFAULT_FLUSH_SECONDS, ParquetSink, default_group


def add_commands(subparsers, shared) -> None:
    """Add the offline subcommands; ``shared(parser, *names)`` adds the CLI's shared options."""
    p = subparsers.add_parser(
        "sink",
        help="write feature-set events from Kafka to Parquet (the offline store)",
        description=(
            "Consume each feature set's source topic in its own consumer group and append the valid events to "
            "<data-dir>/<feature set>/date=YYYY-MM-DD/part-p<partition>-o<first>-<last>.parquet. Files are "
            "written atomically and offsets committed after them, so a killed sink neither loses nor repeats "
            "events. Invalid events are counted and skipped (the worker dead-letters them)."
        ),
        epilog="example: featurestream sink --once --data-dir data",
    )
    shared(p, "definitions", "broker", "data_dir", "app_id", "topic_prefix", "kafka")
    p.add_argument(
        "--feature-set",
        action="append",
        dest="feature_sets",
        metavar="NAME",
        help="feature set to sink (repeatable; default: every set in the definitions)",
    )
    p.add_argument(
        "--flush-events",
        type=int,
        default=DEFAULT_FLUSH_EVENTS,
        help=f"write a file after this many buffered events (default {DEFAULT_FLUSH_EVENTS})",
    )
    p.add_argument(
        "--flush-seconds",
        type=float,
        default=DEFAULT_FLUSH_SECONDS,
        help=f"or after this many seconds (default {DEFAULT_FLUSH_SECONDS:g})",
    )
    p.add_argument("--once", action="store_true", help="stop once caught up with the end of the topic")
    p.add_argument("--group", help="consumer group (default <app-id>-sink-<feature set>; one set only)")
    p.add_argument(
        "--topic", help="read this topic instead of the feature set's source (one set only; tests, replays)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every flush")
    p.set_defaults(func=run_sink)

    t = subparsers.add_parser(
        "training-set",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="export a point-in-time correct training set (a versioned dataset with --name)",
        description=(
            "Compute features at each row's entities and timestamp from the Parquet datasets: only events\n"
            "strictly before the row's time count (no label leakage). The features are a vector of the\n"
            "definitions (--vector) or every feature of the given sets (--feature-set; in a vector, 'set.*').\n"
            "Without --rows, one row per stored event of the first feature set, at the event's own time.\n"
            "--name writes a new version <data-dir>/datasets/NAME/v<N>/ (data.parquet + manifest.json: the\n"
            "definitions and their source text, the rows' hash, the data snapshot, as-known-at, the command);\n"
            "see `featurestream datasets list|show|rebuild`."
        ),
        epilog=(
            "examples:\n"
            "  featurestream training-set --vector fraud --rows labels.parquet --name fraud\n"
            "  featurestream training-set --feature-set transactions --out train.parquet"
        ),
    )
    shared(t, "definitions", "data_dir")
    what = t.add_mutually_exclusive_group(required=True)
    what.add_argument("--vector", help="feature vector name from the definitions")
    what.add_argument(
        "--feature-set",
        action="append",
        dest="feature_sets",
        metavar="NAME",
        help="every feature of this feature set (repeatable; the vector 'NAME.*')",
    )
    t.add_argument("--rows", help="Parquet or CSV file of query rows: entity columns + the timestamp column")
    t.add_argument(
        "--name", help="write a new version of the training set of this name under <data-dir>/datasets/"
    )
    t.add_argument("--out", help="also (or only) write the result to this Parquet file")
    t.add_argument("--timestamp-column", default="ts", help="timestamp column of the rows (default ts)")
    t.add_argument(
        "--as-known-at", action="store_true", help="use only events that had arrived by each row's time"
    )
    t.add_argument("--partitions", type=int, help="entity-hash partitions (default: from the data size)")
    t.add_argument(
        "--workers",
        type=int,
        default=1,
        help="compute partitions in this many processes in parallel (default 1)",
    )
    add_engine_arguments(t)
    t.set_defaults(func=run_training_set)
    add_maintenance_commands(subparsers, shared)
    add_datasets_command(subparsers, shared)


def add_maintenance_commands(subparsers, shared) -> None:
    """Add ``compact``, ``backfill`` and ``prune``."""
    raw = argparse.RawDescriptionHelpFormatter
    c = subparsers.add_parser(
        "compact",
        formatter_class=raw,
        help="merge small Parquet files into files of a target size, sorted by entity then time",
        description=(
            "Merge each feature set's small files, per event date and Kafka partition, into files of about\n"
            "--target-mb, sorted by entity, then event time. Safe while the sink, backfill and readers run:\n"
            "readers see each event exactly once before, during and after, and a compaction killed at any\n"
            "point is finished (or undone) by the next run of compact or prune."
        ),
        epilog="examples:\n  featurestream compact --data-dir data\n  featurestream compact --feature-set transactions --target-mb 128",
    )
    shared(c, "definitions", "data_dir")
    c.add_argument(
        "--feature-set",
        action="append",
        dest="feature_sets",
        metavar="NAME",
        help="feature set to compact (repeatable; default: every set)",
    )
    c.add_argument("--target-mb", type=float, default=64, help="target file size in MB on disk (default 64)")
    c.add_argument(
        "--min-files", type=int, default=2, help="merge at least this many files at a time (default 2)"
    )
    c.add_argument(
        "--no-statistics",
        action="store_true",
        help="skip writing <dataset>/_statistics.json (read by `featurestream describe SET`)",
    )
    c.set_defaults(func=run_compact)

    b = subparsers.add_parser(
        "backfill",
        formatter_class=raw,
        help="replay a topic into the Parquet dataset (resumable, idempotent with the live sink)",
        description=(
            "Replay the feature set's source topic (or --topic) from the beginning, an offset or a time into\n"
            "its Parquet dataset. Offsets already in the dataset are skipped, so a backfill never duplicates\n"
            "what the live sink (or an earlier backfill) wrote. It stops at the end of each partition as of\n"
            "its start, and no further than the live sink group's committed offset (the live sink owns the\n"
            "rest), so both can run at once; --to-end ignores the sink (only while no sink runs).\n"
            "Progress is saved in <dataset>/_backfill.json: the same command, rerun, resumes."
        ),
        epilog=(
            "examples:\n"
            "  featurestream backfill --feature-set transactions\n"
            "  featurestream backfill --feature-set transactions --from-offset 120000\n"
            "  featurestream backfill --feature-set transactions --from-time 2026-01-01T00:00:00Z"
        ),
    )
    shared(b, "definitions", "broker", "data_dir", "app_id", "topic_prefix", "kafka")
    b.add_argument("--feature-set", required=True, metavar="NAME", help="feature set to backfill")
    b.add_argument("--topic", help="replay this topic instead of the feature set's source")
    start = b.add_mutually_exclusive_group()
    start.add_argument("--from-offset", type=int, help="start every partition at this offset")
    start.add_argument(
        "--from-time", help="start at the first record at/after this time (epoch ms or ISO-8601)"
    )
    b.add_argument(
        "--to-end", action="store_true", help="replay to the end even past the live sink's commits"
    )
    b.add_argument("--sink-group", help="the live sink's consumer group (default <app-id>-sink-<set>)")
    b.add_argument("--flush-events", type=int, default=200_000, help="events per write (default 200000)")
    b.add_argument("--no-progress", action="store_true", help="no progress (a bar on a terminal, else a line every 10 s)")
    b.set_defaults(func=run_backfill)

    r = subparsers.add_parser(
        "prune",
        aliases=["retention"],
        formatter_class=raw,
        help="delete dataset days older than --keep-days (never what the longest window needs)",
        description=(
            "Delete whole date=YYYY-MM-DD directories whose events are all older than --keep-days AND older\n"
            "than the start of the feature set's longest window (plus one period) at the newest stored day,\n"
            "so online state can always be rebuilt from Parquet. Each day disappears atomically for readers."
        ),
        epilog="examples:\n  featurestream prune --keep-days 180 --dry-run\n  featurestream prune --feature-set transactions --keep-days 400",
    )
    shared(r, "definitions", "data_dir")
    r.add_argument(
        "--feature-set",
        action="append",
        dest="feature_sets",
        metavar="NAME",
        help="feature set to prune (repeatable; default: every set)",
    )
    r.add_argument("--keep-days", type=float, required=True, help="keep at least this many days of history")
    r.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    r.set_defaults(func=run_prune)

    s = subparsers.add_parser(
        "bootstrap",
        formatter_class=raw,
        help="build a feature set's online state from Parquet history (full windows on day one)",
        description=(
            "Rebuild the online tile state of a new or changed feature set from its Parquet dataset and\n"
            "write it to the tile table's changelog topic (<app-id>-<set>-tiles-<fingerprint>-changelog),\n"
            "each entity in its home partition, with the highest stored source offset per entity. Then\n"
            "start the workers on fresh state dirs: they recover the table from the changelog and apply\n"
            "only source events past each entity's stored offset, so no event counts twice or is missed.\n"
            "Refuses (writes nothing) if the changelog already holds state (--force writes over it: the\n"
            "way to rebuild a rolled-back definition's stale state), or if the worker group has committed\n"
            "source offsets beyond what the dataset holds (run `featurestream sink --once` first)."
        ),
        epilog="example:\n  featurestream sink --once --feature-set transactions\n"
        "  featurestream bootstrap --feature-set transactions",
    )
    shared(s, "definitions", "broker", "data_dir", "app_id", "kafka")
    s.add_argument("--feature-set", required=True, metavar="NAME", help="feature set to bootstrap")
    s.add_argument("--topic", help="the source topic (default: the topic the dataset was written from)")
    s.add_argument("--now", type=int, help="expire state as of this time, epoch ms (default: now)")
    s.add_argument("--force", action="store_true", help="write over state the changelog already holds (see above)")
    s.add_argument("--sink-group", help="the live sink's consumer group (default <app-id>-sink-<set>)")
    s.add_argument(
        "--partitions", type=int, help="entity-hash partitions of the work (default: from the data size)"
    )
    s.add_argument("--no-progress", action="store_true", help="no progress (a bar on a terminal, else a line every 10 s)")
    add_engine_arguments(s)
    s.set_defaults(func=run_bootstrap)


def add_engine_arguments(parser) -> None:
    """``--engine local|spark``, ``--spark-master`` and ``--spark-conf``: where per-entity work runs."""
    parser.add_argument(
        "--engine",
        choices=["local", "spark"],
        default=os.environ.get("FEATURESTREAM_ENGINE", "local"),
        help="local: this machine's processes (default; env FEATURESTREAM_ENGINE); spark: Apache Spark tasks "
        "(pip install 'featurestream[spark]')",
    )
    parser.add_argument(
        "--spark-master",
        default=os.environ.get("FEATURESTREAM_SPARK_MASTER"),
        metavar="URL",
        help="with --engine spark: local[*] (default), local[N] or spark://host:7077 (env FEATURESTREAM_SPARK_MASTER)",
    )
    parser.add_argument(
        "--spark-conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --engine spark: a Spark setting, e.g. spark.executor.memory=4g (repeatable)",
    )


def _spark(args):
    """The SparkSession the command's --engine spark asks for, or None for the local engine."""
    if getattr(args, "engine", "local") != "spark":
        return None
    conf = {}
    for item in args.spark_conf:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--spark-conf takes KEY=VALUE, got {item!r}")
        conf[key.strip()] = value.strip()
    from .spark_engine import spark_session

    try:
        return spark_session(args.spark_master, conf)
    except ImportError as exc:  # pyspark is an optional extra
        raise ValueError(str(exc)) from None


def _kafka_config(args) -> dict:
    """kafka-python TLS/SASL arguments the CLI parsed (``args.kafka``: featurestream.kafka_security)."""
    kafka = getattr(args, "kafka", None)
    return kafka.client_config() if kafka is not None else {}


def _sets(args):
    registry = load_registry(args.definitions)
    return [registry.feature_set(n) for n in (args.feature_sets or list(registry.feature_sets))]


def run_compact(args) -> int:
    from .compaction import compact

    for fs in _sets(args):
        stats = compact(
            fs,
            args.data_dir,
            target_bytes=int(args.target_mb * (1 << 20)),
            min_files=args.min_files,
            progress=True,
        )
        print(f"compact {fs.name}: {stats.summary()}")
        if not args.no_statistics:
            from .statistics import refresh_statistics, statistics_path

            described = refresh_statistics(fs, args.data_dir)
            print(f"statistics {fs.name}: {described['rows']} events -> {statistics_path(fs, args.data_dir)}")
    return 0


def run_backfill(args) -> int:
    from .backfill import backfill

    logging.getLogger("kafka").setLevel(logging.WARNING)
    fs = load_registry(args.definitions).feature_set(args.feature_set)
    start = (
        args.from_offset
        if args.from_offset is not None
        else f"ts:{args.from_time}"
        if args.from_time
        else "earliest"
    )
    stats = backfill(
        fs,
        args.data_dir,
        args.broker,
        topic=args.topic or f"{args.topic_prefix}{fs.source}",
        start=start,
        until_sink=not args.to_end,
        sink_group=args.sink_group or default_group(fs, args.app_id),
        flush_events=args.flush_events,
        progress=not args.no_progress,
        client_config=_kafka_config(args),
    )
    print(f"backfill {fs.name}: {stats.summary()}")
    return 0


def run_bootstrap(args) -> int:
    from .bootstrap import BootstrapRefused, bootstrap

    logging.getLogger("kafka").setLevel(logging.WARNING)
    fs = load_registry(args.definitions).feature_set(args.feature_set)
    try:
        stats = bootstrap(
            fs,
            args.data_dir,
            args.broker,
            app_id=args.app_id,
            topic=args.topic,
            now=args.now,
            force=args.force,
            sink_group=args.sink_group or default_group(fs, args.app_id),
            partitions=args.partitions,
            progress=not args.no_progress,
            client_config=_kafka_config(args),
            spark=_spark(args),
        )
    except BootstrapRefused as exc:
        print(f"featurestream bootstrap: refused: {exc}", file=sys.stderr)
        return 1
    print(f"bootstrap {fs.name}: {stats.summary()}")
    return 0


def run_prune(args) -> int:
    from .retention import prune

    for fs in _sets(args):
        result = prune(fs, args.data_dir, args.keep_days, dry_run=args.dry_run)
        print(f"prune {fs.name}: {result.summary(args.dry_run)}")
    return 0


def run_sink(args) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if getattr(args, "log_filter", None) is not None:  # the CLI's: Kafka client retries said once in a while
        args.log_filter.install()
    registry = load_registry(args.definitions)
    names = args.feature_sets or list(registry.feature_sets)
    sets = [registry.feature_set(name) for name in names]
    if (args.group or args.topic) and len(sets) != 1:
        raise ValueError("--group and --topic apply to one feature set: pass exactly one --feature-set")
    sinks = [
        ParquetSink(
            fs,
            args.data_dir,
            args.broker,
            group=args.group or default_group(fs, args.app_id),
            topic=args.topic or f"{args.topic_prefix}{fs.source}",
            flush_events=args.flush_events,
            flush_seconds=args.flush_seconds,
            consumer_config=_kafka_config(args),
        )
        for fs in sets
    ]

    def stop(signum, frame):
        for sink in sinks:
            sink.stop()

    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    errors: list[BaseException] = []

    def run(sink: ParquetSink) -> None:
        try:
            sink.run(once=args.once)
        except BaseException as exc:
            errors.append(exc)
            for other in sinks:
                other.stop()

    threads = [threading.Thread(target=run, args=(s,), name=f"sink-{s.fs.name}", daemon=True) for s in sinks]
    try:
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for sink in sinks:
        print(f"sink {sink.fs.name}: {sink.stats.summary()}", file=sys.stderr)
    if errors:
        raise errors[0]
    return 0


def run_training_set(args) -> int:
    from aggregations import FeatureVector

    from .dataset import read_events
    from .offline import get_offline_features
    from .training_sets import capture_snapshot, snapshot_offsets, version_dir, versioned_training_set

    if not args.name and not args.out:
        raise ValueError("pass --name (a versioned dataset under <data-dir>/datasets/) and/or --out FILE")
    registry = load_registry(args.definitions)
    if args.vector:
        vector = registry.vector(args.vector)
    else:
        for set_name in args.feature_sets:
            registry.feature_set(set_name)  # unknown -> the known names
        vector = FeatureVector(args.name or args.feature_sets[0], [f"{s}.*" for s in args.feature_sets])
    used = [registry.feature_set(s) for s in vector.resolve(registry.feature_sets)]
    snapshot = snapshot_offsets(capture_snapshot(used, args.data_dir))  # rows and features: the same data
    if args.rows:
        rows = read_rows(args.rows)
        timestamp_column = args.timestamp_column
        rows_source = f"file {args.rows}"
    else:
        first = registry.feature_set(vector.features[0].split(".")[0])
        rows = read_events(first, args.data_dir, offsets_upto=snapshot[first.name])
        rows = rows.sort_values([first.timestamp_key, "_arrival", "_partition", "_offset"], kind="stable")
        rows = rows.drop(columns=["_partition", "_offset", "_arrival"]).reset_index(drop=True)
        rows[first.timestamp_key] = pd.to_datetime(rows[first.timestamp_key], unit="ms", utc=True)
        timestamp_column = first.timestamp_key
        rows_source = f"the stored events of {first.name}"
        print(f"rows: the {len(rows)} stored events of {first.name!r}, each at its own time", file=sys.stderr)
    out = args.out or None
    spark = _spark(args)
    options = dict(
        registry=registry, timestamp_column=timestamp_column, partitions=args.partitions, out=out,
        as_known_at=args.as_known_at, progress=True, workers=args.workers,
        engine=args.engine, spark=spark,
    )  # fmt: skip
    if args.name:
        result = versioned_training_set(
            vector, rows, args.data_dir, name=args.name, return_manifest=False, snapshot=snapshot,
            rows_source=rows_source, command=getattr(args, "command_line", None), **options,
        )  # fmt: skip
    else:
        result = get_offline_features(vector, rows, args.data_dir, snapshot=snapshot, **options)
    if out is not None:
        print(f"{out}: {len(result)} rows, {len(result.columns)} columns")
    if args.name:
        manifest = result.attrs["manifest"]
        where = version_dir(args.data_dir, args.name, manifest["version"])
        print(
            f"{args.name} v{manifest['version']}: {len(result)} rows, {len(result.columns)} columns -> {where}"
        )
    return 0


def read_rows(path: str) -> pd.DataFrame:
    """The query rows of a training set (Parquet or CSV), or a one-line error that says what they are."""
    if "://" not in path and not Path(path).is_file():
        raise FileNotFoundError(
            f"--rows {path}: no such file; hint: the rows are a Parquet or CSV file with the entity column(s), "
            "the timestamp column (--timestamp-column, default ts) and any label columns (docs/tutorial.md, "
            "step 5, makes one); without --rows, the rows are the stored events"
        )
    return pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)


def add_datasets_command(subparsers, shared) -> None:
    """Add ``datasets list|show|rebuild`` (versioned training sets)."""
    d = subparsers.add_parser(
        "datasets",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="list, show and rebuild versioned training sets (training-set --name)",
        description=(
            "Versioned training sets live in <data-dir>/datasets/NAME/v<N>/ (data.parquet, manifest.json).\n"
            "  list [NAME]              the versions: created, rows, columns, vector\n"
            "  show NAME [VERSION]      a version's manifest (default the latest; --json: all of it)\n"
            "  rebuild NAME [VERSION]   recompute it from its manifest (its definitions, rows and data\n"
            "                           snapshot) and compare with the stored data: exit 0 identical, 1 not"
        ),
        epilog="examples:\n  featurestream datasets list\n  featurestream datasets show fraud v3\n"
        "  featurestream datasets rebuild fraud v3 --out rebuilt.parquet",
    )
    shared(d, "definitions", "data_dir")
    d.add_argument("action", choices=["list", "show", "rebuild"], help="what to do")
    d.add_argument("dataset", nargs="?", metavar="NAME", help="training set name (list: optional)")
    d.add_argument(
        "version", nargs="?", metavar="VERSION", help="version, e.g. 3 or v3 (default: the latest)"
    )
    d.add_argument("--json", action="store_true", help="print JSON")
    d.add_argument("--out", help="rebuild: also write the rebuilt data to this Parquet file")
    d.add_argument("--workers", type=int, default=1, help="rebuild: worker processes (default 1)")
    d.set_defaults(func=run_datasets)


def run_datasets(args) -> int:
    from . import training_sets as ts

    if args.action != "list" and not args.dataset:
        raise ValueError(f"datasets {args.action} needs a training set NAME")
    if args.action == "list":
        found = ts.list_versions(args.data_dir, args.dataset)
        if args.json:
            print(json.dumps(found, indent=2))
        elif not found:
            print(f"no versioned training sets under {ts.datasets_root(args.data_dir)}")
        else:
            print(f"{'name':<20} {'version':>7}  {'created (UTC)':<25} {'rows':>10} {'cols':>5}  vector")
            for v in found:
                print(
                    f"{v['name']:<20} {'v' + str(v['version']):>7}  {v['created_at'][:25]:<25} "
                    f"{v['rows']:>10} {v['columns']:>5}  {v['vector']}{'  (as known at)' if v['as_known_at'] else ''}"
                )
        return 0
    if args.action == "show":
        manifest = ts.read_manifest(args.data_dir, args.dataset, args.version)
        print(json.dumps(manifest, indent=2) if args.json else _manifest_summary(manifest))
        return 0
    registry = None
    if args.definitions and Path(args.definitions).is_file():
        registry = load_registry(args.definitions)
    try:
        frame, manifest = ts.rebuild(
            args.data_dir, args.dataset, args.version, registry=registry, workers=args.workers,
            progress=True,
        )  # fmt: skip
    except ts.RebuildRefused as exc:
        print(f"featurestream datasets rebuild: refused: {exc}", file=sys.stderr)
        return 1
    if args.out:
        import pyarrow as pa

        from .writer import write_parquet_atomic

        write_parquet_atomic(pa.Table.from_pandas(frame, preserve_index=False), Path(args.out))
    diff = ts.differences(frame, ts.stored(args.data_dir, args.dataset, manifest["version"]))
    label = f"{args.dataset} v{manifest['version']}"
    if diff:
        print(f"{label}: rebuilt data DIFFERS from the stored data:\n  " + "\n  ".join(diff))
        return 1
    print(f"{label}: rebuilt {len(frame)} rows x {len(frame.columns)} columns, identical to the stored data")
    return 0


def _manifest_summary(m: dict) -> str:
    lines = [
        f"{m['name']} v{m['version']}: {m['output']['rows']} rows, {len(m['output']['columns'])} columns",
        f"  created      {m['created_at']} by featurestream {m['featurestream_version']} ({m['engine']})",
        f"  command      {' '.join(m['command'])}",
        f"  vector       {m['vector']['name']}: {', '.join(m['vector']['features'])}",
        f"  rows         {m['rows']['count']} from {m['rows']['source']} (sha256 {m['rows']['sha256'][:16]}...)",
        f"  as known at  {'yes: only events arrived by each row' + chr(39) + 's time' if m['as_known_at'] else 'no'}",
    ]
    for name, fs in m["feature_sets"].items():
        snap = m["snapshot"][name]
        offsets = ", ".join(f"p{p}<={o}" for p, o in snap["offsets"].items()) or "no data"
        lines.append(f"  set {name}: definition {fs['fingerprint']}; {snap['events']} events in "
                     f"{len(snap['files'])} files; offsets {offsets}")  # fmt: skip
    for source in m.get("definitions", []):
        lines.append(f"  definitions  {source['path']} (sha256 {source['sha256'][:16]}...)")
    return "\n".join(lines)
