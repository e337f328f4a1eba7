"""Prometheus metrics of a worker, in a registry of its own (several apps may live in one process).

Counters per feature set: events consumed, applied, rejected (dead-lettered), late, duplicates skipped
(replays after a restart), records whose Kafka key differs from the entity key; a histogram of batch
processing time; gauges of the newest applied event time and of the broker time of the newest record.
HTTP request time and count per route, method (and status) come from ``http_metrics``' middleware.
Set at scrape time (``refresh``): whether the worker is ready (tables recovered) and the consumer lag in
records of each set's source partitions assigned to this worker.
"""

from __future__ import annotations

import logging

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .processor import BatchResult

log = logging.getLogger(__name__)

HTTP_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WorkerMetrics:
    """The worker's metrics; ``observe`` records one processed batch."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._newest_event: dict[str, float] = {}
        label = ["feature_set"]
        r = self.registry
        self.consumed = Counter("featurestream_events_consumed", "Source records consumed", label, registry=r)
        self.applied = Counter("featurestream_events_applied", "Events folded into online state", label, registry=r)
        self.rejected = Counter(
            "featurestream_events_rejected", "Events that failed decoding/validation (sent to <topic>.dlq)",
            label, registry=r,
        )
        self.late = Counter(
            "featurestream_events_late", "Events too old to change any online read (sent to <topic>.late)",
            label, registry=r,
        )
        self.duplicates = Counter(
            "featurestream_events_duplicate",
            "Redelivered events skipped because their offset was already applied", label, registry=r,
        )
        self.gaps = Counter(
            "featurestream_source_gaps",
            "Batches that began past their partition's checkpoint: rewound to fetch the records in between, "
            "or accepted once those offsets proved gone from the topic",
            ["feature_set", "outcome"], registry=r,
        )
        self.key_mismatches = Counter(
            "featurestream_events_key_mismatch",
            "Records whose Kafka key is not the entity key (producer misconfiguration)", label, registry=r,
        )
        self.batch_seconds = Histogram(
            "featurestream_batch_seconds", "Time to process one micro-batch", label,
            buckets=BATCH_SECONDS_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "featurestream_batch_events", "Records per micro-batch", label,
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000), registry=r,
        )
        self.last_event_time = Gauge(
            "featurestream_last_event_timestamp_seconds", "Event time of the newest applied event", label, registry=r,
        )
        self.last_record_time = Gauge(
            "featurestream_last_record_broker_timestamp_seconds",
            "Broker timestamp of the newest consumed record", label, registry=r,
        )

        self.http_seconds = Histogram(
            "featurestream_http_request_seconds", "Time to answer an HTTP request", ["route", "method"],
            buckets=HTTP_SECONDS_BUCKETS, registry=r,
        )
        self.http_requests = Counter(
            "featurestream_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=r,
        )
        self.ready = Gauge(
            "featurestream_ready", "1 once table recovery has finished (as /health), else 0", registry=r,
        )
        self.consumer_lag = Gauge(
            "featurestream_consumer_lag_records",
            "Records of the source topic not yet consumed, over the partitions this worker owns", label, registry=r,
        )

    def refresh(self, app, topics, ready: bool) -> None:
        """Scrape-time gauges: readiness, and consumer lag from Faust's consumer (highwater - next read)."""
        self.ready.set(1 if ready else 0)
        sets = {t.source: name for name, t in topics.items()}
        lag = dict.fromkeys(sets.values(), 0)
        try:
            consumer = app.consumer
            for tp in consumer.assignment():
                name, read = sets.get(tp.topic), consumer._read_offset.get(tp)
                highwater = consumer.highwater(tp) if name is not None else None
                if highwater is not None:
                    lag[name] += max(0, highwater - (read + 1 if read is not None else 0))
        except Exception as exc:  # consumer not started or rebalancing: keep the last values
            log.debug("consumer lag not available: %s", exc)
            return
        for name, value in lag.items():
            self.consumer_lag.labels(name).set(value)

    def observe(self, feature_set: str, result: BatchResult, seconds: float, broker_ts_ms: int | None) -> None:
        self.consumed.labels(feature_set).inc(result.consumed)
        self.applied.labels(feature_set).inc(result.applied)
        self.rejected.labels(feature_set).inc(result.rejected)
        self.late.labels(feature_set).inc(len(result.late))
        self.duplicates.labels(feature_set).inc(result.duplicates)
        self.key_mismatches.labels(feature_set).inc(result.key_mismatches)
        self.batch_seconds.labels(feature_set).observe(seconds)
        self.batch_size.labels(feature_set).observe(result.consumed)
        if result.max_event_ts is not None:
            newest = max(self._newest_event.get(feature_set, 0.0), result.max_event_ts / 1000.0)
            self._newest_event[feature_set] = newest
            self.last_event_time.labels(feature_set).set(newest)
        if broker_ts_ms is not None:
            self.last_record_time.labels(feature_set).set(broker_ts_ms / 1000.0)

    def touch(self, feature_set: str) -> None:
        """Create the feature set's series at zero so they are exported before the first event."""
        for metric in (self.consumed, self.applied, self.rejected, self.late, self.duplicates, self.key_mismatches):
            metric.labels(feature_set)
        self.batch_seconds.labels(feature_set)
        self.batch_size.labels(feature_set)

    def render(self) -> bytes:
        """Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
