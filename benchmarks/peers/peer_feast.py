"""Feast: offline ``get_historical_features`` (file offline store) and the online store setup for ``feast serve``.

Runs in benchmarks/peers/.venvs/feast (never in the project venv):

    python peer_feast.py offline REPO_DIR EVENTS.parquet QUERIES.parquet OUT.parquet
    python peer_feast.py online  REPO_DIR FEATURES.parquet REDIS_HOST:PORT

offline: a feature repo in REPO_DIR (provider local, file offline store, sqlite online store unused), one
entity ``user_id`` and one FeatureView ``transactions`` over EVENTS.parquet (user_id, ts, amount) with
``ttl=7d`` and the feature ``amount``: Feast's point-in-time join gives, for each query row (user_id,
event_timestamp), the amount of the user's latest event with ``t - 7d <= ts <= t``. QUERIES.parquet holds
``user_id, ts, row``; OUT.parquet gets ``row, amount`` for the rows Feast returned. Timed: the
``get_historical_features(...).to_df()`` call only (apply is setup); reported with ``ru_maxrss``.

online: a repo with a Redis online store at REDIS_HOST:PORT, one FeatureView ``transactions_online`` over
FEATURES.parquet (user_id, ts, and feature columns, one row per user), applied and materialized into
Redis; the orchestrator then runs ``feast serve`` in REPO_DIR. The last stdout line is JSON.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from datetime import timedelta
from pathlib import Path

import feast
import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Float64


def _repo(repo: Path, online: str) -> FeatureStore:
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        "project: peers\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        "entity_key_serialization_version: 3\n"
        "offline_store:\n  type: file\n"
        f"online_store:\n{online}"
    )
    return FeatureStore(repo_path=str(repo))


def offline(repo: Path, events: Path, queries: Path, out: Path) -> dict:
    store = _repo(repo, f"  type: sqlite\n  path: {repo / 'online.db'}\n")
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    source = FileSource(path=str(events), timestamp_field="ts")
    view = FeatureView(
        name="transactions",
        entities=[user],
        ttl=timedelta(days=7),
        schema=[Field(name="amount", dtype=Float64)],
        source=source,
        online=False,
    )
    store.apply([user, view])
    rows = pd.read_parquet(queries).rename(columns={"ts": "event_timestamp"})
    started = time.perf_counter()
    frame = store.get_historical_features(entity_df=rows, features=["transactions:amount"]).to_df()
    seconds = time.perf_counter() - started
    frame[["row", "amount"]].to_parquet(out)
    return {"seconds": seconds, "rows_in": len(rows), "rows_out": len(frame)}


def online(repo: Path, features: Path, redis: str) -> dict:
    store = _repo(repo, f'  type: redis\n  connection_string: "{redis}"\n')
    frame = pd.read_parquet(features)
    names = [c for c in frame.columns if c not in ("user_id", "ts")]
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    view = FeatureView(
        name="transactions_online",
        entities=[user],
        ttl=timedelta(days=3650),
        schema=[Field(name=n, dtype=Float64) for n in names],
        source=FileSource(path=str(features), timestamp_field="ts"),
        online=True,
    )
    store.apply([user, view])
    started = time.perf_counter()
    ts = frame["ts"]
    store.materialize(
        ts.min().to_pydatetime() - timedelta(seconds=1), ts.max().to_pydatetime() + timedelta(seconds=1)
    )
    return {"materialize_s": time.perf_counter() - started, "users": len(frame), "features": names}


def main(argv: list[str]) -> int:
    mode = argv[1]
    if mode == "offline":
        report = offline(Path(argv[2]), Path(argv[3]), Path(argv[4]), Path(argv[5]))
    elif mode == "online":
        report = online(Path(argv[2]), Path(argv[3]), argv[4])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["version"] = feast.__version__
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
