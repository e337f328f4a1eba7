"""``featurestream preview FILE``: features of a CSV/Parquet file of events, in memory, as a table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from aggregations.loading import load_registry
from aggregations.stats import describe_frame

from .stats_table import format_statistics, headline


def add_command(subparsers, shared) -> None:
    p = subparsers.add_parser(
        "preview",
        help="compute features of a CSV/Parquet events file in memory",
        epilog="example: featurestream preview events.csv --feature-set transactions --rows 20",
    )
    shared(p, "definitions")
    p.add_argument("file", help="CSV or Parquet file of events")
    p.add_argument("--feature-set", default="transactions")
    p.add_argument("--rows", type=int, default=20, help="rows to print (default 20)")
    p.add_argument("--out", help="write all rows to this Parquet/CSV file")
    p.add_argument("--stats", action="store_true", help="print per-feature statistics (as `describe`)")
    p.add_argument("--stats-json", metavar="PATH", help="write per-feature statistics to this JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    fs = load_registry(args.definitions).feature_set(args.feature_set)
    events = pd.read_parquet(args.file) if args.file.endswith(".parquet") else pd.read_csv(args.file)
    result = fs.preview(events)
    with pd.option_context("display.max_columns", 12, "display.width", 160):
        print(result.head(args.rows).to_string())
    if args.stats or args.stats_json:
        features = result[list(result.attrs["statistics"].index)]
        statistics = {"feature_set": fs.name, "source": "preview", **describe_frame(features)}
        if args.stats:
            print(format_statistics(statistics, headline(statistics)))
        if args.stats_json:
            Path(args.stats_json).write_text(json.dumps(statistics, indent=1))
    if args.out:
        result.attrs.clear()  # the statistics frame in attrs is not Parquet metadata
        (result.to_parquet if args.out.endswith(".parquet") else result.to_csv)(args.out, index=False)
    return 0
