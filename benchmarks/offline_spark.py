"""Training sets on the local engine vs the Spark engine (local[2]), same data, same kernel; and Spark's growth.

    python benchmarks/offline_spark.py                                  # 10M events x 1M query rows
    python benchmarks/offline_spark.py --growth 2000000,10000000,30000000 --queries 1000000

The data and query rows are those of ``benchmarks/offline.py`` (seeded; the example feature set, 18
features; the sink's layout, flushes of ``--flush`` events per Kafka partition). Each contender runs in its
own child process reading the same dataset from disk:

* floor: pyarrow reads the columns the features need from every file, nothing else (the machine's ceiling
  for this data: no engine can read it faster);
* local: ``get_offline_features`` with ``workers`` processes (default 1 and 2);
* spark: ``get_offline_features(engine="spark")`` on a fresh ``local[2]`` session; its time includes
  starting the JVM (reported separately as ``startup``).

Reported: wall time, CPU time of the process tree (JVM and Python workers included), sampled peak RSS of
the process tree; the outputs are compared value for value (they must be identical). ``--growth`` runs
the floor, local (1 worker) and Spark at each event count, queries fixed, and prints a table.
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

from benchmarks.offline import (  # noqa: E402
    FEATURES,
    _tree_rss_kib,
    feature_set,
    generate_events,
    generate_queries,
    write_dataset,
)


def _tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process and its descendants (from /proc; children once reaped
    are counted by their parents' cutime/cstime)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    stack.extend(int(c) for c in children.read().split())
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return total


def child(argv: list[str]) -> dict:
    """One contender in a fresh interpreter: wall time, peak RSS and CPU of its whole process tree."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak, cpu = [0], [0.0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_kib(proc.pid))
            cpu[0] = max(cpu[0], _tree_cpu_s(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    sampler.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed:\n{stderr[-4000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    report["wall_with_startup_s"] = wall
    report["peak_tree_rss_mib"] = peak[0] / 1024
    report["tree_cpu_s"] = max(cpu[0], report.get("cpu_s", 0.0))
    return report


def _vector():
    from aggregations import FeatureVector

    return FeatureVector("bench", [f"transactions.{f}" for f in FEATURES])


def run_floor(data: Path) -> dict:
    import pyarrow.dataset as ds

    table = ds.dataset(data / "transactions", format="parquet").to_table(
        columns=["user_id", "ts", "amount", "_partition", "_offset", "_arrival"]
    )
    return {"rows_read": table.num_rows}


def run_local(data: Path, queries: Path, out: Path, workers: int) -> dict:
    from sinks import get_offline_features

    rows = pd.read_parquet(queries)
    get_offline_features(_vector(), rows, data, registry=[feature_set()], out=out, workers=workers)
    return {}


def run_spark(data: Path, queries: Path, out: Path, master: str, driver_memory: str) -> dict:
    from sinks import get_offline_features
    from sinks.spark_engine import spark_session

    os.environ["FEATURESTREAM_SPARK_DRIVER_MEMORY"] = driver_memory
    began = time.perf_counter()
    spark = spark_session(master, {"spark.ui.enabled": "false"})
    startup = time.perf_counter() - began
    rows = pd.read_parquet(queries)
    began = time.perf_counter()
    get_offline_features(_vector(), rows, data, registry=[feature_set()], out=out, engine="spark", spark=spark)
    job = time.perf_counter() - began
    spark.stop()
    return {"startup_s": startup, "job_s": job}


def _child_main(argv: list[str]) -> int:
    started = time.perf_counter()
    kind = argv[0]
    if kind == "floor":
        extra = run_floor(Path(argv[1]))
    elif kind == "local":
        extra = run_local(Path(argv[1]), Path(argv[2]), Path(argv[3]), int(argv[4]))
    else:
        extra = run_spark(Path(argv[1]), Path(argv[2]), Path(argv[3]), argv[4], argv[5])
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = {
        "wall_s": time.perf_counter() - started,
        "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
        **extra,
    }
    print(json.dumps(report))
    return 0


def _same(a: pd.DataFrame, b: pd.DataFrame) -> int:
    """Rows where any feature differs (exactly; null equals null)."""
    bad = np.zeros(len(a), dtype=bool)
    for name in FEATURES:
        x, y = a[name].to_numpy(dtype=np.float64), b[name].to_numpy(dtype=np.float64)
        bad |= ~((x == y) | (np.isnan(x) & np.isnan(y)))
    return int(bad.sum())


def _line(label: str, r: dict) -> str:
    extra = f", JVM start {r['startup_s']:.1f}s, job {r['job_s']:.1f}s" if "startup_s" in r else ""
    return (
        f"{label:<22} {r['wall_with_startup_s']:7.1f}s wall {r['tree_cpu_s']:7.1f}s CPU "
        f"peak RSS {r['peak_tree_rss_mib']:6.0f} MiB{extra}"
    )


def one_size(args, work: Path, events_n: int, worker_counts: list[int], with_floor: bool = True) -> dict:
    data, queries = work / f"data-{events_n}", work / "queries.parquet"
    t0 = time.perf_counter()
    if not (data / "transactions").exists():
        events = generate_events(events_n, args.users, args.days, args.seed)
        files = write_dataset(events, data, args.flush)
        del events
    else:
        files = len(list((data / "transactions").rglob("*.parquet")))
    if not queries.exists():
        generate_queries(args.queries, args.users, args.days, args.seed).to_parquet(queries)
    print(f"data: {events_n:,} events in {files} files, {args.queries:,} query rows "
          f"({time.perf_counter() - t0:.0f}s to prepare)", flush=True)  # fmt: skip
    result: dict = {"events": events_n, "queries": args.queries}
    if with_floor:
        result["floor"] = child(["floor", str(data)])
        print(_line("floor (pyarrow read)", result["floor"]), flush=True)
    outputs = {}
    for w in worker_counts:
        out = work / f"local-{events_n}-w{w}.parquet"
        result[f"local_w{w}"] = child(["local", str(data), str(queries), str(out), str(w)])
        outputs[f"local_w{w}"] = out
        print(_line(f"local (workers={w})", result[f"local_w{w}"]), flush=True)
    out = work / f"spark-{events_n}.parquet"
    result["spark"] = child(["spark", str(data), str(queries), str(out), args.master, args.driver_memory])
    outputs["spark"] = out
    print(_line(f"spark {args.master}", result["spark"]), flush=True)
    reference = pd.read_parquet(outputs[f"local_w{worker_counts[0]}"])
    result["rows_differing_from_local"] = {k: _same(reference, pd.read_parquet(p)) for k, p in outputs.items()}
    print(f"check: rows differing from local (workers={worker_counts[0]}): "
          f"{json.dumps(result['rows_differing_from_local'])}", flush=True)  # fmt: skip
    first = f"local_w{worker_counts[0]}"
    result["ratio_spark_over_local_wall"] = result["spark"]["wall_with_startup_s"] / result[first]["wall_with_startup_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("floor", "local", "spark"):
        return _child_main(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--flush", type=int, default=250_000)
    p.add_argument("--workers", default="1,2", help="local engine worker counts (default 1,2)")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="4g", help="Spark driver (= executor in local mode) heap")
    p.add_argument("--growth", help="comma-separated event counts: Spark's growth table (local with 1 worker beside)")
    p.add_argument("--keep", help="keep data in this directory (reused by later runs) instead of a temp dir")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fs-bench-spark-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.growth:
            sizes = [int(x) for x in args.growth.split(",")]
            table = [one_size(args, work, n, [1], with_floor=True) for n in sizes]
            print("\nevents      | floor s | local s | spark s | spark job s | spark peak MiB | local peak MiB | spark us/event")
            for r in table:
                s, loc = r["spark"], r["local_w1"]
                print(f"{r['events']:>11,} | {r['floor']['wall_with_startup_s']:7.1f} | {loc['wall_with_startup_s']:7.1f} | "
                      f"{s['wall_with_startup_s']:7.1f} | {s['job_s']:11.1f} | {s['peak_tree_rss_mib']:14.0f} | "
                      f"{loc['peak_tree_rss_mib']:14.0f} | {1e6 * s['job_s'] / r['events']:14.2f}")  # fmt: skip
            print(json.dumps({"growth": table}))
        else:
            workers = [int(w) for w in args.workers.split(",")]
            print(json.dumps(one_size(args, work, args.events, workers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
