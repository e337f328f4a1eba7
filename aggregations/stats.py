"""Per-feature statistics: count, nulls, mean, std, min, max and quantiles of a feature frame."""

from __future__ import annotations

import pandas as pd

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def feature_statistics(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per column: numeric columns get moments and quantiles, others only counts."""
    rows = []
    for column in frame.columns:
        series = frame[column]
        row = {"feature": column, "count": int(series.notna().sum()), "nulls": int(series.isna().sum())}
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            numbers = series.astype("float64").dropna()
            row.update(mean=numbers.mean(), std=numbers.std(), min=numbers.min(), max=numbers.max())
            for q in QUANTILES:
                row[f"p{int(q * 100):02d}"] = numbers.quantile(q) if len(numbers) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows).set_index("feature")
