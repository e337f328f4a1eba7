"""Sketch ops benchmark: online state bytes per entity, ingest and read cost, with and without the sketch ops.

    .venv/bin/python benchmarks/sketches.py                 # defaults: 1, 100, 10,000 events/day; 200k ingest events
    .venv/bin/python benchmarks/sketches.py --rates 1 100 --ingest-events 50000

Feature sets over the same deterministic payments (amount, merchant; windows 1h/1d/90d): ``base`` is amount
count, sum, avg, min, max, last (the example set's 18 features); each other set adds one op to it (merchant
``count_distinct``, exact: its state keeps every distinct value; merchant ``approx_count_distinct``; amount
``approx_percentile(0.5, 0.9, 0.99)``; merchant ``top_k(5)``; merchant ``last_k(5)``), and the last adds
all four sketch ops.

State size: one entity receiving R events a day for 91 days (merchants Zipf-like over a large universe,
so distinct merchants keep growing), folded day by day through the worker's ingest step
(``fold_into_state``, late cut-off and expiry at the batch's end) and encoded with the state codec; the
figure is the entity's table value in bytes at the end, when the 90-day window is full.

Ingest: events of ``--users`` users over the last hour, in micro-batches of ``--batch`` (the worker's
largest fetch), through what the worker does per batch apart from Kafka and RocksDB: decode the stored
states of the batch's entities, ``fold_into_state``, encode. Medians of ``--repeats`` runs per set, with
the ratio to ``base``; the machine's ceiling is the same loop with nothing to aggregate (decode + encode of
empty states only).

Reads: CPU time of decoding one entity's state (built as above) and reading every feature at now, as the
worker's ``GET /features`` does, for ``base`` and the set with all four sketch ops.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aggregations import Aggregation, Entity, FeatureSet  # noqa: E402
from aggregations.codec import EntityStateCodec  # noqa: E402
from aggregations.compute import fold_into_state  # noqa: E402
from aggregations.kernel import read  # noqa: E402

DAY = 86_400_000
HOUR = 3_600_000
END_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
WINDOWS = ["1h", "1d", "90d"]
BASE_OPS = ["count", "sum", "avg", "min", "max", "last"]
SCHEMA = {"user_id": "string", "ts": "timestamp", "amount": "float64", "merchant": "string"}


def feature_sets() -> dict[str, FeatureSet]:
    def fs(name, amount_ops=(), merchant_ops=()):
        aggregations = [Aggregation("amount", [*BASE_OPS, *amount_ops], windows=WINDOWS)]
        if merchant_ops:
            aggregations.append(Aggregation("merchant", list(merchant_ops), windows=WINDOWS))
        return FeatureSet(name, [Entity("user_id")], "ts", "payments", SCHEMA, aggregations)

    return {
        "base": fs("base"),
        "+count_distinct (exact)": fs("exact", merchant_ops=["count_distinct"]),
        "+approx_count_distinct": fs("acd", merchant_ops=["approx_count_distinct"]),
        "+approx_percentile(0.5, 0.9, 0.99)": fs("pct", amount_ops=["approx_percentile(0.5, 0.9, 0.99)"]),
        "+top_k(5)": fs("topk", merchant_ops=["top_k(5)"]),
        "+last_k(5)": fs("lastk", merchant_ops=["last_k(5)"]),
        "+all four sketch ops": fs(
            "sketches",
            amount_ops=["approx_percentile(0.5, 0.9, 0.99)"],
            merchant_ops=["approx_count_distinct", "top_k(5)", "last_k(5)"],
        ),
    }


def payments(rng: np.random.Generator, n: int, start: int, span: int, users: np.ndarray) -> pd.DataFrame:
    """n payments in [start, start + span), sorted by time: lognormal amounts, Zipf-like merchants."""
    ts = np.sort(start + rng.integers(0, span, n))
    merchants = np.minimum(rng.zipf(1.2, n), 10_000_000)
    return pd.DataFrame(
        {
            "user_id": users,
            "ts": ts,
            "amount": np.round(rng.lognormal(3.5, 1.0, n), 2),
            "merchant": [f"merchant-{m:08d}" for m in merchants],
        }
    )


def state_bytes(fs: FeatureSet, per_day: int, days: int = 91, seed: int = 1) -> int:
    """Bytes of one entity's state after ``days`` days at ``per_day`` events a day, folded day by day."""
    return len(entity_state(fs, per_day, days, seed)[0])


def entity_state(fs: FeatureSet, per_day: int, days: int = 91, seed: int = 1) -> tuple[bytes, int]:
    """One entity's state blob after ``days`` days at ``per_day`` events a day, and the time it was built to."""
    rng = np.random.default_rng(seed)
    codec = EntityStateCodec(fs)
    blob = None
    start = END_MS - days * DAY
    seq0 = 0
    for day in range(days):
        frame = payments(rng, per_day, start + day * DAY, DAY, np.full(per_day, "u", dtype=object))
        stored = None if blob is None else codec.decode_many([blob])[0]
        now = start + (day + 1) * DAY
        codes = np.zeros(per_day, dtype=np.int64)
        levels, _late = fold_into_state(fs, stored, frame, codes, np.arange(seq0, seq0 + per_day), now)
        seq0 += per_day
        (blob,) = codec.encode_all(levels, [0], [{"offsets": {"0": seq0}}])
    return blob, start + days * DAY


