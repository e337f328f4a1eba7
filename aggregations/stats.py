"""Per-feature statistics: count, nulls, mean, std, min, max, quantiles and a histogram.

Two entry points share one definition of every statistic:

* ``describe_frame(frame)``: a whole in-memory frame (``preview``, a training set), exact.
* ``StatisticsBuilder``: the same figures folded over a stream of batches in bounded memory (a dataset
  scan at compaction). Pass 1 (``add``) keeps count, nulls, Chan-merged mean/variance, min, max and a
  uniform sample of at most ``sample_size`` values per column; pass 2 (``add_histogram``) counts every
  value into bins whose edges come from pass 1. Quantiles are exact while a column has at most
  ``sample_size`` values, else read from the sample (``"exact": false`` in the result).

Results are JSON-ready dicts: ``{"rows", "exact", "features": {name: {...}}}`` where a numeric feature
has ``count, nulls, mean, std, min, max, quantiles {p05..p95}, histogram {edges, counts}`` and other
columns only ``count`` and ``nulls`` (timestamps also ``min``/``max`` as ISO-8601 strings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
HISTOGRAM_BINS = 20
DEFAULT_SAMPLE_SIZE = 100_000


def quantile_name(q: float) -> str:
    """``0.05`` -> ``"p05"``, ``0.5`` -> ``"p50"``."""
    return f"p{round(q * 100):02d}"


def histogram(values: np.ndarray, bins: int = HISTOGRAM_BINS, lo: float | None = None, hi: float | None = None):
    """Equal-width histogram of finite ``values`` over [lo, hi] (default: their range): ``(edges, counts)``.

    A constant column gets one bin ``[v, v]``; no values gives empty lists.
    """
    values = np.asarray(values, dtype="float64")
    values = values[np.isfinite(values)]
    lo = float(values.min()) if lo is None and len(values) else lo
    hi = float(values.max()) if hi is None and len(values) else hi
    if lo is None or hi is None:
        return [], []
    edges = histogram_edges(lo, hi, bins)
    return edges, count_into(values, edges)


def histogram_edges(lo: float, hi: float, bins: int = HISTOGRAM_BINS) -> list[float]:
    """``bins + 1`` equal-width edges from lo to hi (two equal edges for a constant column)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [float(lo), float(lo)]
    return [float(e) for e in np.linspace(lo, hi, bins + 1)]


def count_into(values: np.ndarray, edges: list[float]) -> list[int]:
    """Counts of finite ``values`` per bin of ``edges`` (last bin closed; outside values ignored)."""
    if not edges:
        return []
    values = np.asarray(values, dtype="float64")
    values = values[np.isfinite(values)]
    if edges[0] == edges[-1]:
        return [int((values == edges[0]).sum())]
    counts, _ = np.histogram(values, bins=np.asarray(edges))
    return [int(c) for c in counts]


def column_kind(series: pd.Series) -> str:
    """``numeric``, ``bool``, ``timestamp`` or ``string`` (everything else)."""
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_datetime64_any_dtype(series):
        return "timestamp"
    if pd.api.types.is_numeric_dtype(series):
        return "numeric"
    return "string"


