"""Monitoring config stays true to the code: the Grafana dashboard and the Prometheus alert rules only query
metrics that the worker (stream/metrics.py) or the drift exporter (featurestream/drift_metrics.py) really
export, with labels those metrics have; the files parse; compose and Prometheus point at files that exist.

No Docker and no promtool here: metric names and labels come from the real registries, the YAML is read
with PyYAML if installed, else with the block-YAML parser of test_compose.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import Counter, Histogram

from featurestream.drift_metrics import DriftMetrics
from stream.metrics import WorkerMetrics
from stream.replica import ReplicaMetrics
from tests.unit.test_compose import load_compose, parse_block_yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "featurestream.json"
PROVISIONING = REPO_ROOT / "deploy" / "grafana" / "provisioning"
PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
EXTERNAL = {"up": {"job", "instance"}}  # Prometheus' own series
TARGET_LABELS = {"job", "instance"}  # added to every scraped series
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "changes", "time", "by", "without", "on",
    "ignoring", "group_left", "group_right", "and", "or", "unless", "histogram_quantile", "clamp_min", "clamp_max",
    "le", "offset", "bool",
}  # fmt: skip


def load_yaml(path: Path):
    text = path.read_text()
    try:
        import yaml
    except ImportError:
        return parse_block_yaml(text)
    return yaml.safe_load(text)


def exported_series() -> dict[str, set[str]]:
    """Series name -> label names, for every metric of the worker, the read replica and the drift exporter."""
    series: dict[str, set[str]] = dict(EXTERNAL)
    for metrics in (WorkerMetrics(), ReplicaMetrics(), DriftMetrics()):
        for collector in list(metrics.registry._collector_to_names):
            name, labels = collector._name, set(collector._labelnames)
            if isinstance(collector, Counter):
                names = [f"{name}_total", f"{name}_created"]
            elif isinstance(collector, Histogram):
                names = [f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"]
                labels = labels | {"le"}
            else:
                names = [name]
            for n in names:
                series[n] = labels | TARGET_LABELS
    return series


SERIES = exported_series()


def check_expr(expr: str) -> set[str]:
    """The series an expression reads; fails on unknown series or labels."""
    stripped = re.sub(r'"[^"]*"', '""', expr)  # label values and strings
    stripped = re.sub(r"\[[0-9smhdw]+\]", "", stripped)  # range selectors
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", stripped))
    used = {w for w in words if w in SERIES}
    unknown = {w for w in words - used if w.startswith("featurestream") or w not in PROMQL_WORDS}
    unknown = {w for w in unknown if not re.fullmatch(r"e\d*|\d+", w)}  # 1e-9
    labels = set(re.findall(r"\b([a-z_]+)\s*(?:=~|!~|!=|=)\s*\"", expr))
    for group in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    unknown -= labels
    assert not unknown, f"unknown metric(s) {sorted(unknown)} in {expr!r}; exported: {sorted(SERIES)}"
    assert used, f"no metric in {expr!r}"
    allowed = set().union(*(SERIES[s] for s in used))
    assert labels <= allowed, f"label(s) {sorted(labels - allowed)} not on {sorted(used)} in {expr!r}"
    return used


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = []
    for panel in dashboard["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", [])]
        for inner in panel.get("panels", []):
            exprs += [t["expr"] for t in inner.get("targets", [])]
    return exprs


def test_exported_series_include_the_worker_and_drift_metrics():
    assert "featurestream_events_consumed_total" in SERIES and "featurestream_batch_seconds_bucket" in SERIES
    assert SERIES["featurestream_drift_psi"] >= {"vector", "feature"}
    assert "featurestream_events_consumed" not in SERIES  # counters are exported with _total


def test_dashboard_parses_and_queries_only_real_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    exprs = dashboard_exprs(dashboard)
    used = set().union(*(check_expr(e) for e in exprs))
    for var in dashboard["templating"]["list"]:
        metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["definition"]).groups()
        assert label in SERIES[metric], var["definition"]
        used.add(metric)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "prometheus" and panel["targets"], panel["title"]
    # Every area of the brief has a panel.
    for series in (
        "featurestream_events_consumed_total",  # ingest rate
        "featurestream_consumer_lag_records",  # lag
        "featurestream_last_event_timestamp_seconds",  # freshness
        "featurestream_http_request_seconds_bucket",  # HTTP latency
        "featurestream_events_rejected_total",  # DLQ
        "featurestream_events_late_total",  # late
        "featurestream_drift_psi",  # drift
        "featurestream_ready",  # recovery
    ):
        assert series in used, f"no panel reads {series}"


def test_alert_rules_parse_and_query_only_real_metrics():
    rules = load_yaml(PROMETHEUS / "alerts.yml")
    names, used = [], set()
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", rule["alert"])
            assert re.fullmatch(r"\d+[smh]", str(rule.get("for", "0s")))
            assert rule["annotations"]["summary"]
            names.append(rule["alert"])
            used |= check_expr(rule["expr"])
    assert len(names) == len(set(names))
    for series in (
        "featurestream_consumer_lag_records",
        "featurestream_last_record_broker_timestamp_seconds",
        "featurestream_events_rejected_total",
        "featurestream_drift_drifted",
        "featurestream_replica_behind_records",
    ):
        assert series in used, f"no alert on {series}"


def test_prometheus_loads_the_rules_and_compose_mounts_them():
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    (rule_file,) = config["rule_files"]
    compose = load_compose()
    mounts = dict(
        reversed(str(v).split(":")[:2]) for v in compose["services"]["prometheus"]["volumes"]
    )  # container path -> host path
    assert rule_file in mounts and (REPO_ROOT / mounts[rule_file]).is_file()
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"featurestream-worker", "featurestream-replica", "featurestream-drift"} <= jobs
    drift = compose["services"]["drift"]
    assert "--metrics-port 9108" in drift["command"]
    assert "drift:9108" in (PROMETHEUS / "prometheus.yml").read_text()


def test_grafana_provisioning_matches_compose():
    compose = load_compose()
    grafana = compose["services"]["grafana"]
    mounts = {str(v).split(":")[1]: REPO_ROOT / str(v).split(":")[0] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING
    datasource = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["uid"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "featurestream.yml")["providers"]
    path = provider["options"]["path"]
    assert mounts[path] == DASHBOARD.parent and DASHBOARD.is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/{DASHBOARD.name}"


@pytest.mark.parametrize(
    "expr",
    ["rate(featurestream_events_consumd_total[1m])", 'sum by (route) (featurestream_events_late_total)'],
)
def test_the_checker_rejects_typos_and_wrong_labels(expr):
    with pytest.raises(AssertionError):
        check_expr(expr)
