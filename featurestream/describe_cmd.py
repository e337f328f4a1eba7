"""``featurestream describe SET|FILE``: per-feature statistics as a table (or ``--json``).

``SET``: the statistics stored next to the set's dataset (``<data-dir>/<set>/_statistics.json``, written
by ``featurestream compact``; ``--refresh`` computes them now). ``FILE`` (a ``.parquet`` or ``.csv``
path, e.g. a training set): statistics of its columns, computed in memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from aggregations.loading import load_registry
from aggregations.stats import describe_frame

from .stats_table import format_statistics, headline

FILE_SUFFIXES = (".parquet", ".csv")


def add_command(subparsers, shared) -> None:
    p = subparsers.add_parser(
        "describe",
        help="per-feature statistics of a feature set's dataset or of a Parquet/CSV file",
        description="Print count, nulls, mean, std, min, quantiles, max and a histogram per feature: of a feature "
        "set's stored events (written by `featurestream compact`, or now with --refresh), or of a file.",
        epilog="examples: featurestream describe transactions\n"
        "          featurestream describe transactions --refresh --json\n"
        "          featurestream describe train.parquet",
    )
    shared(p, "definitions", "data_dir")
    p.add_argument("target", metavar="SET|FILE", help="feature set name, or a .parquet/.csv file")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.add_argument(
        "--refresh", action="store_true", help="compute the set's statistics from its dataset now (and store them)"
    )
    p.set_defaults(func=run)


def load_file(path: str) -> pd.DataFrame:
    """A Parquet or CSV file as a frame, or a one-line error."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def statistics_of(args) -> dict:
    if args.target.endswith(FILE_SUFFIXES):
        return {"file": args.target, **describe_frame(load_file(args.target))}
    from sinks.statistics import read_statistics, refresh_statistics

    fs = load_registry(args.definitions).feature_set(args.target)
    if args.refresh:
        return refresh_statistics(fs, args.data_dir)
    stored = read_statistics(fs, args.data_dir)
    if stored is None:
        raise ValueError(
            f"no statistics for {fs.name!r} under {args.data_dir}; hint: run `featurestream compact` "
            f"or `featurestream describe {fs.name} --refresh`"
        )
    return stored


def run(args) -> int:
    statistics = statistics_of(args)
    if args.json:
        print(json.dumps(statistics, indent=1))
    else:
        print(format_statistics(statistics, headline(statistics)))
    return 0