def _finite_or_none(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass
class _Column:
    """Running statistics of one column (see the module docstring)."""

    kind: str
    sample_size: int
    count: int = 0
    nulls: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    sample: np.ndarray = field(default_factory=lambda: np.empty(0))
    priorities: np.ndarray = field(default_factory=lambda: np.empty(0))
    edges: list[float] | None = None
    counts: np.ndarray | None = None

    def add(self, series: pd.Series, rng: np.random.Generator) -> None:
        nulls = int(series.isna().sum())
        self.nulls += nulls
        if self.kind == "timestamp":
            values = _epoch_ms(series.dropna())
        elif self.kind == "numeric":
            values = series.dropna().to_numpy(dtype="float64")
        else:
            self.count += len(series) - nulls
            return
        n = len(values)
        if n == 0:
            return
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))
        if self.kind == "timestamp":
            self.count += n
            return
        # Chan et al.: merge (count, mean, M2) of the batch into the running ones.
        b_mean = float(values.mean())
        b_m2 = float(((values - b_mean) ** 2).sum())
        total = self.count + n
        delta = b_mean - self.mean
        self.mean += delta * n / total
        self.m2 += b_m2 + delta * delta * self.count * n / total
        self.count = total
        # Uniform sample: keep the values with the smallest random priorities.
        priorities = np.concatenate([self.priorities, rng.random(n)])
        sample = np.concatenate([self.sample, values])
        if len(sample) > self.sample_size:
            keep = np.argpartition(priorities, self.sample_size - 1)[: self.sample_size]
            priorities, sample = priorities[keep], sample[keep]
        self.priorities, self.sample = priorities, sample

    def add_histogram(self, series: pd.Series, bins: int) -> None:
        if self.kind != "numeric" or self.count == 0:
            return
        if self.edges is None:
            self.edges = histogram_edges(self.min, self.max, bins)
            self.counts = np.zeros(max(len(self.edges) - 1, 1) if self.edges else 0, dtype="int64")
        if self.edges:
            self.counts += np.asarray(count_into(series.dropna().to_numpy(dtype="float64"), self.edges))

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "count": self.count, "nulls": self.nulls}
        if self.kind == "timestamp" and self.count:
            out["min"] = pd.Timestamp(int(self.min), unit="ms", tz="UTC").isoformat()
            out["max"] = pd.Timestamp(int(self.max), unit="ms", tz="UTC").isoformat()
        if self.kind != "numeric":
            return out
        has = self.count > 0
        out["mean"] = _finite_or_none(self.mean) if has else None
        out["std"] = math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else None
        out["min"] = _finite_or_none(self.min) if has else None
        out["max"] = _finite_or_none(self.max) if has else None
        out["quantiles"] = {
            quantile_name(q): (float(np.quantile(self.sample, q)) if has else None) for q in QUANTILES
        }
        edges = self.edges or []
        counts = [] if self.counts is None else [int(c) for c in self.counts]
        out["histogram"] = {"edges": edges, "counts": counts}
        return out


def _epoch_ms(series: pd.Series) -> np.ndarray:
    stamps = pd.to_datetime(series, utc=True)
    return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).to_numpy(dtype="int64")


class StatisticsBuilder:
    """Statistics of the columns of many batches in bounded memory; two passes (see the module docstring)."""

    def __init__(self, sample_size: int = DEFAULT_SAMPLE_SIZE, bins: int = HISTOGRAM_BINS, seed: int = 0):
        if sample_size < 1 or bins < 1:
            raise ValueError("sample_size and bins must be >= 1")
        self.sample_size, self.bins = sample_size, bins
        self.rng = np.random.default_rng(seed)
        self.columns: dict[str, _Column] = {}
        self.rows = 0

    def add(self, frame: pd.DataFrame) -> None:
        """Pass 1: fold a batch into counts, moments, min/max and the sample."""
        self.rows += len(frame)
        for name in frame.columns:
            column = self.columns.get(name)
            if column is None:
                column = self.columns[name] = _Column(column_kind(frame[name]), self.sample_size)
            column.add(frame[name], self.rng)

    def add_histogram(self, frame: pd.DataFrame) -> None:
        """Pass 2: count a batch into each numeric column's histogram (edges from pass 1)."""
        for name in frame.columns:
            if name in self.columns:
                self.columns[name].add_histogram(frame[name], self.bins)

    def result(self) -> dict[str, Any]:
        """``{"rows", "exact", "features": {column: statistics}}``."""
        exact = all(c.count <= self.sample_size for c in self.columns.values() if c.kind == "numeric")
        return {
            "rows": self.rows,
            "exact": exact,
            "features": {name: column.result() for name, column in self.columns.items()},
        }


def describe_frame(frame: pd.DataFrame, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Exact statistics of every column of an in-memory frame (JSON-ready; see the module docstring)."""
    builder = StatisticsBuilder(sample_size=max(len(frame), 1), bins=bins)
    builder.add(frame)
    builder.add_histogram(frame)
    return builder.result()


def _none_nan(value):
    return float("nan") if value is None else value


def feature_statistics(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per column: numeric columns get moments, quantiles and a histogram, others only counts.

    The same figures as ``describe_frame`` as a DataFrame indexed by feature; the histogram is in the
    ``histogram_edges`` and ``histogram_counts`` columns (lists).
    """
    features = describe_frame(frame)["features"]
    rows = []
    for name, stats in features.items():
        row: dict[str, Any] = {"feature": name, "count": stats["count"], "nulls": stats["nulls"]}
        if stats["type"] == "numeric":
            row.update({k: _none_nan(stats[k]) for k in ("mean", "std", "min", "max")})
            row.update({k: _none_nan(v) for k, v in stats["quantiles"].items()})
            row["histogram_edges"] = stats["histogram"]["edges"]
            row["histogram_counts"] = stats["histogram"]["counts"]
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["count", "nulls"]).rename_axis("feature")
    return pd.DataFrame(rows).set_index("feature")
