"""Distribution drift between a reference (training) sample and a current (served) sample of one feature.

Both samples are binned the same way, then compared with two measures:

* **PSI** (population stability index) ``sum((c - r) * ln(c / r))`` over bins, proportions clipped
  below at ``EPSILON`` so an empty bin stays finite. 0 means identical; the usual reading is < 0.1 no
  shift, 0.1-0.2 moderate, > 0.2 significant (``PSI_THRESHOLD``).
* **Hellinger distance** ``sqrt(1/2 * sum((sqrt(c) - sqrt(r))^2))``: symmetric, in [0, 1]. For small
  shifts H^2 ~ PSI / 8, so ``HELLINGER_THRESHOLD`` 0.15 flags about the same shift as PSI 0.18.

Bins: a numeric feature with more than ``bins`` distinct reference values gets ``bins`` quantile bins of
the reference (open-ended: current values beyond the reference's range land in the outer bins); a
feature with few distinct values (counts, flags) and a non-numeric one get one bin per reference value
(the ``MAX_CATEGORIES`` most frequent) plus ``other``. Nulls always have their own bin, so a change
of the null rate is drift too. Pure numpy/pandas.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

PSI_THRESHOLD = 0.2
HELLINGER_THRESHOLD = 0.15
DEFAULT_BINS = 10
MAX_CATEGORIES = 20
EPSILON = 1e-4
NULL_LABEL = "null"
OTHER_LABEL = "other"


def proportions(counts) -> np.ndarray:
    """Counts -> proportions summing to 1 (all zeros stay zeros)."""
    counts = np.asarray(counts, dtype="float64")
    total = counts.sum()
    return counts / total if total > 0 else counts


def psi(reference, current, epsilon: float = EPSILON) -> float:
    """Population stability index of two binned distributions (counts or proportions, same bins)."""
    r = np.maximum(proportions(reference), epsilon)
    c = np.maximum(proportions(current), epsilon)
    if r.shape != c.shape:
        raise ValueError(f"bins differ: {r.shape} vs {c.shape}")
    return float(np.sum((c - r) * np.log(c / r)))


def hellinger(reference, current) -> float:
    """Hellinger distance of two binned distributions, in [0, 1]."""
    r, c = proportions(reference), proportions(current)
    if r.shape != c.shape:
        raise ValueError(f"bins differ: {r.shape} vs {c.shape}")
    h = math.sqrt(0.5 * float(np.sum((np.sqrt(r) - np.sqrt(c)) ** 2)))
    return min(1.0, max(0.0, h))


@dataclass(frozen=True)
class Binning:
    """How a feature's values are put into bins: quantile edges (numeric) or categories."""

    edges: tuple[float, ...] = ()
    categories: tuple = ()

    @property
    def numeric(self) -> bool:
        return not self.categories

    def labels(self) -> list[str]:
        """One label per bin, the null bin last."""
        if self.numeric:
            if not self.edges:
                return ["all", NULL_LABEL]
            bounds = ["-inf", *(_fmt(e) for e in self.edges), "inf"]
            return [f"[{a}, {b})" for a, b in itertools.pairwise(bounds)] + [NULL_LABEL]
        return [_fmt(c) if isinstance(c, float) else str(c) for c in self.categories] + [OTHER_LABEL, NULL_LABEL]

    def count(self, values: pd.Series) -> np.ndarray:
        """Counts of ``values`` per bin (same order as ``labels``)."""
        nulls = int(values.isna().sum())
        present = values.dropna()
        if self.numeric:
            x = present.to_numpy(dtype="float64")
            idx = np.searchsorted(np.asarray(self.edges, dtype="float64"), x, side="right")
            counts = np.bincount(idx, minlength=len(self.edges) + 1)
        else:
            lookup = {c: i for i, c in enumerate(self.categories)}
            idx = np.fromiter((lookup.get(_key(v), len(self.categories)) for v in present), "int64", len(present))
            counts = np.bincount(idx, minlength=len(self.categories) + 1)
        return np.append(counts, nulls).astype("int64")


def _fmt(x: float) -> str:
    return format_number(x)


