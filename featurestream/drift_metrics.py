"""Prometheus gauges of ``featurestream drift --every N --metrics-port P`` (continuous drift monitoring).

Label ``vector`` is the monitored vector or feature set name, ``feature`` the feature:

* ``featurestream_drift_psi{vector,feature}``, ``featurestream_drift_hellinger{vector,feature}``
* ``featurestream_drift_drifted{vector,feature}``: 1 when above a threshold, else 0
* ``featurestream_drift_psi_threshold{vector}``, ``featurestream_drift_hellinger_threshold{vector}``
* ``featurestream_drift_current_rows{vector}``: served rows compared in the last run
* ``featurestream_drift_last_run_timestamp_seconds{vector}``: end of the last successful comparison
* ``featurestream_drift_errors_total{vector}``: runs that failed (worker unreachable, too few rows, ...)
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from aggregations.drift import FeatureDrift


class DriftMetrics:
    """The drift exporter's metrics, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry(auto_describe=True)
        both = ["vector", "feature"]
        self.psi = Gauge("featurestream_drift_psi", "Population stability index, served vs reference", both, registry=r)
        self.hellinger = Gauge(
            "featurestream_drift_hellinger", "Hellinger distance (0..1), served vs reference", both, registry=r
        )
        self.drifted = Gauge("featurestream_drift_drifted", "1 if the feature is above a drift threshold", both, registry=r)
        self.psi_threshold = Gauge("featurestream_drift_psi_threshold", "PSI drift threshold", ["vector"], registry=r)
        self.hellinger_threshold = Gauge(
            "featurestream_drift_hellinger_threshold", "Hellinger drift threshold", ["vector"], registry=r
        )
        self.current_rows = Gauge(
            "featurestream_drift_current_rows", "Served rows compared in the last run", ["vector"], registry=r
        )
        self.last_run = Gauge(
            "featurestream_drift_last_run_timestamp_seconds", "Time of the last successful drift run", ["vector"],
            registry=r,
        )
        self.errors = Counter("featurestream_drift_errors", "Drift runs that failed", ["vector"], registry=r)

    def update(self, name: str, results: list[FeatureDrift], psi_threshold: float, hellinger_threshold: float) -> None:
        """Record one comparison of ``name``."""
        for d in results:
            self.psi.labels(name, d.feature).set(d.psi)
            self.hellinger.labels(name, d.feature).set(d.hellinger)
            self.drifted.labels(name, d.feature).set(1 if d.drifted else 0)
        self.psi_threshold.labels(name).set(psi_threshold)
        self.hellinger_threshold.labels(name).set(hellinger_threshold)
        self.current_rows.labels(name).set(max((d.current_rows for d in results), default=0))
        self.last_run.labels(name).set(time.time())
        self.errors.labels(name)
