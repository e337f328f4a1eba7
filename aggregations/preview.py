"""``FeatureSet.preview``: features computed in memory, like MLRun's ``infer`` (no Kafka, no files)."""

from __future__ import annotations

import pandas as pd

from .compute import apply_on_read, feature_frame, features_at
from .definitions import FeatureSet
from .schema import entity_keys, to_epoch_ms
from .stats import feature_statistics


def preview(feature_set: FeatureSet, events: pd.DataFrame, at: pd.DataFrame | None = None) -> pd.DataFrame:
    """Without ``at``: one row per event, features as of its own timestamp (the event itself excluded).

    With ``at`` (entity columns + the timestamp column): one row per ``at`` row. The returned frame
    carries the query columns then the features; ``.attrs["statistics"]`` holds per-feature statistics.
    """
    queries = events if at is None else at
    if feature_set.timestamp_key not in queries.columns:
        raise KeyError(f"preview rows need the timestamp column {feature_set.timestamp_key!r}")
    keys = entity_keys(feature_set, queries)
    ts = to_epoch_ms(queries[feature_set.timestamp_key])
    values = features_at(feature_set, events, keys, ts)
    names = [f for f in feature_set.feature_names() if f in values]
    features = feature_frame(feature_set, values, names, len(queries))
    features = apply_on_read(feature_set, queries, features)
    base = queries[[*feature_set.entity_names, feature_set.timestamp_key]].reset_index(drop=True)
    if at is None:
        base = queries.reset_index(drop=True)
    clash = {c: f"{feature_set.name}.{c}" for c in features.columns if c in base.columns}
    result = pd.concat(
        [base, features.rename(columns=clash)], axis=1
    )  # a plain feature named like its column
    result.attrs["statistics"] = feature_statistics(features)
    return result
