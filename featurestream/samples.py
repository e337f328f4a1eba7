"""Deterministic sample payment events for the example feature set (demo, tests, benchmarks)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def sample_events(
    n: int, users: int = 100, seed: int = 7, end_ms: int | None = None, span_ms: int = 3_600_000
):
    """``n`` events of ``users`` users with timestamps in [end - span, end), sorted by time.

    Amounts are log-normal (a few large payments), users Zipf-like (some are far busier).
    """
    rng = np.random.default_rng(seed)
    if end_ms is None:
        end_ms = int(pd.Timestamp.now(tz="UTC").value // 1_000_000)
    weights = 1.0 / np.arange(1, users + 1) ** 0.8
    user = rng.choice(users, size=n, p=weights / weights.sum())
    ts = np.sort(end_ms - rng.integers(1, span_ms + 1, size=n))
    amount = np.round(rng.lognormal(3.5, 1.0, size=n), 2)
    return pd.DataFrame({"user_id": [f"u{u:05d}" for u in user], "ts": ts, "amount": amount})
