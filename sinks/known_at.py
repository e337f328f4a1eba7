"""Offline reads "as known at" t: only events that had arrived by t (``_arrival <= t``) count.

That is what the online store could have served at t. For most rows it changes nothing: a row at
(e, t) differs from the plain point-in-time read only if some event of e has ``ts < t < _arrival``
(it happened before t but arrived after). Those rows are found with one as-of join; they are then
recomputed with the same kernel from the events known at their t, grouped by the set of events
known (rows whose t falls between the same two arrival times share one kernel call).

Not yet optimized: the cost is one kernel call per distinct arrival cut-off among affected rows, each
over the affected entities' events. Fine when late arrivals are rare (the normal case); slow for
rows spread over a long backfill (events that arrived long after they happened).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from aggregations import FeatureSet
from aggregations.compute import features_at
from aggregations.schema import entity_keys


def pending_rows(event_codes, event_ts, event_arrival, query_codes, query_ts) -> np.ndarray:
    """Positions of queries (code, t) for which some event of the same code has ``ts < t < arrival``."""
    late = event_arrival > event_ts
    if not late.any() or len(query_codes) == 0:
        return np.zeros(0, dtype=np.int64)
    events = pd.DataFrame({"code": event_codes[late], "ts": event_ts[late], "arrival": event_arrival[late]})
    events = events.sort_values(["code", "ts"], kind="stable")
    events["reach"] = events.groupby("code", sort=False)["arrival"].cummax()
    events = events.sort_values("ts", kind="stable")[["code", "ts", "reach"]]
    queries = pd.DataFrame({"code": query_codes, "t": query_ts, "pos": np.arange(len(query_codes))})
    queries = queries.sort_values("t", kind="stable")
    joined = pd.merge_asof(
        queries,
        events,
        left_on="t",
        right_on="ts",
        by="code",
        direction="backward",
        allow_exact_matches=False,
    )
    hit = joined["reach"].to_numpy(dtype=np.float64, na_value=np.nan) > joined["t"].to_numpy(dtype=np.float64)
    return np.sort(joined["pos"].to_numpy()[hit])


def known_at(
    fs: FeatureSet,
    events: pd.DataFrame,
    seq: np.ndarray,
    query_keys: np.ndarray,
    query_ts: np.ndarray,
    values: dict[str, np.ndarray],
    features: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """``values`` (plain point-in-time features of the queries) corrected in place to use only arrived events.

    ``events`` carries ``_arrival`` (int64 ms); ``seq`` is the arrival rank used for ties.
    """
    if len(events) == 0 or len(query_keys) == 0:
        return values
    event_keys = entity_keys(fs, events)
    codes, _ = pd.factorize(np.concatenate([event_keys, np.asarray(query_keys, dtype=object)]))
    event_codes, query_codes = codes[: len(events)], codes[len(events) :]
    event_ts = events[fs.timestamp_key].to_numpy(dtype=np.int64)
    arrival = events["_arrival"].to_numpy(dtype=np.int64)
    affected = pending_rows(event_codes, event_ts, arrival, query_codes, np.asarray(query_ts, dtype=np.int64))
    if len(affected) == 0:
        return values
    by_arrival = np.argsort(arrival, kind="stable")
    cuts = np.searchsorted(arrival[by_arrival], np.asarray(query_ts)[affected], side="right")
    for cut in np.unique(cuts).tolist():
        group = affected[cuts == cut]
        known = by_arrival[:cut]
        known = np.sort(known[np.isin(event_codes[known], np.unique(query_codes[group]))])
        part = features_at(
            fs,
            events.iloc[known],
            np.asarray(query_keys, dtype=object)[group],
            np.asarray(query_ts, dtype=np.int64)[group],
            seq=seq[known],
            features=features,
        )
        for name, column in part.items():
            values[name][group] = column
    return values
