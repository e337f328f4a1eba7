"""Offline retrieval benchmark: ``sinks.get_offline_features`` against the pandas a data scientist would write.

    python benchmarks/offline.py                      # 10M events, 100k users, 90 days, 1M query rows
    python benchmarks/offline.py --events 1000000 --users 10000 --queries 100000

Deterministic data (seeded): events of the example feature set (windows 1h/1d/90d x count, sum, avg,
min, max, last) written as a Parquet dataset in the sink's layout (``sinks.writer.write_batch``, flushes
of ``--flush`` events per Kafka partition, one file per partition and date) in a temp dir; arrival =
event time + a small delay, with a few events arriving a day late. Query rows: random users at random
times, 10% of them at midnight UTC, where every window's tail is tile-aligned and the contract's window
``[floor((t - W) / P) * P, t)`` equals the exact ``[t - W, t)`` that pandas computes.

Each side runs in its own child process, reading the same dataset from disk; reported: wall time, CPU
time (user + sys, forked workers included: steadier than wall time on a shared machine), ``ru_maxrss``
of the process and the sampled peak RSS of its whole process tree (pages shared after a fork count
once per process, so that figure overstates forked runs):

* ours: ``get_offline_features`` (entity-hash partitions, the shared kernel);
* pandas: ``read_parquet``; events and query rows concatenated, ``groupby(user).rolling(W, on=time,
  closed="left")`` count/sum/mean/min/max per window, ``merge_asof`` for last. Pandas' windows are exact
  ``[t - W, t)``: not tile-aligned, so on unaligned rows they differ from the contract (counted and
  reported); on aligned rows both must agree (counts, min, max, last exact; sum/avg within 1e-9 relative).

``--pandas-events N`` runs pandas on a smaller dataset (first N events by arrival, queries scaled in
proportion) when the full size would take too long; the ratio then compares per-event throughput and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aggregations import FeatureVector  # noqa: E402
from aggregations.loading import load_registry  # noqa: E402

DAY = 86_400_000
HOUR = 3_600_000
END_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
KAFKA_PARTITIONS = 4
DEFINITIONS = ROOT / "examples" / "transactions" / "features.py"
WINDOWS = {"1h": HOUR, "1d": DAY, "90d": 90 * DAY}
OPS = ["count", "sum", "avg", "min", "max", "last"]
FEATURES = [f"amount_{op}_{w}" for w in WINDOWS for op in OPS]


def feature_set():
    return load_registry(str(DEFINITIONS)).feature_set("transactions")


# -- data -------------------------------------------------------------------------------------------


def generate_events(n: int, users: int, days: int, seed: int) -> pd.DataFrame:
    """n events (user_id, ts, amount, partition, offset, arrival), in Kafka order (arrival) per partition."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, users + 1) ** 0.5  # some users are much busier than others
    user = rng.choice(users, size=n, p=weights / weights.sum())
    names = np.array([f"u{u:06d}" for u in range(users)], dtype=object)
    ts = END_MS - rng.integers(1, days * DAY + 1, size=n)
    delay = rng.exponential(400.0, size=n).astype(np.int64)
    late = rng.random(n) < 0.001
    delay[late] += rng.integers(HOUR, 2 * DAY, size=int(late.sum()))
    amount = np.round(rng.lognormal(3.5, 1.0, size=n), 2)
    amount[rng.random(n) < 0.005] = np.nan
    partition = (pd.util.hash_array(names) % np.uint64(KAFKA_PARTITIONS)).astype(np.int64)[user]
    frame = pd.DataFrame(
        {"user_id": names[user], "ts": ts, "amount": amount, "partition": partition, "arrival": ts + delay}
    )
    frame = frame.sort_values(["arrival"], kind="stable").reset_index(drop=True)
    frame["offset"] = frame.groupby("partition").cumcount()
    return frame


