"""Features of a frame of events at query points, through the kernel: the path preview and offline share."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import latest as plain
from .definitions import FeatureSet
from .kernel import EventBatch, Levels, build_levels, empty_levels, expire, late_cutoff, merge_levels, read
from .schema import entity_keys, to_epoch_ms


def apply_transforms(feature_set: FeatureSet, frame: pd.DataFrame) -> pd.DataFrame:
    """Run the set's row-level transforms (batch functions) in order; each must return a frame of equal length."""
    for transform in feature_set.transforms:
        result = transform(frame)
        if not isinstance(result, pd.DataFrame) or len(result) != len(frame):
            name = getattr(transform, "__name__", repr(transform))
            raise ValueError(
                f"transform {name!r} of {feature_set.name!r} must return a DataFrame of the same length"
            )
        frame = result
    return frame


def aggregation_columns(feature_set: FeatureSet, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The aggregated columns as numpy: numbers as float64 with NaN for null, anything else as objects."""
    out = {}
    for column in feature_set.plan.fields_by_column:
        if column not in frame.columns:
            raise KeyError(f"feature set {feature_set.name!r}: events lack aggregated column {column!r}")
        series = frame[column]
        if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            out[column] = series.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            out[column] = series.astype(object).where(series.notna(), None).to_numpy(dtype=object)
    return out


def latest_columns(feature_set: FeatureSet, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The columns plain features read, as Python values of their own type (None for null)."""
    out = {}
    for column in plain.columns_of(feature_set.plan):
        if column not in frame.columns:
            raise KeyError(f"feature set {feature_set.name!r}: events lack feature column {column!r}")
        out[column] = plain.python_values(frame[column])
    return out


def event_batch(
    feature_set: FeatureSet, frame: pd.DataFrame, codes: np.ndarray, seq: np.ndarray
) -> EventBatch:
    """Transformed events -> the kernel's columnar batch."""
    ts = to_epoch_ms(frame[feature_set.timestamp_key])
    return EventBatch(
        np.asarray(codes, np.int64),
        ts,
        np.asarray(seq, np.int64),
        aggregation_columns(feature_set, frame),
        latest_columns(feature_set, frame),
    )


def feature_frame(feature_set: FeatureSet, values: dict[str, np.ndarray], names, n: int) -> pd.DataFrame:
    """Computed feature values as a frame, each plain feature in its column's own dtype."""
    dtypes = {f.name: feature_set.feature_dtype(f) for f in feature_set.features}
    columns = {}
    for name in names:
        if name in values:
            columns[name] = plain.typed(dtypes[name], values[name]) if name in dtypes else values[name]
    return pd.DataFrame(columns, index=range(n))


def features_at(
    feature_set: FeatureSet,
    events: pd.DataFrame,
    query_keys: np.ndarray,
    query_ts: np.ndarray,
    seq: np.ndarray | None = None,
    features: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Aggregated features at each (entity key, t): build tiles from ``events``, then read them.

    ``seq`` orders events of equal timestamp (arrival order); by default the row order.
    """
    events = apply_transforms(feature_set, events.reset_index(drop=True))
    event_keys = entity_keys(feature_set, events)
    codes, _ = pd.factorize(np.concatenate([event_keys, np.asarray(query_keys, dtype=object)]))
    n = len(events)
    batch = event_batch(feature_set, events, codes[:n], np.arange(n) if seq is None else seq)
    levels: Levels = build_levels(feature_set.plan, batch)
    return read(feature_set.plan, levels, codes[n:], np.asarray(query_ts, np.int64), features)


def apply_on_read(feature_set: FeatureSet, request: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """Add the set's on-read features, computed from request columns and aggregated features."""
    if not feature_set.on_read:
        return features
    frame = pd.concat([request.reset_index(drop=True), features.reset_index(drop=True)], axis=1)
    frame = frame.loc[:, ~frame.columns.duplicated(keep="last")]
    out = features.reset_index(drop=True).copy()
    for derived in feature_set.on_read:
        missing = [c for c in derived.inputs if c not in frame.columns]
        if missing:
            out[derived.name] = np.nan
            continue
        out[derived.name] = pd.Series(derived.fn(frame), index=frame.index)
    return out


def fold_into_state(
    feature_set: FeatureSet,
    stored: Levels | None,
    frame: pd.DataFrame,
    codes: np.ndarray,
    seq: np.ndarray,
    now_ms: int,
    skip: np.ndarray | None = None,
) -> tuple[Levels, np.ndarray]:
    """Online state after a batch of transformed events: the one ingest step the worker and bootstrap share.

    Events marked in ``skip`` (e.g. already applied) are left out; so are events late at ``now_ms`` (older
    than any read at or after ``now_ms`` can reach), whose mask is returned for the caller to report.
    The rest are folded into ``stored`` (None: no state yet), and tiles no read can reach expire.
    """
    plan = feature_set.plan
    ts = to_epoch_ms(frame[feature_set.timestamp_key]) if len(frame) else np.zeros(0, np.int64)
    candidate = np.ones(len(ts), dtype=bool) if skip is None else ~np.asarray(skip, dtype=bool)
    late = candidate & (ts < late_cutoff(plan, now_ms))
    keep = candidate & ~late
    levels = stored
    if keep.any():
        fresh = build_levels(plan, event_batch(feature_set, frame[keep], codes[keep], seq[keep]))
        levels = fresh if stored is None else merge_levels(stored, fresh)
    if levels is None:
        levels = empty_levels(plan)
    return expire(plan, levels, now_ms), late
