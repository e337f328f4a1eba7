"""``featurestream preview FILE``: features of a CSV/Parquet file of events, in memory, as a table."""

from __future__ import annotations

import pandas as pd

from aggregations.loading import load_registry


def add_command(subparsers, common) -> None:
    p = subparsers.add_parser(
        "preview",
        parents=[common],
        help="compute features of a CSV/Parquet events file in memory",
        epilog="example: featurestream preview events.csv --feature-set transactions --rows 20",
    )
    p.add_argument("file", help="CSV or Parquet file of events")
    p.add_argument("--feature-set", default="transactions")
    p.add_argument("--rows", type=int, default=20, help="rows to print (default 20)")
    p.add_argument("--out", help="write all rows to this Parquet/CSV file")
    p.add_argument("--stats", action="store_true", help="print per-feature statistics")
    p.set_defaults(func=run)


def run(args) -> int:
    fs = load_registry(args.definitions).feature_set(args.feature_set)
    events = pd.read_parquet(args.file) if args.file.endswith(".parquet") else pd.read_csv(args.file)
    result = fs.preview(events)
    with pd.option_context("display.max_columns", 12, "display.width", 160):
        print(result.head(args.rows).to_string())
        if args.stats:
            print(result.attrs["statistics"].to_string())
    if args.out:
        (result.to_parquet if args.out.endswith(".parquet") else result.to_csv)(args.out, index=False)
    return 0