def write_dataset(events: pd.DataFrame, data_dir: Path, flush: int) -> int:
    """Write events as the sink would (flushes of ``flush`` events per partition); returns the file count."""
    from sinks.layout import dataset_dir
    from sinks.writer import write_batch

    fs = feature_set()
    root = dataset_dir(data_dir, fs.name)
    files = 0
    for partition, part in events.groupby("partition", sort=True):
        for start in range(0, len(part), flush):
            chunk = part.iloc[start : start + flush]
            frame = chunk[["user_id", "ts", "amount"]].reset_index(drop=True)
            files += len(
                write_batch(
                    fs, root, int(partition), frame, chunk["offset"].to_numpy(), chunk["arrival"].to_numpy()
                )
            )
    return files


def generate_queries(n: int, users: int, days: int, seed: int) -> pd.DataFrame:
    """Query rows: user_id and a datetime; 10% at midnight UTC (tile-aligned for every window)."""
    rng = np.random.default_rng(seed + 1)
    weights = 1.0 / np.arange(1, users + 1) ** 0.5
    user = rng.choice(users, size=n, p=weights / weights.sum())
    names = np.array([f"u{u:06d}" for u in range(users)], dtype=object)
    span = min(days, 60) * DAY
    ts = END_MS - rng.integers(0, span, size=n)
    aligned = rng.random(n) < 0.10
    ts[aligned] = (ts[aligned] // DAY) * DAY
    return pd.DataFrame({"user_id": names[user], "ts": pd.to_datetime(ts, unit="ms", utc=True)})


# -- the two contenders (each runs in a child process) ------------------------------------------------


def run_ours(data_dir: Path, queries: Path, out: Path, partitions: int | None, workers: int = 1) -> None:
    from sinks import get_offline_features

    fs = feature_set()
    rows = pd.read_parquet(queries)
    vector = FeatureVector("bench", [f"transactions.{f}" for f in FEATURES])
    get_offline_features(
        vector, rows, data_dir, registry=[fs], partitions=partitions, out=out, workers=workers
    )


def run_pandas(data_dir: Path, queries: Path, out: Path) -> None:
    """What a data scientist would write: rolling windows over events + query rows, merge_asof for last."""
    events = pd.read_parquet(data_dir / "transactions", columns=["user_id", "ts", "amount", "_arrival"])
    rows = pd.read_parquet(queries)
    events["time"] = events["ts"].dt.tz_localize(None).astype("datetime64[ms]")
    events = events.sort_values(["time", "_arrival"], kind="stable")
    q = pd.DataFrame(
        {
            "user_id": rows["user_id"],
            "time": rows["ts"].dt.tz_localize(None).astype("datetime64[ms]"),
            "amount": np.nan,
        }
    )
    q["row"] = np.arange(len(q))
    both = pd.concat([events[["user_id", "time", "amount"]].assign(row=-1), q], ignore_index=True)
    both = both.sort_values(["user_id", "time"], kind="stable").reset_index(drop=True)
    is_query = both["row"].to_numpy() >= 0
    result = pd.DataFrame(index=np.arange(len(rows)))
    positions = both["row"].to_numpy()[is_query]
    for label in WINDOWS:
        window = label.upper() if label.endswith("d") else label  # pandas spells days "D"
        rolling = both.groupby("user_id", sort=False).rolling(window, on="time", closed="left")["amount"]
        for op, fn in (("count", "count"), ("sum", "sum"), ("avg", "mean"), ("min", "min"), ("max", "max")):
            values = getattr(rolling, fn)().to_numpy()  # groupby keeps each group's (sorted) rows together
            values = _ungroup(both, values)
            column = np.empty(len(rows))
            column[positions] = values[is_query]
            if op in ("count", "sum"):
                column = np.nan_to_num(column, nan=0.0)
            result[f"amount_{op}_{label}"] = column
    known = events.dropna(subset=["amount"])[["user_id", "time", "amount"]].rename(
        columns={"time": "event_time", "amount": "last"}
    )
    asof = pd.merge_asof(
        q.sort_values("time"),
        known,
        left_on="time",
        right_on="event_time",
        by="user_id",
        allow_exact_matches=False,
    ).sort_values("row")
    for label, length in WINDOWS.items():
        fresh = asof["event_time"] >= asof["time"] - pd.Timedelta(milliseconds=length)
        result[f"amount_last_{label}"] = asof["last"].where(fresh).to_numpy()
    result.to_parquet(out)


def _ungroup(both: pd.DataFrame, grouped_values: np.ndarray) -> np.ndarray:
    """groupby(sort=False).rolling returns rows group by group in order of first appearance; map back."""
    codes = pd.factorize(both["user_id"])[0]
    order = np.argsort(codes, kind="stable")
    out = np.empty(len(both))
    out[order] = grouped_values
    return out


def _tree_rss_kib(pid: int) -> int:
    """Resident set size of a process and all its descendants (KiB; pages shared after fork count twice)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                total += next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    stack.extend(int(c) for c in children.read().split())
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def child(argv: list[str]) -> dict:
    """Run one contender in a fresh interpreter; its wall time, and peak RSS of its whole process tree."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_kib(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    sampler.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed:\n{stderr[-4000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    report["wall_with_startup_s"] = wall
    report["peak_tree_rss_mib"] = max(peak[0] / 1024, report["peak_rss_mib"])
    return report


# -- comparison --------------------------------------------------------------------------------------


def compare(ours: pd.DataFrame, theirs: pd.DataFrame, aligned: np.ndarray) -> dict:
    """Aligned rows must agree; count unaligned rows where pandas' exact window differs from the contract."""
    differs = np.zeros(len(ours), dtype=bool)
    worst = {}
    for name in FEATURES:
        a = ours[name].to_numpy(dtype=np.float64)
        b = theirs[name].to_numpy(dtype=np.float64)
        both_nan = np.isnan(a) & np.isnan(b)
        if name.split("_")[1] in ("count", "min", "max", "last"):
            same = both_nan | (a == b)
        else:
            same = both_nan | (np.abs(a - b) <= 1e-9 * np.maximum(np.abs(a), np.abs(b)) + 1e-9)
        differs |= ~same
        bad_aligned = int((~same & aligned).sum())
        if bad_aligned:
            worst[name] = bad_aligned
    return {
        "aligned_rows": int(aligned.sum()),
        "aligned_rows_disagreeing": int((differs & aligned).sum()),
        "aligned_mismatches_by_feature": worst,
        "unaligned_rows": int((~aligned).sum()),
        "unaligned_rows_differing_from_contract": int((differs & ~aligned).sum()),
    }


def _ours(work: Path, data: Path, queries: Path, name: str, partitions: int | None, workers: int) -> dict:
    report = child(["ours", str(data), str(queries), str(work / name), str(partitions or 0), str(workers)])
    report["workers"] = workers
    return report


def _describe(label: str, report: dict) -> str:
    return (
        f"{label}: {report['wall_s']:.1f}s wall, {report['cpu_s']:.1f}s CPU, "
        f"peak RSS {report['peak_rss_mib']:.0f} MiB "
        f"(process tree {report['peak_tree_rss_mib']:.0f} MiB)"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("ours", "pandas"):
        return _child_main(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--flush", type=int, default=250_000, help="events per sink flush per partition")
    p.add_argument("--partitions", type=int, default=None, help="entity-hash partitions (default: automatic)")
    p.add_argument(
        "--workers", default="1,2", help="comma-separated worker counts to run ours with (default 1,2)"
    )
    p.add_argument("--pandas-events", type=int, default=None, help="run pandas on the first N events only")
    p.add_argument("--skip-pandas", action="store_true")
    p.add_argument("--keep", help="keep the data in this directory instead of a temp dir")
    args = p.parse_args(argv)
    worker_counts = [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory(prefix="fs-bench-offline-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        events = generate_events(args.events, args.users, args.days, args.seed)
        files = write_dataset(events, work / "data", args.flush)
        queries = generate_queries(args.queries, args.users, args.days, args.seed)
        queries.to_parquet(work / "queries.parquet")
        print(
            f"data: {args.events:,} events, {args.users:,} users, {args.days} days, {files} files; "
            f"{args.queries:,} query rows ({time.perf_counter() - t0:.1f}s to generate and write)",
            flush=True,
        )
        summary: dict = {"events": args.events, "users": args.users, "queries": args.queries, "ours": {}}
        first = None
        for workers in worker_counts:
            name = f"ours-w{workers}.parquet"
            report = _ours(work, work / "data", work / "queries.parquet", name, args.partitions, workers)
            summary["ours"][workers] = report
            print(_describe(f"ours (workers={workers})", report), flush=True)
            if first is None:
                first = pd.read_parquet(work / name)
            else:
                pd.testing.assert_frame_equal(first, pd.read_parquet(work / name))
        if not args.skip_pandas:
            _versus_pandas(args, work, events, queries, worker_counts, summary)
        print(json.dumps(summary))
    return 0


def _versus_pandas(args, work: Path, events, queries, worker_counts, summary) -> None:
    data, query_file, size = work / "data", work / "queries.parquet", args.events
    reduced = bool(args.pandas_events and args.pandas_events < args.events)
    if reduced:  # pandas at a smaller size; ours again at that size for a like-for-like ratio
        size = args.pandas_events
        data, query_file = work / "pdata", work / "pqueries.parquet"
        write_dataset(events.iloc[:size], data, args.flush)
        queries.iloc[: max(1, len(queries) * size // args.events)].to_parquet(query_file)
        summary["ours_at_pandas_size"] = {
            w: _ours(work, data, query_file, f"ours-small-w{w}.parquet", None, w) for w in worker_counts
        }
    theirs = child(["pandas", str(data), str(query_file), str(work / "pandas.parquet")])
    print(_describe("pandas" + (f" (on {size:,} events)" if reduced else ""), theirs), flush=True)
    ours_runs = summary["ours_at_pandas_size"] if reduced else summary["ours"]
    mine = pd.read_parquet(
        work / (f"ours-small-w{worker_counts[0]}.parquet" if reduced else f"ours-w{worker_counts[0]}.parquet")
    )
    stamps = pd.read_parquet(query_file)["ts"].dt.tz_localize(None).astype("datetime64[ms]").astype("int64")
    check = compare(mine, pd.read_parquet(work / "pandas.parquet"), (stamps % DAY == 0).to_numpy())
    ratios = {w: theirs["wall_s"] / r["wall_s"] for w, r in ours_runs.items()}
    cpu_ratios = {w: theirs["cpu_s"] / r["cpu_s"] for w, r in ours_runs.items()}
    summary.update(
        pandas=theirs, comparison=check, ratio=ratios, cpu_ratio=cpu_ratios, pandas_reduced=reduced
    )
    for w in ratios:
        print(
            f"ratio:  pandas / ours (workers={w}) = {ratios[w]:.1f}x wall, {cpu_ratios[w]:.1f}x CPU"
            + (" (at the reduced size)" if reduced else "")
        )
    print(f"check:  {json.dumps(check)}")


def _cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime  # kids: forked workers, once reaped


def _child_main(argv: list[str]) -> int:
    started, cpu_started = time.perf_counter(), _cpu_s()
    if argv[0] == "ours":
        run_ours(Path(argv[1]), Path(argv[2]), Path(argv[3]), int(argv[4]) or None, int(argv[5]))
    else:
        run_pandas(Path(argv[1]), Path(argv[2]), Path(argv[3]))
    wall = time.perf_counter() - started
    cpu = _cpu_s() - cpu_started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak_mib, "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
