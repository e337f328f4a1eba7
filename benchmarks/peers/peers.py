"""Peers side by side: featurestream against Quix Streams, Feast, MLRun's storey and pandas, one run.

    benchmarks/peers/run.sh            # or: make peers; builds the peer venvs on first use
    benchmarks/peers/run.sh --quick    # smoke run, a few minutes

Runs in the project venv; every peer runs as a subprocess in its own venv
(``benchmarks/peers/.venvs/<peer>``, pinned in ``requirements-<peer>.txt``) and prints JSON. One Kafka
broker of our own (``deploy/kafka/start.sh --port 19392``, controller 19393, data in /tmp/peers-kafka,
wiped), Redis on 19396, our worker's HTTP on 19401, ``feast serve`` on 19402. Every measure is repeated
``--reps`` times, alternating which side goes first; the table quotes medians and the ratio of medians.

1. ingest (vs Quix Streams): ``--ingest-events`` sample payments (``featurestream.samples``, seed 7, event
   times over the last day) pre-filled into a fresh 4-partition topic per repetition; our worker
   (``benchmarks/online.py``'s Worker and ``measure_ingest``: the rate from the first consumed micro-batch to
   the last event, startup excluded) and Quix Streams (``peer_quix.py``: windows 1h/1d/90d, each with
   count/sum/mean/min/max/latest of amount per user, from the first message on; sliding windows with
   ``.current()``, and for the full workload also hopping windows stepped by our tile periods with
   ``.final()``, the windows a Quix user would pick for tiled features) each consume the whole topic with a
   fresh consumer group.
2. online reads (vs ``feast serve`` + Redis): the worker of the last ingest repetition, idle, answers
   ``GET /features/transactions/{user}`` (all 18 features); Feast serves the same 18 values per user
   (computed with our ``preview``, materialized into Redis) on ``POST /get-online-features``. Both are driven by
   ``wrk`` (``benchmarks/httpload.py``: one thread, a random user per request) at 1, 8 and 32 connections for
   ``--read-seconds`` each; req/s and wrk's p50/p99/p999, plus the server's CPU time per request.
3. offline (vs Feast's file offline store): ``benchmarks/offline.py``'s data (``--offline-events`` events,
   ``--offline-users`` users, 90 days, sink layout for ours, one Parquet file for Feast) and query rows
   (``--queries``); the feature is the latest amount within 7 days (ours: a FeatureSet with ``last`` over
   7d; Feast: a FeatureView with ttl 7d). Each side in its own process: wall time of the retrieval call,
   peak RSS (``ru_maxrss``). Values compared row by row.
4. in memory (vs storey): the first ``--storey-events`` ingest events; storey's AggregateByKey (sliding
   windows with our periods) vs our ``preview`` (features per event), events/s; values of each user after
   its last event (storey's output with that event) vs ours at (user, last ts + 1 ms).
5. pandas: ``benchmarks/offline.py``'s ours-vs-pandas comparison (18 features, rolling windows) on the
   offline data.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import offline as off  # noqa: E402  benchmarks/offline.py
import online as onl  # noqa: E402  benchmarks/online.py
from httpload import run_wrk, wrk_path  # noqa: E402  benchmarks/httpload.py

from aggregations.schema import to_epoch_ms  # noqa: E402

KAFKA_PORT, KAFKA_DATA = 19392, "/tmp/peers-kafka"
REDIS_PORT, WORKER_PORT, FEAST_PORT = 19396, 19401, 19402
READ_CONNECTIONS = (1, 8, 32)
VENVS = HERE / ".venvs"
DAY_MS = 86_400_000
FEATURES = [
    f"amount_{op}_{w}" for w in ("1h", "1d", "90d") for op in ("count", "sum", "avg", "min", "max", "last")
]


def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peer_python(peer: str) -> str:
    path = VENVS / peer / "bin" / "python"
    if not path.exists():
        raise SystemExit(f"missing {path}: run benchmarks/peers/run.sh (it builds the peer venvs)")
    return str(path)


def run_json(cmd: list[str], timeout: float, cwd: str | None = None) -> dict:
    """Run a subprocess, return the JSON of its last stdout line; stderr tail on failure."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{cmd[:3]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def med(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


# -- services ---------------------------------------------------------------------------------------


