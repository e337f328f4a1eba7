"""``featurestream drift``: compare served features with a training reference (PSI, Hellinger distance).

The current sample is what workers served lately (``GET /sample/{name}`` on each ``--url``) or a file
(``--current``). Exit status: 0 no drift, 1 drift (a feature above a threshold), 2 usage error. With
``--every N`` it repeats forever and, with ``--metrics-port``, exports the results as Prometheus gauges
(``featurestream.drift_metrics``); ``--html`` writes a report with a histogram overlay per feature.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from aggregations.definitions import Registry
from aggregations.drift import DEFAULT_BINS, HELLINGER_THRESHOLD, PSI_THRESHOLD, FeatureDrift, compare_frames
from aggregations.loading import load_registry
from stream.auth import client_headers, resolve_token

from .describe_cmd import load_file
from .options import DEFAULT_URL


def add_command(subparsers, shared) -> None:
    import argparse

    p = subparsers.add_parser(
        "drift",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="compare served features with a training reference (PSI, Hellinger); exit 1 on drift",
        description=(
            "Bin each feature of the reference (quantile bins; categories for few distinct values; nulls\n"
            "in a bin of their own) and compare the current sample with it. A feature drifts when\n"
            f"PSI > --psi-threshold (default {PSI_THRESHOLD}) or Hellinger > --hellinger-threshold (default\n"
            f"{HELLINGER_THRESHOLD}). The current sample is the rows workers served lately (GET /sample/NAME\n"
            "on each --url) or --current FILE. Exit 0: no drift; 1: drift; 2: error."
        ),
        epilog=(
            "examples:\n"
            "  featurestream drift --vector fraud --reference train.parquet --html drift.html\n"
            "  featurestream drift --vector fraud --reference train.parquet --current last_week.parquet\n"
            "  featurestream drift --vector fraud --reference train.parquet --every 60 --metrics-port 9108"
        ),
    )
    shared(p, "definitions", "urls", "auth")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--vector", help="feature vector to monitor (served by POST /vectors/NAME)")
    what.add_argument("--feature-set", help="feature set to monitor (served by GET /features/NAME/...)")
    p.add_argument("--reference", required=True, help="training reference: Parquet or CSV with the features")
    p.add_argument("--current", help="compare this Parquet/CSV file instead of the workers' served sample")
    p.add_argument("--features", help="comma-separated features to compare (default: all of the vector/set)")
    p.add_argument("--bins", type=int, default=DEFAULT_BINS, help=f"quantile bins (default {DEFAULT_BINS})")
    p.add_argument("--psi-threshold", type=float, default=PSI_THRESHOLD, help=f"default {PSI_THRESHOLD}")
    p.add_argument("--hellinger-threshold", type=float, default=HELLINGER_THRESHOLD, help=f"default {HELLINGER_THRESHOLD}")
    p.add_argument("--min-rows", type=int, default=100, help="fewest current rows to compare (default 100)")
    p.add_argument("--html", metavar="PATH", help="write an HTML report with a histogram overlay per feature")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--every", type=float, metavar="SECONDS", help="repeat every SECONDS until interrupted")
    p.add_argument(
        "--metrics-port", type=int, help="with --every: serve Prometheus gauges on this port (/metrics)"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds (default 10)")
    p.set_defaults(func=run)


@dataclass
class Target:
    """What is monitored: a vector or a feature set, and its feature names."""

    kind: str
    name: str
    features: list[str]


def resolve_target(registry: Registry, vector: str | None, feature_set: str | None) -> Target:
    from stream.reading import output_names

    if vector is not None:
        v = registry.vector(vector)
        return Target("vector", vector, list(output_names(v, v.resolve(registry.feature_sets)).values()))
    return Target("feature_set", feature_set, registry.feature_set(feature_set).feature_names())


def fetch_sample(
    urls: list[str], target: Target, timeout: float, headers: dict | None = None
) -> tuple[pd.DataFrame, str]:
    """The rows served lately by each worker, pooled, and where they come from in words; one-line errors for
    unreachable workers."""
    rows: list[dict] = []
    sources: list[str] = []
    for base in urls:
        url = f"{base.rstrip('/')}/sample/{urllib.parse.quote(target.name, safe='')}?kind={target.kind}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
                answer = json.loads(response.read())
                rows.extend(answer["rows"])
                sources.append(f"worker {answer.get('worker') or '?'} at {base} ({len(answer['rows'])} rows)")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise ValueError(f"HTTP {exc.code} from {url}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ValueError(
                f"cannot reach the worker at {base}: {getattr(exc, 'reason', exc)}; hint: start "
                "`featurestream worker`, pass --url, or compare a file with --current"
            ) from None
    return pd.DataFrame.from_records(rows), "served lately by " + ", ".join(sources)


def choose_features(target: Target, wanted: str | None, reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    names = [f.strip() for f in wanted.split(",") if f.strip()] if wanted else target.features
    unknown = [f for f in names if f not in target.features]
    if unknown:
        raise ValueError(f"{target.kind} {target.name!r} has no feature(s) {unknown}; it has {target.features}")
    missing = [f for f in names if f not in reference.columns]
    if wanted and missing:
        raise ValueError(f"the reference has no column(s) {missing}; hint: export it with `featurestream training-set`")
    chosen = [f for f in names if f in reference.columns]
    if not chosen:
        raise ValueError(
            f"the reference has none of {target.name!r}'s features {target.features}; hint: pass a training set "
            f"of this {target.kind.replace('_', ' ')} (featurestream training-set --vector ...)"
        )
    return chosen


def compare(args, target: Target, reference: pd.DataFrame) -> tuple[list[FeatureDrift], int, str]:
    """One comparison; returns the results, the number of current rows and where they come from."""
    urls = args.url or [os.environ.get("FEATURESTREAM_URL", DEFAULT_URL)]
    if args.current:
        current, source = load_file(args.current), f"from {args.current}"
    else:
        current, source = fetch_sample(
            urls, target, args.timeout, client_headers(resolve_token(getattr(args, "auth_token_file", None)))
        )
    features = choose_features(target, args.features, reference, current)
    if len(current) < args.min_rows:
        source = args.current or f"the workers' sample of {target.name!r}"
        raise ValueError(
            f"{len(current)} current rows in {source}, fewer than --min-rows {args.min_rows}; hint: serve more "
            "requests, or lower --min-rows"
        )
    for f in features:
        if f not in current.columns:
            current[f] = None  # never served: all-null, which is drift if the reference has values
    results = compare_frames(
        reference[features], current[features], features,
        bins=args.bins, psi_threshold=args.psi_threshold, hellinger_threshold=args.hellinger_threshold,
    )  # fmt: skip
    return results, len(current), source


def format_results(target: Target, results: list[FeatureDrift], reference_rows: int, current_rows: int) -> str:
    width = max([len("feature"), *(len(d.feature) for d in results)])
    lines = [
        f"drift of {target.kind.replace('_', ' ')} {target.name!r}: {current_rows} current rows vs "
        f"{reference_rows} reference rows",
        f"{'feature'.ljust(width)}  {'PSI':>8}  {'Hellinger':>9}",
    ]
    for d in results:
        lines.append(f"{d.feature.ljust(width)}  {d.psi:8.4f}  {d.hellinger:9.4f}  {'DRIFT' if d.drifted else 'ok'}")
    drifted = sum(d.drifted for d in results)
    t = results[0].thresholds if results else {}
    lines.append(
        f"{drifted} of {len(results)} features drifted (PSI > {t.get('psi')} or Hellinger > {t.get('hellinger')})"
    )
    return "\n".join(lines)


def report(
    args, target: Target, results: list[FeatureDrift], reference_rows: int, current_rows: int, source: str = ""
) -> None:
    made_at = datetime.now(UTC)
    if args.json:
        print(json.dumps({"kind": target.kind, "name": target.name, "made_at": made_at.isoformat(timespec="seconds"),
                          "reference": args.reference, "reference_rows": reference_rows, "current": source,
                          "current_rows": current_rows, "features": [d.to_dict() for d in results]}, indent=1))
    else:
        print(format_results(target, results, reference_rows, current_rows), flush=True)
        print(f"reference: {args.reference}; current: {source}", flush=True)
    if args.html:
        from .drift_report import render_html

        title = f"Drift of {target.kind.replace('_', ' ')} {target.name}"
        temp = Path(args.html).with_name(f".{Path(args.html).name}.tmp")
        temp.write_text(
            render_html(title, results, reference_rows, current_rows, reference=args.reference, current=source,
                        made_at=made_at)
        )
        os.replace(temp, args.html)


def check_args(args) -> None:
    if args.metrics_port is not None and args.every is None:
        raise ValueError("--metrics-port needs --every SECONDS (a one-shot run exits before anyone scrapes)")
    if args.every is not None and args.every <= 0:
        raise ValueError(f"--every must be > 0 seconds, got {args.every}")
    if args.bins < 2:
        raise ValueError(f"--bins must be >= 2, got {args.bins}")
    if args.html and not Path(args.html).resolve().parent.is_dir():
        raise FileNotFoundError(f"--html {args.html}: directory {Path(args.html).resolve().parent} does not exist")


def run(args) -> int:
    check_args(args)
    registry = load_registry(args.definitions)
    target = resolve_target(registry, args.vector, args.feature_set)
    reference = load_file(args.reference)
    if args.every is None:
        results, current_rows, source = compare(args, target, reference)
        report(args, target, results, len(reference), current_rows, source)
        return 1 if any(d.drifted for d in results) else 0
    return monitor(args, target, reference)


def monitor(args, target: Target, reference: pd.DataFrame) -> int:
    """Compare every ``args.every`` seconds until interrupted; failures are counted, printed and retried."""
    from .drift_metrics import DriftMetrics

    metrics = DriftMetrics()
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        try:
            start_http_server(args.metrics_port, registry=metrics.registry)
        except OSError as exc:
            raise ValueError(f"cannot serve metrics on port {args.metrics_port}: {exc}; hint: pick a free --metrics-port") from None
        print(f"drift: metrics on http://0.0.0.0:{args.metrics_port}/metrics", file=sys.stderr)
    while True:
        started = time.monotonic()
        try:
            results, current_rows, source = compare(args, target, reference)
            metrics.update(target.name, results, args.psi_threshold, args.hellinger_threshold)
            report(args, target, results, len(reference), current_rows, source)
        except (KeyError, ValueError, OSError) as exc:
            metrics.errors.labels(target.name).inc()
            print(f"featurestream drift: error: {exc}", file=sys.stderr, flush=True)
        time.sleep(max(0.0, args.every - (time.monotonic() - started)))
