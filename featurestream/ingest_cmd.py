"""``featurestream ingest``: a DataFrame file (Parquet, CSV, or a directory of them) into a feature set."""

from __future__ import annotations

import argparse
import sys

from aggregations.loading import load_registry
from aggregations.schema import DEFAULT_MAX_FUTURE


def add_command(subparsers, shared) -> None:
    p = subparsers.add_parser(
        "ingest",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="ingest rows from Parquet/CSV files into a feature set (online and offline, or history)",
        description=(
            "Validate the rows with the stream's own decoder, then either\n"
            "  (default)        produce them to the set's source topic, keyed by entity: the workers apply\n"
            "                   them to online state and the sink writes them to the dataset, like any event;\n"
            "  --offline-only   write them straight to the Parquet dataset (history older than live state or\n"
            "                   than the topic's retention), then run `featurestream bootstrap`.\n"
            "Rejected rows are reported with their reasons and never written. Running the same ingest again\n"
            "writes nothing twice (an ingest id hashed from the rows; an interrupted one is completed)."
        ),
        epilog=(
            "examples:\n"
            "  featurestream ingest --set profiles profiles.csv\n"
            "  featurestream ingest --set transactions history/ --offline-only --arrival event"
        ),
    )
    shared(p, "definitions", "broker", "data_dir", "topic_prefix", "kafka")
    p.add_argument(
        "--set", required=True, dest="feature_set", metavar="SET", help="feature set to ingest into"
    )
    p.add_argument(
        "paths", nargs="+", metavar="FILE|DIR", help="Parquet or CSV files, or directories of them"
    )
    p.add_argument(
        "--offline-only", action="store_true", help="write to the dataset only (history), then bootstrap"
    )
    p.add_argument(
        "--arrival",
        choices=["now", "event"],
        default="now",
        help="--offline-only: the rows' arrival time for as-known-at reads: now (default) or their own timestamp",
    )
    p.add_argument("--topic", help="produce to this topic (default PREFIX + the set's source)")
    p.add_argument(
        "--max-future",
        default=DEFAULT_MAX_FUTURE,
        help="rows further in the future are rejected (default 1h)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from .ingest import ingest, ingest_files

    fs = load_registry(args.definitions).feature_set(args.feature_set)
    frame = ingest_files(args.paths)
    kafka = getattr(args, "kafka", None)
    result = ingest(
        fs,
        frame,
        data_dir=args.data_dir,
        broker=None if args.offline_only else args.broker,
        topic=args.topic or f"{args.topic_prefix}{fs.source}",
        offline_only=args.offline_only,
        arrival=args.arrival,
        max_future=args.max_future,
        client_config=kafka.client_config() if kafka else None,
    )
    print(result.summary())
    if args.offline_only and result.written:
        print(
            f"next: featurestream bootstrap --feature-set {fs.name} (online state from the dataset)",
            file=sys.stderr,
        )
    return 1 if result.rejected else 0
