"""``featurestream drift`` offline (--current): exit status, the HTML report (one <svg> per feature with
bars of both distributions), JSON output, one-line errors; and the exporter's gauges."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from aggregations.drift import compare_frames
from featurestream.cli import main
from featurestream.drift_metrics import DriftMetrics

FEATURES = ["amount_avg_90d", "amount_count_1h", "amount_sum_1d", "amount_vs_avg_90d"]


def frame(n: int, seed: int, scale: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    avg = rng.lognormal(3.5, 0.5, n) * scale
    return pd.DataFrame(
        {
            "user_id": [f"u{i % 50}" for i in range(n)],
            "amount_avg_90d": avg,
            "amount_count_1h": rng.poisson(3, n),
            "amount_sum_1d": rng.gamma(2.0, 50.0, n),
            "amount_vs_avg_90d": np.where(rng.random(n) < 0.05, np.nan, rng.lognormal(0, 0.3, n)),
        }
    )


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, data in (
        ("reference", frame(3000, 1)),
        ("same", frame(1500, 2)),
        ("shifted", frame(1500, 3, scale=2.0)),
    ):
        paths[name] = tmp_path / f"{name}.parquet"
        data.to_parquet(paths[name])
    return paths


class SvgCollector(HTMLParser):
    """Per <svg>: its data-feature and the classes of its <rect> bars."""

    def __init__(self):
        super().__init__()
        self.svgs: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "svg":
            self.svgs.append({"feature": attrs.get("data-feature"), "bars": []})
        elif tag == "rect" and self.svgs:
            self.svgs[-1]["bars"].append((attrs.get("class", ""), float(attrs["height"])))


def test_drift_exit_status_and_html_report(files, tmp_path, capsys):
    report = tmp_path / "report.html"
    code = main(["drift", "--vector", "fraud", "--reference", str(files["reference"]),
                 "--current", str(files["shifted"]), "--html", str(report)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1, out
    assert "amount_avg_90d" in out and "DRIFT" in out

    parser = SvgCollector()
    parser.feed(report.read_text())
    assert [s["feature"] for s in parser.svgs] == FEATURES
    for svg in parser.svgs:
        reference = [h for cls, h in svg["bars"] if cls == "bar reference"]
        current = [h for cls, h in svg["bars"] if cls == "bar current"]
        assert len(reference) == len(current) >= 3, svg  # every bin has a bar of each distribution
        assert max(reference) > 0 and max(current) > 0
    assert "<strong>drift in" in report.read_text()


def test_same_distribution_exits_zero_with_json(files, capsys):
    code = main(["drift", "--vector", "fraud", "--reference", str(files["reference"]),
                 "--current", str(files["same"]), "--json"])  # fmt: skip
    body = json.loads(capsys.readouterr().out)
    assert code == 0, body
    assert [f["feature"] for f in body["features"]] == FEATURES
    assert all(not f["drifted"] and f["psi"] < 0.05 for f in body["features"])
    assert body["current_rows"] == 1500 and body["reference_rows"] == 3000


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--vector", "nope"], "unknown feature vector 'nope'"),
        (["--vector", "fraud", "--features", "amount_max_7d"], "has no feature(s) ['amount_max_7d']"),
        (["--vector", "fraud", "--min-rows", "5000"], "fewer than --min-rows 5000"),
        (["--vector", "fraud", "--every", "5", "--metrics-port", "0", "--bins", "1"], "--bins must be >= 2"),
        (["--vector", "fraud", "--metrics-port", "9108"], "--metrics-port needs --every"),
    ],
)
def test_mistakes_are_one_line_errors(files, capsys, extra, message):
    code = main(["drift", "--reference", str(files["reference"]), "--current", str(files["same"]), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_unreachable_worker_is_a_one_line_error_with_a_hint(files, capsys):
    code = main(["drift", "--vector", "fraud", "--reference", str(files["reference"]), "--url", "http://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the worker" in err and "hint:" in err and err.count("\n") == 1


def test_exporter_gauges():
    reference, shifted = frame(2000, 1), frame(1000, 3, scale=2.0)
    results = compare_frames(reference[FEATURES], shifted[FEATURES])
    metrics = DriftMetrics()
    metrics.update("fraud", results, 0.2, 0.15)
    get = metrics.registry.get_sample_value
    psi = get("featurestream_drift_psi", {"vector": "fraud", "feature": "amount_avg_90d"})
    assert psi == pytest.approx(results[0].psi) and psi > 0.2
    assert get("featurestream_drift_drifted", {"vector": "fraud", "feature": "amount_avg_90d"}) == 1
    assert get("featurestream_drift_current_rows", {"vector": "fraud"}) == 1000
    assert get("featurestream_drift_psi_threshold", {"vector": "fraud"}) == 0.2
    assert get("featurestream_drift_errors_total", {"vector": "fraud"}) == 0


def test_report_escapes_names():
    from featurestream.drift_report import render_html

    results = compare_frames(pd.DataFrame({"<b>": [1.0, 2.0, 3.0]}), pd.DataFrame({"<b>": [1.0, 2.0, 9.0]}))
    page = render_html("t", results, 3, 3)
    assert "<b>" not in page.replace("<body>", "") and "&lt;b&gt;" in page


class ReportParser(HTMLParser):
    """The texts of the report: per <svg>, its tick labels, bin labels and grid lines."""

    def __init__(self):
        super().__init__()
        self.svgs: list[dict] = []
        self.text: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "svg":
            self.svgs.append({"ticks": [], "bins": [], "grid": 0, "bars": []})
        elif tag == "text" and self.svgs:
            self._in = attrs.get("class")
        elif tag == "line" and self.svgs and attrs.get("class") == "grid":
            self.svgs[-1]["grid"] += 1
        elif tag == "rect" and self.svgs:
            self.svgs[-1]["bars"].append(float(attrs["y"]))

    def handle_endtag(self, tag):
        if tag == "text":
            self._in = None

    def handle_data(self, data):
        self.text.append(data)
        if self._in == "tick":
            self.svgs[-1]["ticks"].append(data)
        elif self._in == "bin":
            self.svgs[-1]["bins"].append(data)


def test_report_says_when_and_from_what_with_a_real_axis_and_whole_labels(files, tmp_path, capsys):
    from datetime import UTC, datetime

    from aggregations.drift import format_number
    from featurestream.drift_report import render_html

    reference, current = pd.read_parquet(files["reference"]), pd.read_parquet(files["shifted"])
    current["amount_sum_1d"] *= 1000  # large values: labels must stay whole and in one format
    results = compare_frames(reference[FEATURES], current[FEATURES])
    made = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    page = render_html("Drift of vector fraud", results, 3000, 1500, reference="train.parquet",
                       current="served lately by worker w-1 at http://10.0.0.5:6066 (1500 rows)", made_at=made)  # fmt: skip
    parser = ReportParser()
    parser.feed(page)
    text = " ".join(parser.text)
    assert "Made 2026-12-01 08:30:00 UTC." in text
    assert "Reference: 3000 rows from train.parquet." in text
    assert "Current: 1500 rows served lately by worker w-1 at http://10.0.0.5:6066 (1500 rows)." in text
    assert "How to read it:" in text
    for svg, result in zip(parser.svgs, results, strict=True):
        assert svg["bins"] == result.labels  # every bin label whole (never cut with an ellipsis)
        assert svg["ticks"][0] == "0.0%" and len(svg["ticks"]) >= 3 and svg["grid"] == len(svg["ticks"])
        top = float(svg["ticks"][-1].rstrip("%")) / 100
        shares = [c / sum(counts) for counts in (result.reference_counts, result.current_counts) for c in counts]
        assert top >= max(shares) - 1e-9
        assert all(y >= 0 for y in svg["bars"])  # no bar above the axis' top
    for label in (lbl for r in results for lbl in r.labels):
        assert "e+" not in label and "…" not in label
    assert format_number(12345.678) == "12346" and format_number(0.012345) == "0.01235"
    assert format_number(45.6) == "45.6" and format_number(2e12) == "2.000e+12"
