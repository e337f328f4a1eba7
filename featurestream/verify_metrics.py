"""``featurestream verify --every SECONDS``: a verification run every SECONDS until stopped, exporting
``featurestream_verify_*`` metrics on ``--metrics-port`` (see docs/verify.md)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable

from .verify import Options, run_once


def run_periodically(opts: Options, every_s: float, port: int, emit: Callable[[dict], None]) -> int:
    """Run until SIGINT/SIGTERM; a failed run is counted and printed, never the end of the loop."""
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
            emit(report)
        stop.wait(every_s)
    return 0