class Services:
    """Broker, Redis, feast serve: started here, stopped in ``stop`` (also on errors and Ctrl-C)."""

    def __init__(self):
        self.kafka = False
        self.redis: subprocess.Popen | None = None
        self.feast: subprocess.Popen | None = None

    def start_kafka(self) -> str:
        args = ["--port", str(KAFKA_PORT), "--data-dir", KAFKA_DATA]
        subprocess.run(
            ["bash", str(REPO / "deploy/kafka/stop.sh"), *args, "--wipe"], capture_output=True, check=False
        )
        env = dict(
            os.environ,
            FEATURESTREAM_PYTHON=sys.executable,
            KAFKA_WATCH_PID=str(os.getpid()),
            KAFKA_WATCH_WIPE="1",
        )
        started = subprocess.run(
            ["bash", str(REPO / "deploy/kafka/start.sh"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if started.returncode != 0:
            raise SystemExit(f"could not start Kafka on {KAFKA_PORT}:\n{started.stderr[-3000:]}")
        self.kafka = True
        return f"127.0.0.1:{KAFKA_PORT}"

    def start_redis(self, workdir: Path) -> None:
        if port_open(REDIS_PORT):
            raise SystemExit(f"port {REDIS_PORT} is in use; stop whatever listens there")
        self.redis = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(REDIS_PORT),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not port_open(REDIS_PORT):
            if time.monotonic() > deadline or self.redis.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.1)

    def start_feast(self, repo: Path, log_path: Path) -> None:
        feast = str(VENVS / "feast" / "bin" / "feast")
        self.feast_log = open(log_path, "w")  # noqa: SIM115
        self.feast = subprocess.Popen(
            [
                feast,
                "-c",
                str(repo),
                "serve",
                "-h",
                "127.0.0.1",
                "-p",
                str(FEAST_PORT),
                "-w",
                "1",
                "--no-access-log",
                "--max-requests",
                "0",
            ],
            stdout=self.feast_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while not port_open(FEAST_PORT):
            if time.monotonic() > deadline or self.feast.poll() is not None:
                raise RuntimeError(f"feast serve did not start:\n{Path(log_path).read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.feast is not None and self.feast.poll() is None:
            os.killpg(self.feast.pid, signal.SIGTERM)  # gunicorn master and its worker: our own session
            try:
                self.feast.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.feast.pid, signal.SIGKILL)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(timeout=30)
        if self.kafka:
            subprocess.run(
                [
                    "bash",
                    str(REPO / "deploy/kafka/stop.sh"),
                    "--port",
                    str(KAFKA_PORT),
                    "--data-dir",
                    KAFKA_DATA,
                    "--wipe",
                ],
                capture_output=True,
                timeout=120,
                check=False,
            )
            self.kafka = False


# -- 1. ingest ---------------------------------------------------------------------------------------


WORKLOADS = {  # name -> (our definitions file, event time span, description)
    "full": (
        onl.DEFINITIONS,
        DAY_MS,
        "windows 1h/1d/90d x count/sum/avg/min/max/last (18 features), events of the last day",
    ),
    # events of the last hour: over a day, 23/24 of them would be older than any 1h read can reach, which our
    # worker counts as late and republishes to <topic>.late, while Quix (stream time, not wall clock) keeps them
    "light": (
        HERE / "light_features.py",
        3_600_000,
        "one 1h window x count/sum/avg (3 features), events of the last hour",
    ),
}


def ingest(args, broker: str, work: Path, reads_events: pd.DataFrame, results: dict):
    from featurestream.samples import sample_events

    onl._free_ports = lambda n: [WORKER_PORT + i for i in range(n)]  # our HTTP port range, not a random one
    onl.POLL_S = 0.02  # /metrics polls: ours takes ~1 s for these sizes, 0.1 s would be too coarse
    out = {w: {"ours": [], "quix": [], "quix_hopping": []} for w in WORKLOADS}
    for rep in range(args.reps):
        for workload, (definitions, span_ms, _) in WORKLOADS.items():
            prefix = f"peers{rep}{workload}-{int(time.time())}-"
            topic = f"{prefix}transactions"
            # same seed every time; event times end now, so a repetition minutes later sees no more late events
            events = sample_events(args.ingest_events, users=args.ingest_users, seed=7, span_ms=span_ms)
            onl.prefill(broker, topic, events, 4)
            sides = ["ours", "quix", "quix_hopping"] if workload == "full" else ["ours", "quix"]
            for side in sides if rep % 2 == 0 else sides[::-1]:
                late = ""
                if side == "ours":
                    onl.DEFINITIONS = definitions  # read by Worker() for --definitions
                    worker = onl.Worker(
                        broker, prefix, str(work / f"state-{prefix}"), str(work / f"{prefix}.log")
                    )
                    try:
                        m = onl.measure_ingest(worker, len(events))
                    finally:
                        worker.stop()  # not left idling while the peer runs
                    rate, seconds, cpu = m["rate"], m["seconds"], m["cpu_share"]
                    late = f", {m['metrics'].get('featurestream_events_late_total', 0):,.0f} late"
                    results.setdefault("ours_late", []).append(
                        m["metrics"].get("featurestream_events_late_total", 0)
                    )
                else:
                    quix_workload = "hopping" if side == "quix_hopping" else workload
                    cmd = [peer_python("quixstreams"), str(HERE / "peer_quix.py"), broker, topic, str(len(events)),
                           str(work / f"{side}-{prefix}"), quix_workload]  # fmt: skip
                    r = run_json(cmd, timeout=1800)
                    results["versions"]["quixstreams"] = r["version"]
                    rate, seconds, cpu = r["rate"], r["seconds"], r["cpu_share"]
                out[workload][side].append(rate)
                log(
                    f"ingest rep {rep + 1} ({workload}): {side} {rate:,.0f} events/s ({seconds:.1f}s, CPU {cpu:.0%} of a core{late})"
                )
    onl.DEFINITIONS = WORKLOADS["full"][0]
    results["ingest"] = out
    # a fresh worker (full feature set) serves the online reads, once it has consumed every event
    prefix = f"peersreads-{int(time.time())}-"
    onl.prefill(broker, f"{prefix}transactions", reads_events, 4)
    worker = onl.Worker(broker, prefix, str(work / "state-reads"), str(work / "worker-reads.log"))
    onl.measure_ingest(worker, len(reads_events))
    onl.wait_healthy(worker)
    return worker


# -- 2. online reads ---------------------------------------------------------------------------------


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    total, stack, tick = 0.0, [pid], os.sysconf("SC_CLK_TCK")
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in os.listdir(f"/proc/{current}/task"):
                stack.extend(
                    int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()
                )
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def reads(args, services: Services, worker, work: Path, events: pd.DataFrame, results: dict) -> None:
    from aggregations.loading import load_registry

    fs = load_registry(str(onl.DEFINITIONS)).feature_set("transactions")
    last = events.groupby("user_id", sort=True)["ts"].max()
    users = last.index.tolist()
    at = pd.DataFrame({"user_id": users, "ts": last.to_numpy() + 1})
    values = fs.preview(events, at=at)
    table = pd.DataFrame({"user_id": users, "ts": pd.Timestamp.now(tz="UTC").floor("s")})
    for name in FEATURES:
        table[name] = values[name].astype("float64").to_numpy()
    table.to_parquet(work / "online_features.parquet")
    services.start_redis(work)
    r = run_json(
        [
            peer_python("feast"),
            str(HERE / "peer_feast.py"),
            "online",
            str(work / "feast_online"),
            str(work / "online_features.parquet"),
            f"127.0.0.1:{REDIS_PORT}",
        ],
        timeout=900,
    )
    results["versions"]["feast"] = r["version"]
    log(
        f"feast: {r['users']:,} users x {len(r['features'])} features materialized into Redis in {r['materialize_s']:.1f}s"
    )
    services.start_feast(work / "feast_online", work / "feast_serve.log")

    refs = [f"transactions_online:{n}" for n in FEATURES]
    feast_body = json.dumps({"features": refs, "entities": {"user_id": ["@ENTITY@"]}})
    users_file = work / "read-users.txt"
    users_file.write_text("\n".join(users) + "\n")
    # sanity: both answer with values for a user
    probe = users[0]
    for port, method, path, body in (
        (WORKER_PORT, "GET", f"/features/transactions/{probe}", None),
        (FEAST_PORT, "POST", "/get-online-features", feast_body.replace("@ENTITY@", probe)),
    ):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        text = resp.read().decode()
        if resp.status != 200:
            raise RuntimeError(f"port {port}: {resp.status} {text[:500]}")
        conn.close()
    out = {s: {c: [] for c in READ_CONNECTIONS} for s in ("ours", "feast")}
    sides = {  # wrk arguments, server processes whose CPU time counts (Feast: feast serve's tree and Redis)
        "ours": (dict(base_url=f"http://127.0.0.1:{WORKER_PORT}", path_prefix="/features/transactions/"), [worker.proc.pid]),
        "feast": (
            dict(base_url=f"http://127.0.0.1:{FEAST_PORT}", path_prefix="/get-online-features", body=feast_body),
            [services.feast.pid, services.redis.pid],
        ),
    }  # fmt: skip
    for rep in range(args.reps):
        for side in ["ours", "feast"] if rep % 2 == 0 else ["feast", "ours"]:
            target, pids = sides[side]
            run_wrk(connections=8, seconds=2, entities_file=users_file, **target)  # warm up: untimed
            for c in READ_CONNECTIONS:
                cpu0 = sum(tree_cpu_s(pid) for pid in pids)
                w = run_wrk(connections=c, seconds=args.read_seconds, entities_file=users_file, **target)
                m = w.as_dict()
                m["server_cpu_ms"] = 1000 * (sum(tree_cpu_s(pid) for pid in pids) - cpu0) / max(1, w.requests)
                out[side][c].append(m)
                log(
                    f"reads rep {rep + 1}: {side} {c:2d} connection(s) {w.rate:,.0f} req/s p50 {w.p50:.2f} ms p99 "
                    f"{w.p99:.2f} ms p999 {w.p999:.2f} ms, server CPU {m['server_cpu_ms']:.2f} ms/request, {w.errors} errors"
                )
    results["reads"] = out


# -- 3. offline vs Feast -------------------------------------------------------------------------------


def ours_last_child(data: str, queries: str, out: str) -> int:
    """Child process: get_offline_features of ``amount_last_7d``; JSON with seconds and ru_maxrss."""
    from aggregations import Aggregation, Entity, FeatureSet, FeatureVector
    from sinks import get_offline_features

    fs = FeatureSet(
        name="transactions",
        entities=[Entity("user_id")],
        timestamp_key="ts",
        source="transactions",
        schema={"user_id": "string", "ts": "timestamp", "amount": "float64"},
        aggregations=[Aggregation("amount", ["last"], windows=["7d"])],
    )
    rows = pd.read_parquet(queries)
    started = time.perf_counter()
    frame = get_offline_features(
        FeatureVector("peers", ["transactions.amount_last_7d"]), rows, data, registry=[fs]
    )
    seconds = time.perf_counter() - started
    frame[["amount_last_7d"]].to_parquet(out)
    print(
        json.dumps(
            {"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        )
    )
    return 0


def offline_data(args, work: Path) -> dict:
    t0 = time.perf_counter()
    events = off.generate_events(args.offline_events, args.offline_users, 90, 42)
    off.write_dataset(events, work / "data", 250_000)
    pd.DataFrame(
        {
            "user_id": events["user_id"],
            "ts": pd.to_datetime(events["ts"], unit="ms", utc=True),
            "amount": events["amount"],
        }
    ).to_parquet(work / "feast_events.parquet")
    queries = off.generate_queries(args.queries, args.offline_users, 90, 42)
    queries.to_parquet(work / "queries.parquet")
    queries.assign(row=np.arange(len(queries))).to_parquet(work / "feast_queries.parquet")
    log(
        f"offline data: {len(events):,} events, {args.offline_users:,} users, 90 days; {len(queries):,} query rows "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    return {"events": events, "queries": queries}


def versus_feast(args, work: Path, data: dict, results: dict) -> None:
    ours, feast = [], []
    for rep in range(args.reps):
        for side in ["ours", "feast"] if rep % 2 == 0 else ["feast", "ours"]:
            if side == "ours":
                r = run_json(
                    [
                        sys.executable,
                        __file__,
                        "_ours_last",
                        str(work / "data"),
                        str(work / "queries.parquet"),
                        str(work / "ours_last.parquet"),
                    ],
                    timeout=1800,
                )
                ours.append(r)
            else:
                r = run_json(
                    [
                        peer_python("feast"),
                        str(HERE / "peer_feast.py"),
                        "offline",
                        str(work / f"feast_repo{rep}"),
                        str(work / "feast_events.parquet"),
                        str(work / "feast_queries.parquet"),
                        str(work / "feast_last.parquet"),
                    ],
                    timeout=1800,
                )
                feast.append(r)
                results["versions"]["feast"] = r["version"]
            log(
                f"offline rep {rep + 1}: {side} {r['seconds']:.2f}s, peak RSS {r['peak_rss_mib']:.0f} MiB"
                + (f", {r['rows_out']:,} of {r['rows_in']:,} rows returned" if side == "feast" else "")
            )
    results["offline_feast"] = {"ours": ours, "feast": feast, "values": compare_last(work, data)}


def compare_last(work: Path, data: dict) -> dict:
    """Row by row: ours vs Feast, and why they differ (Feast's semantics: latest row with t-7d <= ts <= t)."""
    queries = data["queries"].assign(row=np.arange(len(data["queries"])))
    ours = pd.read_parquet(work / "ours_last.parquet")["amount_last_7d"].to_numpy(dtype=float)
    feast = pd.read_parquet(work / "feast_last.parquet")
    returned = np.zeros(len(queries), dtype=bool)
    returned[feast["row"].to_numpy()] = True
    theirs = np.full(len(queries), np.nan)
    theirs[feast["row"].to_numpy()] = feast["amount"].to_numpy(dtype=float)
    t = to_epoch_ms(queries["ts"])
    ev = data["events"][["user_id", "ts", "amount"]]
    q = pd.DataFrame(
        {"user_id": queries["user_id"].to_numpy(), "t": t, "row": queries["row"].to_numpy()}
    ).sort_values("t")
    # (a) an event exactly at t, (b) the latest event in [t-7d, t] has a null amount
    incl = pd.merge_asof(
        q,
        ev.sort_values("ts").rename(columns={"ts": "et"}),
        left_on="t",
        right_on="et",
        by="user_id",
        allow_exact_matches=True,
    ).sort_values("row")
    at_t = (incl["et"] == incl["t"]).to_numpy()
    no_event = ~(incl["et"] >= incl["t"] - 7 * DAY_MS).to_numpy()  # nothing in Feast's [t - 7d, t]
    null_latest = (incl["et"] >= incl["t"] - 7 * DAY_MS).to_numpy() & incl["amount"].isna().to_numpy()
    # (c) the latest non-null event before t is older than t-7d but inside our tile-aligned tail
    nn = ev.dropna(subset=["amount"]).sort_values("ts").rename(columns={"ts": "et"})
    excl = pd.merge_asof(
        q, nn, left_on="t", right_on="et", by="user_id", allow_exact_matches=False
    ).sort_values("row")
    tail = ((excl["t"] - 7 * DAY_MS) // 3_600_000 * 3_600_000).to_numpy()
    in_tail = (excl["et"].to_numpy() >= tail) & (excl["et"].to_numpy() < excl["t"].to_numpy() - 7 * DAY_MS)
    same = (np.isnan(ours) & np.isnan(theirs)) | (ours == theirs)
    cmp = returned & ~same
    explained = at_t | null_latest | in_tail
    return {
        "rows": len(queries),
        "returned_by_feast": int(returned.sum()),
        "duplicate_query_rows": int(queries.duplicated(["user_id", "ts"]).sum()),
        "dropped_no_event_in_ttl": int((~returned & no_event).sum()),
        "dropped_other": int((~returned & ~no_event).sum()),
        "match_share": float(same[returned].mean()),
        "differ": int(cmp.sum()),
        "differ_event_at_t": int((cmp & at_t).sum()),
        "differ_null_latest": int((cmp & null_latest).sum()),
        "differ_tile_tail": int((cmp & in_tail).sum()),
        "differ_unexplained": int((cmp & ~explained).sum()),
    }


# -- 4. storey ----------------------------------------------------------------------------------------


def ours_preview_child(events_path: str) -> int:
    from aggregations.loading import load_registry

    fs = load_registry(str(onl.DEFINITIONS)).feature_set("transactions")
    events = pd.read_parquet(events_path)
    started = time.perf_counter()
    fs.preview(events)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rate": len(events) / seconds}))
    return 0


def versus_storey(args, work: Path, events: pd.DataFrame, results: dict) -> None:
    from aggregations.loading import load_registry

    subset = events.sort_values("ts", kind="stable").iloc[: args.storey_events].reset_index(drop=True)
    subset.to_parquet(work / "storey_events.parquet")
    ours, storey = [], []
    for rep in range(args.reps):
        for side in ["ours", "storey"] if rep % 2 == 0 else ["storey", "ours"]:
            if side == "ours":
                r = run_json(
                    [sys.executable, __file__, "_ours_preview", str(work / "storey_events.parquet")],
                    timeout=900,
                )
                ours.append(r["rate"])
            else:
                r = run_json(
                    [
                        peer_python("storey"),
                        str(HERE / "peer_storey.py"),
                        str(work / "storey_events.parquet"),
                        str(work / "storey_out.parquet"),
                    ],
                    timeout=1800,
                )
                storey.append(r["rate"])
                results["versions"]["storey"] = r["storey"]
            log(f"in memory rep {rep + 1}: {side} {r['rate']:,.0f} events/s ({r['seconds']:.1f}s)")
    theirs = pd.read_parquet(work / "storey_out.parquet").sort_values("user_id").reset_index(drop=True)
    fs = load_registry(str(onl.DEFINITIONS)).feature_set("transactions")
    at = pd.DataFrame({"user_id": theirs["user_id"], "ts": theirs["ts"] + 1})
    mine = fs.preview(subset, at=at)
    per_window, all_same = {}, np.ones(len(theirs), dtype=bool)
    for window in ("1h", "1d", "90d"):
        win_same = np.ones(len(theirs), dtype=bool)
        for op in ("count", "sum", "avg", "min", "max", "last"):
            name = f"amount_{op}_{window}"
            a = mine[name].to_numpy(dtype=float)
            b = theirs[name].to_numpy(dtype=float)
            if op == "count":
                b = np.nan_to_num(b)
            same = (np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= 1e-9 * np.maximum(np.abs(a), np.abs(b)))
            win_same &= same
        per_window[window] = float(win_same.mean())
        all_same &= win_same
    results["storey"] = {
        "ours": ours,
        "storey": storey,
        "users": len(theirs),
        "events": len(subset),
        "match_all": float(all_same.mean()),
        "match_by_window": per_window,
    }


# -- 5. pandas ----------------------------------------------------------------------------------------


def versus_pandas(args, work: Path, results: dict) -> None:
    data, queries = str(work / "data"), str(work / "queries.parquet")
    ours, theirs = [], []
    for rep in range(args.reps):
        for side in ["ours", "pandas"] if rep % 2 == 0 else ["pandas", "ours"]:
            if side == "ours":
                r = off.child(["ours", data, queries, str(work / "ours18.parquet"), "0", "1"])
                ours.append(r)
            else:
                r = off.child(["pandas", data, queries, str(work / "pandas18.parquet")])
                theirs.append(r)
            log(
                f"offline vs pandas rep {rep + 1}: {side} {r['wall_s']:.2f}s, peak RSS {r['peak_rss_mib']:.0f} MiB"
            )
    stamps = to_epoch_ms(pd.read_parquet(queries)["ts"])
    check = off.compare(
        pd.read_parquet(work / "ours18.parquet"),
        pd.read_parquet(work / "pandas18.parquet"),
        stamps % DAY_MS == 0,
    )
    results["pandas"] = {"ours": ours, "pandas": theirs, "check": check}


# -- table --------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def better(x: float, good: str, bad: str) -> str:
    """``x``: how many times better ours is (peer time / our time, or our rate / peer rate)."""
    if not np.isfinite(x):
        return "n/a"
    return f"{x:.1f}x {good}" if x >= 1 else f"{1 / x:.1f}x {bad}"


def table(args, results: dict) -> str:
    rows = []
    for workload, (_, _, what) in WORKLOADS.items() if "ingest" in results else ():
        o, q = med(results["ingest"][workload]["ours"]), med(results["ingest"][workload]["quix"])
        rows.append(
            (
                f"Ingest from a pre-filled Kafka topic, {what}, events/s",
                f"{o:,.0f}",
                f"Quix Streams {q:,.0f} (sliding windows)",
                better(o / q, "faster", "slower"),
                ">= 2x Quix",
                verdict(o >= 2 * q),
            )
        )
        hopping = results["ingest"][workload].get("quix_hopping")
        if hopping:
            h = med(hopping)
            rows.append(
                (
                    f"Ingest, {what}: Quix with hopping windows stepped by our tile periods, events/s",
                    f"{o:,.0f}",
                    f"Quix Streams {h:,.0f} (hopping 1h/5m, 1d/1h, 90d/1d)",
                    better(o / h, "faster", "slower"),
                    ">= 2x Quix",
                    verdict(o >= 2 * h),
                )
            )
    if "reads" in results:
        r = results["reads"]
        for c in READ_CONNECTIONS:
            o50, o99, o999 = (med([m[q] for m in r["ours"][c]]) for q in ("p50", "p99", "p999"))
            f50, f99, f999 = (med([m[q] for m in r["feast"][c]]) for q in ("p50", "p99", "p999"))
            orate, frate = med([m["rate"] for m in r["ours"][c]]), med([m["rate"] for m in r["feast"][c]])
            ocpu, fcpu = (
                med([m["server_cpu_ms"] for m in r["ours"][c]]),
                med([m["server_cpu_ms"] for m in r["feast"][c]]),
            )
            rows.append(
                (
                    f"Online read (wrk), {c} connection{'s' if c > 1 else ''}: req/s; p50 / p99 / p999 ms; server CPU ms "
                    "per request",
                    f"{orate:,.0f}/s; {o50:.2f} / {o99:.2f} / {o999:.2f}; {ocpu:.2f}",
                    f"feast serve + Redis {frate:,.0f}/s; {f50:.2f} / {f99:.2f} / {f999:.2f}; {fcpu:.2f}",
                    better(orate / frate, "more req/s", "fewer req/s") + ", p99 " + better(f99 / o99, "lower", "higher"),
                    "p99 <= Feast",
                    verdict(o99 <= f99),
                )
            )
    if "offline_feast" in results:
        r = results["offline_feast"]
        o, f = med([x["seconds"] for x in r["ours"]]), med([x["seconds"] for x in r["feast"]])
        om, fm = med([x["peak_rss_mib"] for x in r["ours"]]), med([x["peak_rss_mib"] for x in r["feast"]])
        v = r["values"]
        rows.append(
            (
                f"Offline retrieval, last amount in 7d ({args.offline_events:,} events, {args.queries:,} rows): "
                "wall s / peak RSS MiB",
                f"{o:.2f} / {om:,.0f}",
                f"Feast file store {f:.2f} / {fm:,.0f}",
                better(f / o, "faster", "slower") + ", " + better(fm / om, "less memory", "more memory"),
                ">= 5x Feast",
                verdict(f >= 5 * o),
            )
        )
        rows.append(
            (
                "Offline values: query rows answered; of Feast's answers, share equal to ours",
                f"{v['rows']:,} of {v['rows']:,}",
                f"{v['returned_by_feast']:,} of {v['rows']:,} (dropped: {v['dropped_no_event_in_ttl']:,} rows with no event "
                f"in 7d, {v['dropped_other']:,} others; {v['duplicate_query_rows']:,} rows repeat a (user, ts) pair)",
                f"{v['match_share']:.2%} equal",
                "",
                "",
            )
        )
    if "storey" in results:
        r = results["storey"]
        o, s = med(r["ours"]), med(r["storey"])
        rows.append(
            (
                f"In memory, features per event ({r['events']:,} events), events/s",
                f"{o:,.0f}",
                f"storey {s:,.0f}",
                better(o / s, "faster", "slower"),
                "",
                "",
            )
        )
        rows.append(
            (
                f"In memory values: users ({r['users']:,}) whose 18 features after their last event match ours",
                "",
                "storey",
                f"{r['match_all']:.1%} "
                f"(1h {r['match_by_window']['1h']:.0%}, 1d {r['match_by_window']['1d']:.0%}, 90d {r['match_by_window']['90d']:.0%})",
                "",
                "",
            )
        )
    if "pandas" in results:
        r = results["pandas"]
        o, p = med([x["wall_s"] for x in r["ours"]]), med([x["wall_s"] for x in r["pandas"]])
        om, pm = med([x["peak_rss_mib"] for x in r["ours"]]), med([x["peak_rss_mib"] for x in r["pandas"]])
        c = r["check"]
        wrong = c["unaligned_rows_differing_from_contract"] / max(1, c["unaligned_rows"])
        rows.append(
            (
                f"Offline, 18 features ({args.offline_events:,} events, {args.queries:,} rows): wall s / peak RSS MiB",
                f"{o:.2f} / {om:,.0f}",
                f"pandas rolling {p:.2f} / {pm:,.0f}",
                better(p / o, "faster", "slower"),
                "",
                "",
            )
        )
        rows.append(
            (
                "pandas rolling vs the window contract: unaligned rows that differ / aligned rows that disagree",
                "",
                "pandas",
                f"{wrong:.0%} / {c['aligned_rows_disagreeing']}",
                "",
                "",
            )
        )
    header = ("measure", "featurestream", "peer", "featurestream vs peer", "goal", "")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def code_version() -> str:
    """HEAD commit of the repo, and whether the code the run imports differs from it (others work in the tree)."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run(
        [*git, "log", "-1", "--format=%h %cs"], capture_output=True, text=True, check=False
    ).stdout.strip()
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--", "aggregations", "stream", "sinks", "featurestream"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    return f"commit {head}" + (f" with {len(changed)} uncommitted file(s) in its packages" if changed else "")


def markdown(args, results: dict, tbl: str, started: float) -> str:
    v = results["versions"]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    out = [
        "# featurestream and its peers, side by side",
        "",
        f"Measured {when} on one machine ({os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}), shared with other work (load average at "
        f"start {results['load']['start']}, at end {results['load']['end']}); one run of "
        f"`benchmarks/peers/run.sh{' --quick' if args.quick else ''}` ({(time.time() - started) / 60:.1f} min). "
        f"Medians of {args.reps} repetitions, alternating which side goes first; ratios are of those medians.",
        "",
        f"featurestream: {results.get('commit', '?')}.",
        "",
        tbl,
        "",
        f"Peers: Quix Streams {v.get('quixstreams', '?')}, Feast {v.get('feast', '?')} (file offline store; "
        f"`feast serve` with 1 gunicorn worker, `--no-access-log --max-requests 0`, Redis {results.get('redis', '?')}), "
        f"storey {v.get('storey', '?')}, pandas {pd.__version__}; each in its own venv "
        "(`benchmarks/peers/requirements-*.txt`).",
        "",
        "What each line measures and where semantics differ:",
        "",
        f"- **Ingest**: per repetition and workload a fresh 4-partition topic pre-filled with the same "
        f"{args.ingest_events:,} sample payments of {args.ingest_users:,} users (seed 7; times over the last day for "
        "the full workload, the last hour for the light one, so that none is late for our worker), each side one "
        "process with RocksDB state and a changelog topic, a fresh consumer group, startup excluded. Ours keeps tiles "
        "(1h/1d/90d by 5m/1h/1d periods) and folds micro-batches of up to 5,000; Quix keeps sliding windows per key "
        "(step 1 ms, both ends inclusive) and emits every update (`.current()`): its cost per event grows with the "
        "events the key has in the window, hence the gap on the 90d window. Ours finishes in about a second at this "
        "size, so its rates carry a few percent of polling error.",
        "- **Online reads**: ours computes the 18 features from tile state at request time (GET); Feast returns "
        "the same 18 precomputed values from Redis (POST `/get-online-features`). Both are driven by `wrk` (compiled, "
        "one thread, keep-alive connections, a random user per request) at 1, 8 and 32 connections; on 2 cores wrk, "
        "the server and (for Feast) Redis share the machine, so the server's CPU time per request (ours: the worker "
        "process; Feast: `feast serve`'s processes plus redis-server) decides the rate as much as its design.",
        "- **Quix windows**: `sliding` is Quix's sliding window (step 1 ms, emits on every event, `.current()`); "
        "`hopping` is what a Quix user would pick for tiled features: hopping windows of the same lengths stepped by "
        "our tile periods (1h by 5m, 1d by 1h, 90d by 1d), emitted when a window closes (`.final()`); each event "
        "updates every window that contains it (12 + 24 + 90).",
        "- **Offline vs Feast**: Feast's window is `[t - 7d, t]` (an event at the query's own timestamp counts: "
        "label leakage) and it returns the latest row even when its amount is null; ours is "
        "`[floor((t - 7d) / 1h) * 1h, t)` and skips nulls. Feast returns one row per distinct "
        "(user_id, timestamp) query pair, so duplicated query rows are dropped, and it drops the rows for which no "
        "event lies within the ttl instead of answering null (ours answers every row, null where the window is "
        "empty). Values are compared on the rows Feast answered.",
        "- **storey**: a sliding window with period P read at an event covers the buckets "
        "`[floor(T/P)*P - W + P, floor(T/P)*P + P)`: the event itself counts and the tail is cut at a bucket boundary "
        "inside W (it covers between W - P and W), where ours covers at least W. Ours is compared at (user, last ts + 1 ms).",
        "- **pandas**: `groupby(user).rolling(W, closed='left')` over exact `[t - W, t)`; on tile-aligned rows "
        "(midnight) both must agree, elsewhere it differs from the contract by design.",
    ]
    out += ["", "Details (each repetition):", ""]
    for workload, sides in results.get("ingest", {}).items():
        out.append(
            f"- ingest, {workload}: "
            + "; ".join(
                f"{side} " + ", ".join(f"{x:,.0f}" for x in xs) + " events/s" for side, xs in sides.items()
            )
        )
    for side, by_clients in results.get("reads", {}).items():
        for clients, ms in by_clients.items():
            out.append(
                f"- reads, {side}, {clients} connection(s): req/s and p50/p99/p999 "
                + ", ".join(f"{m['rate']:,.0f}/s {m['p50']:.2f}/{m['p99']:.2f}/{m['p999']:.2f} ms" for m in ms)
            )
    if "offline_feast" in results:
        r = results["offline_feast"]
        v = r["values"]
        out.append(
            "- offline vs Feast: ours "
            + ", ".join(f"{x['seconds']:.2f}s" for x in r["ours"])
            + "; Feast "
            + ", ".join(f"{x['seconds']:.2f}s" for x in r["feast"])
            + f". Of {v['returned_by_feast']:,} rows "
            f"answered by both, {v['differ']:,} differ: {v['differ_event_at_t']:,} with an event at t, "
            f"{v['differ_null_latest']:,} whose latest event has a null amount, {v['differ_tile_tail']:,} "
            f"whose only event is in our tile-aligned tail, {v['differ_unexplained']:,} otherwise"
        )
    if "storey" in results:
        r = results["storey"]
        out.append(
            "- in memory: ours "
            + ", ".join(f"{x:,.0f}" for x in r["ours"])
            + "; storey "
            + ", ".join(f"{x:,.0f}" for x in r["storey"])
            + " events/s"
        )
    if "pandas" in results:
        r = results["pandas"]
        out.append(
            "- offline vs pandas: ours "
            + ", ".join(f"{x['wall_s']:.2f}s" for x in r["ours"])
            + "; pandas "
            + ", ".join(f"{x['wall_s']:.2f}s" for x in r["pandas"])
            + f"; check {json.dumps(r['check'])}"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_ours_last":
        return ours_last_child(*argv[1:4])
    if argv and argv[0] == "_ours_preview":
        return ours_preview_child(argv[1])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1 repetition")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--ingest-events", type=int, default=30_000)
    p.add_argument("--ingest-users", type=int, default=15_000)
    p.add_argument("--read-seconds", type=float, default=8.0, help="seconds of each wrk run (default 8)")
    p.add_argument("--offline-events", type=int, default=1_000_000)
    p.add_argument("--offline-users", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=100_000)
    p.add_argument("--storey-events", type=int, default=20_000)
    p.add_argument("--phases", default="ingest,reads,feast,storey,pandas")
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.ingest_events, args.ingest_users = 1, 15_000, 7_500
        args.read_seconds = 3.0
        args.offline_events, args.offline_users, args.queries, args.storey_events = (
            200_000,
            2_000,
            20_000,
            3_000,
        )
    phases = set(args.phases.split(","))
    if "reads" in phases:
        wrk_path()  # fails early, with how to install it
    started = time.time()
    signal.signal(signal.SIGTERM, onl._interrupt)
    import logging

    logging.getLogger("kafka").setLevel(logging.ERROR)
    from featurestream.samples import sample_events

    results: dict = {"versions": {}, "load": {"start": onl._load()}}
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout
    results["commit"] = code_version()
    results["redis"] = next((w.split("=")[1] for w in redis_version.split() if w.startswith("v=")), "?")
    log(
        f"{os.cpu_count()} cores, load {results['load']['start']}; phases {sorted(phases)}, {args.reps} repetition(s)"
    )
    services, worker = Services(), None
    events = sample_events(args.ingest_events, users=args.ingest_users, seed=7, span_ms=DAY_MS)
    with tempfile.TemporaryDirectory(prefix="featurestream-peers-") as tmp:
        work = Path(tmp)
        try:
            if phases & {"ingest", "reads"}:
                broker = services.start_kafka()
                log(f"broker {broker}")
                worker = ingest(args, broker, work, events, results)
                if "reads" in phases:
                    reads(args, services, worker, work, events, results)
                worker.stop()
                worker = None
            if "storey" in phases:
                versus_storey(args, work, events, results)
            if phases & {"feast", "pandas"}:
                data = offline_data(args, work)
                if "feast" in phases:
                    versus_feast(args, work, data, results)
                if "pandas" in phases:
                    versus_pandas(args, work, results)
        finally:
            if worker is not None:
                worker.stop()
            services.stop()
    results["load"]["end"] = onl._load()
    tbl = table(args, results)
    print()
    print(tbl)
    print(json.dumps({k: v for k, v in results.items()}, default=str))
    Path(args.out).write_text(markdown(args, results, tbl, started))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