def format_number(x: float) -> str:
    """One format for every number a drift report shows: 4 significant digits (more for whole numbers up to a
    billion), no exponent from 0.001 to a billion: ``12346``, ``45.6``, ``0.01235``; else ``1.000e+12``."""
    x = float(x)
    if not np.isfinite(x) or x == 0:
        return "0" if x == 0 else str(x)
    magnitude = int(np.floor(np.log10(abs(x))))
    if not -3 <= magnitude < 9:
        return f"{x:.3e}"
    digits = max(0, 3 - magnitude)
    text = f"{x:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _key(value):
    """Category key: numbers as float (1 and 1.0 are one bin), list values (top_k, last_k) as canonical JSON
    (the same whether they come from an HTTP answer or a Parquet training set), everything else as str."""
    if isinstance(value, np.ndarray | list | tuple | dict):
        return json.dumps(_listed(value), sort_keys=True, default=str)
    if isinstance(value, bool | np.bool_):
        return str(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    return str(value)


def _listed(value):
    if isinstance(value, np.ndarray | list | tuple):
        return [_listed(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, dict):
        return {k: _listed(v) for k, v in value.items()}
    return value.item() if isinstance(value, np.generic) else value


def is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def make_binning(reference: pd.Series, bins: int = DEFAULT_BINS) -> Binning:
    """Bins from the reference sample (see the module docstring)."""
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    present = reference.dropna()
    if is_numeric(reference):
        x = present.to_numpy(dtype="float64")
        x = x[np.isfinite(x)]
        distinct = np.unique(x)
        if len(distinct) > bins:
            qs = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1])
            return Binning(edges=tuple(float(e) for e in np.unique(qs)))
        return Binning(categories=tuple(float(v) for v in distinct))
    keys = present.map(_key)
    top = keys.value_counts(sort=True).index[:MAX_CATEGORIES]
    return Binning(categories=tuple(sorted(top, key=str)))


@dataclass
class FeatureDrift:
    """Drift of one feature: both binned distributions and the two measures."""

    feature: str
    labels: list[str]
    reference_counts: list[int]
    current_counts: list[int]
    psi: float
    hellinger: float
    drifted: bool
    numeric: bool = True
    thresholds: dict = field(default_factory=dict)

    @property
    def reference_rows(self) -> int:
        return int(sum(self.reference_counts))

    @property
    def current_rows(self) -> int:
        return int(sum(self.current_counts))

    def to_dict(self) -> dict:
        return {
            "feature": self.feature,
            "psi": self.psi,
            "hellinger": self.hellinger,
            "drifted": self.drifted,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "bins": [
                {"label": label, "reference": int(r), "current": int(c)}
                for label, r, c in zip(self.labels, self.reference_counts, self.current_counts, strict=True)
            ],
        }


def feature_drift(
    feature: str,
    reference: pd.Series,
    current: pd.Series,
    *,
    bins: int = DEFAULT_BINS,
    psi_threshold: float = PSI_THRESHOLD,
    hellinger_threshold: float = HELLINGER_THRESHOLD,
) -> FeatureDrift:
    """Bin both samples with the reference's binning and measure PSI and Hellinger distance."""
    binning = make_binning(reference, bins)
    if binning.numeric and not is_numeric(current) and current.notna().any():
        current = pd.to_numeric(current, errors="coerce")
    r, c = binning.count(reference), binning.count(current)
    p, h = psi(r, c), hellinger(r, c)
    return FeatureDrift(
        feature=feature,
        labels=binning.labels(),
        reference_counts=[int(x) for x in r],
        current_counts=[int(x) for x in c],
        psi=p,
        hellinger=h,
        drifted=p > psi_threshold or h > hellinger_threshold,
        numeric=binning.numeric,
        thresholds={"psi": psi_threshold, "hellinger": hellinger_threshold},
    )


def compare_frames(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: Iterable[str] | None = None,
    **options,
) -> list[FeatureDrift]:
    """``feature_drift`` of each feature (default: every column both frames have, in reference order)."""
    names = list(features) if features is not None else [c for c in reference.columns if c in current.columns]
    missing = [n for n in names if n not in reference.columns or n not in current.columns]
    if missing:
        raise KeyError(f"feature(s) {missing} not in both the reference and the current sample")
    if len(reference) == 0 or len(current) == 0:
        raise ValueError(f"empty sample: reference has {len(reference)} rows, current {len(current)}")
    return [feature_drift(n, reference[n], current[n], **options) for n in names]
