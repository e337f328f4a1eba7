"""``featurestream verify``: the command line of ``featurestream.verify`` (one run, or periodic with
Prometheus metrics in ``verify_metrics``), and its text report."""

from __future__ import annotations

import argparse
import json

from stream.auth import client_headers, resolve_token

from .options import env
from .verify import Options, exit_code, run_once


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
        if s.get("skipped_on_read"):
            lines.append(f"  not compared (on-read, they need a request's inputs): {', '.join(s['skipped_on_read'])}")
        if s["inconsistent_features"]:
            lines.append(f"  INCONSISTENT: {', '.join(s['inconsistent_features'])}")
    return "\n".join(lines)


def add_command(subparsers, shared) -> None:
    v = subparsers.add_parser(
        "verify",
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
    shared(v, "definitions", "broker", "data_dir", "url", "app_id", "topic_prefix", "auth", "kafka")
    v.add_argument(
        "--feature-set",
        action="append",
        dest="feature_sets",
        metavar="NAME",
        help="feature set to verify (repeatable; default: every set)",
    )
    v.add_argument("--topic", help="the source topic (one feature set only; overrides --topic-prefix)")
    v.add_argument(
        "--sink-group", help="the sink's consumer group (one set only; default <app-id>-sink-<set>)"
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
    from .verify_metrics import run_periodically

    return run_periodically(opts, args.every, args.metrics_port, lambda report: _emit(report, args.json))