def read_ms(fs: FeatureSet, per_day: int, reads: int = 50) -> float:
    """CPU milliseconds of one single-entity read (decode the blob, every feature at now): the worker's GET."""
    blob, now = entity_state(fs, per_day)
    codec = EntityStateCodec(fs)
    t0 = time.process_time()
    for _ in range(reads):
        levels, _metas = codec.decode_many([blob])
        read(fs.plan, levels, np.zeros(1, dtype=np.int64), np.array([now + 1_000], dtype=np.int64))
    return 1000 * (time.process_time() - t0) / reads


def ingest_rate(fs: FeatureSet, frame: pd.DataFrame, batch: int, empty: bool = False) -> float:
    """Events per CPU second through decode -> fold_into_state -> encode per micro-batch, states in a dict."""
    codec = EntityStateCodec(fs)
    store: dict[str, bytes] = {}
    now = int(frame["ts"].max()) + 1
    t0 = time.process_time()
    for start in range(0, len(frame), batch):
        part = frame.iloc[start : start + batch]
        codes, keys = pd.factorize(part["user_id"])
        blobs = [store.get(k) for k in keys]
        stored, metas = codec.decode_many(blobs)
        if empty:
            levels = stored
        else:
            seq = np.arange(start, start + len(part))
            levels, _late = fold_into_state(fs, stored, part, codes, seq, now)
        for key, blob in zip(keys, codec.encode_all(levels, list(range(len(keys))), metas), strict=True):
            store[key] = blob
    return len(frame) / (time.process_time() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[1, 100, 10_000], help="events per entity per day")
    parser.add_argument("--ingest-events", type=int, default=200_000, help="events of the ingest measurement")
    parser.add_argument("--users", type=int, default=20_000, help="entities of the ingest measurement")
    parser.add_argument("--batch", type=int, default=5_000, help="micro-batch size (the worker's largest fetch)")
    parser.add_argument("--repeats", type=int, default=3, help="ingest runs per set (median reported)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    sets = feature_sets()
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")

    print("\nState bytes per entity after 91 days (90-day window full), by events per entity per day:\n")
    print("| feature set | features | " + " | ".join(f"{r:,}/day" for r in args.rates) + " |")
    print("|---|---:|" + "---:|" * len(args.rates))
    for label, fs in sets.items():
        sizes = [state_bytes(fs, r) for r in args.rates]
        print(f"| {label} | {len(fs.feature_names())} | " + " | ".join(f"{s:,}" for s in sizes) + " |")

    rng = np.random.default_rng(args.seed)
    weights = 1.0 / np.arange(1, args.users + 1) ** 0.8
    user_ids = np.array([f"u{u:06d}" for u in range(args.users)], dtype=object)
    users = user_ids[rng.choice(args.users, size=args.ingest_events, p=weights / weights.sum())]
    frame = payments(rng, args.ingest_events, END_MS - HOUR, HOUR, users)
    frame = frame.sample(frac=1.0, random_state=args.seed).reset_index(drop=True)  # arrival != time order
    print(
        f"\nIngest through decode -> fold_into_state -> encode, {args.ingest_events:,} events of "
        f"{args.users:,} entities, batches of {args.batch:,}; median of {args.repeats} (runs in brackets):\n"
    )
    print("| feature set | features | events/s | vs base |")
    print("|---|---:|---:|---:|")
    ceiling = [ingest_rate(sets["base"], frame, args.batch, empty=True) for _ in range(args.repeats)]
    base = None
    for label, fs in sets.items():
        runs = [ingest_rate(fs, frame, args.batch) for _ in range(args.repeats)]
        median = statistics.median(runs)
        base = base or median
        shown = " / ".join(f"{r:,.0f}" for r in runs)
        print(f"| {label} | {len(fs.feature_names())} | {median:,.0f} ({shown}) | {median / base:.2f}x |")
    print(f"| ceiling: decode + encode only | 0 | {statistics.median(ceiling):,.0f} | |")

    print("\nSingle-entity read (decode + every feature at now), CPU ms, by events per entity per day:\n")
    print("| feature set | features | " + " | ".join(f"{r:,}/day" for r in args.rates) + " |")
    print("|---|---:|" + "---:|" * len(args.rates))
    for label in ("base", "+all four sketch ops"):
        fs = sets[label]
        print(f"| {label} | {len(fs.feature_names())} | " + " | ".join(f"{read_ms(fs, r):.2f}" for r in args.rates) + " |")
    print(f"\nload after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
