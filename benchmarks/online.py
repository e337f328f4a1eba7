"""Online path benchmark: ingest rate of one worker, read latency over HTTP, produce-to-visible freshness.

    .venv/bin/python benchmarks/online.py                          # own broker on a free port, defaults
    .venv/bin/python benchmarks/online.py --events 1000000 --users 200000 --fresh-seconds 30

One run, one fresh broker (``deploy/kafka/start.sh`` on a free port pair, temp data dir; stopped and
wiped at the end, also on failure or Ctrl-C; its watchdog stops it if this process is killed) and one
worker subprocess (``python -m featurestream.cli worker``, default settings, a fresh ``--topic-prefix``,
app id and state dir), for the example feature set (windows 1h/1d/90d x count, sum, avg, min, max, last):

* ingest: ``--events`` deterministic sample payments (``featurestream.samples.sample_events``, seed
  ``--seed``, ``--users`` users, Zipf-like, event times over the last day) are produced to the source
  topic (``--partitions``) *before* the worker starts. The worker's ``/metrics`` counter
  ``featurestream_events_consumed_total`` is polled every 100 ms; the rate is taken from the first poll
  that sees a consumed event to the poll that sees all of them, so process start, topic setup and
  table recovery are excluded (so is the first micro-batch). Worker CPU time over the same interval
  and its peak RSS (VmHWM) are printed too.
* reads: ``GET /features/transactions/{user}`` (all features) of random users that have events, on
  keep-alive ``http.client`` connections to 127.0.0.1: ``--reads-1`` requests from 1 client, then
  ``--reads-32`` from 32 client threads (after ``--warmup`` untimed requests). Latency is client
  side (request sent to body read); the clients run in this process, sharing the machine's cores and
  one GIL with each other, and the machine with the worker and the broker.
* freshness: ``--fresh-rate`` events/s for ``--fresh-seconds`` s with event time = now; every
  ``--probe-every``-th event goes to one of ``--probe-users`` probe users (round robin), the rest to
  random existing users. For the k-th probe of a user, freshness = time from just before
  ``producer.send`` to the first HTTP response whose ``amount_count_1h`` of that user is >= k. One
  thread polls every ``--poll-interval`` s with one ``POST /vectors/fraud`` naming every probe user
  with an outstanding probe (the vector includes ``amount_count_1h``): per-user GETs in a loop would
  take the worker's event loop, which also consumes, away from ingest. The
  producer uses kafka-python's defaults (linger 0, acks 1); the worker its defaults (a micro-batch is
  what one fetch returned, at most 5000 events). Probes not visible ``--fresh-timeout`` s after the last send count
  as infinitely late.

Bars (PASS/MISS as measured): ingest >= 20,000 events/s per worker, read p99 <= 5 ms at 1 client,
freshness p99 <= 1 s. The load average is printed before and after each phase.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SET = "transactions"
DEFINITIONS = REPO / "examples" / "transactions" / "features.py"
DAY_MS = 86_400_000
INGEST_BAR = 20_000.0  # events/s per worker
READ_P99_BAR_MS = 5.0  # at 1 client
FRESH_P99_BAR_S = 1.0
POLL_S = 0.1  # /metrics polling while ingesting
START_TIMEOUT_S = 180.0


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


# -- broker -----------------------------------------------------------------------------------------


class Broker:
    """A broker of our own, started with deploy/kafka/start.sh; ``stop`` stops and wipes it."""

    def __init__(self):
        self.args: list[str] = []
        self.address = ""

    def start(self) -> str:
        env = dict(
            os.environ,
            FEATURESTREAM_PYTHON=sys.executable,
            KAFKA_WATCH_PID=str(os.getpid()),
            KAFKA_WATCH_WIPE="1",
        )
        last = ""
        for _ in range(3):
            port, controller = _free_ports(2)
            data_dir = tempfile.mkdtemp(prefix="featurestream-bench-kafka-")
            self.args = ["--port", str(port), "--controller-port", str(controller), "--data-dir", data_dir]
            started = subprocess.run(
                ["bash", str(REPO / "deploy/kafka/start.sh"), *self.args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=600,
                check=False,
            )
            if started.returncode == 0:
                self.address = f"127.0.0.1:{port}"
                return self.address
            last = started.stdout
            self.stop()
            if "already in use" not in last:
                break
        raise SystemExit(f"could not start a Kafka broker:\n{last}")

    def stop(self) -> None:
        if self.args:
            subprocess.run(
                ["bash", str(REPO / "deploy/kafka/stop.sh"), *self.args, "--wipe"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=120,
                check=False,
            )
            self.args = []


# -- worker -----------------------------------------------------------------------------------------


class Worker:
    """``python -m featurestream.cli worker`` on a fresh prefix, app id and state dir; log in a temp file."""

    def __init__(self, broker: str, prefix: str, state_dir: str, log_path: str, definitions: Path = DEFINITIONS):
        self.port = _free_ports(1)[0]
        self.log_path = log_path
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
        cmd = [
            sys.executable, "-m", "featurestream.cli", "worker",
            "--broker", broker,
            "--definitions", str(definitions),
            "--state-dir", state_dir,
            "--web-port", str(self.port),
            "--topic-prefix", prefix,
            "--app-id", f"{prefix}app",
            "--worker-id", "bench",
        ]  # fmt: skip
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")

    def metrics(self) -> dict[str, float] | None:
        """``{metric name: value}`` of the feature set's series, or None while the web server is not up."""
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
            conn.close()
        except OSError:
            return None
        out = {}
        for m in re.finditer(rf'^(\w+)\{{feature_set="{SET}"\}} (\S+)$', text, re.M):
            out[m.group(1)] = float(m.group(2))
        return out

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def log_summary(self, top: int = 4) -> list[str]:
        """The most frequent WARNING/ERROR messages of the worker log, with their counts."""
        counts: dict[str, int] = {}
        for line in Path(self.log_path).read_text(errors="replace").splitlines():
            m = re.match(r"\[[^]]*\] \[\d+\] \[(WARNING|ERROR|CRITICAL)\] (.*)", line)
            if m:
                key = f"{m.group(1)} " + re.sub(r"\d+(\.\d+)?", "N", m.group(2).strip())[:90]
                counts[key] = counts.get(key, 0) + 1
        return [f"{n:6d} x {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -- phases -----------------------------------------------------------------------------------------


def prefill(broker: str, topic: str, events, partitions: int) -> float:
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=broker, client_id="featurestream-bench")
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.wait_for_topics([topic], timeout_ms=30_000)
    admin.close()
    users = events["user_id"].tolist()
    values = [
        f'{{"user_id": "{u}", "ts": {t}, "amount": {a!r}}}'.encode()
        for u, t, a in zip(users, events["ts"].tolist(), events["amount"].tolist(), strict=True)
    ]
    producer = KafkaProducer(bootstrap_servers=broker, linger_ms=20, batch_size=1 << 20, acks=1)
    started = time.monotonic()
    for user, value in zip(users, values, strict=True):
        producer.send(topic, key=user.encode(), value=value)
    producer.flush()
    producer.close()
    return time.monotonic() - started


def measure_ingest(worker: Worker, n: int) -> dict:
    """Poll /metrics until every pre-filled event is consumed; rate from the first consumed batch on."""
    launched = time.monotonic()
    deadline = launched + START_TIMEOUT_S
    first = None  # (time, consumed, cpu seconds) at the first poll that sees consumed events
    while True:
        worker.check_alive()
        m = worker.metrics()
        now = time.monotonic()
        consumed = (m or {}).get("featurestream_events_consumed_total", 0.0)
        if consumed > 0 and first is None:
            first = (now, consumed, worker.cpu_seconds(), m.get("featurestream_batch_seconds_sum", 0.0))
            deadline = now + 600
        if consumed >= n:
            cpu = worker.cpu_seconds()
            break
        if now > deadline:
            raise RuntimeError(f"worker consumed {consumed:.0f} of {n} events in time:\n{worker.tail()}")
        time.sleep(POLL_S)
    t0, c0, cpu0, batch0 = first
    seconds = now - t0
    return {
        "startup_s": t0 - launched,
        "seconds": seconds,
        "events": consumed - c0,
        "rate": (consumed - c0) / seconds if seconds > 0 else float("nan"),
        "cpu_share": (cpu - cpu0) / seconds if seconds > 0 else float("nan"),
        "batch_share": (m.get("featurestream_batch_seconds_sum", 0.0) - batch0) / seconds
        if seconds > 0
        else float("nan"),
        "metrics": m,
    }


def wait_healthy(worker: Worker, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker.check_alive()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=5)
            conn.request("GET", "/health")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"worker not healthy after {timeout_s}s:\n{worker.tail()}")


def read_load(port: int, users: list[str], total: int, clients: int, seed: int) -> dict:
    """``total`` GETs of random users split over ``clients`` threads with one keep-alive connection each."""
    per_client = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        paths = [f"/features/{SET}/{rng.choice(users)}" for _ in range(per_client[i])]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.connect()
        out = latencies[i]
        barrier.wait()
        for path in paths:
            t = time.perf_counter()
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                ok = response.status == 200 and body
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            out.append(time.perf_counter() - t)
            if not ok:
                errors[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    flat = np.concatenate([np.asarray(x) for x in latencies]) * 1000.0
    return {
        "clients": clients,
        "requests": int(flat.size),
        "errors": sum(errors),
        "rate": flat.size / wall,
        "p50": _pct(flat, 50),
        "p99": _pct(flat, 99),
        "p999": _pct(flat, 99.9),
    }


def freshness(broker: str, topic: str, port: int, users: list[str], args) -> dict:
    """Steady produce at ``args.fresh_rate`` with probe events; poll the probe users until each probe is visible."""
    from kafka import KafkaProducer

    probe_users = [f"probe{i:04d}" for i in range(args.probe_users)]
    lock = threading.Lock()
    sent_at: dict[str, list[float]] = {u: [] for u in probe_users}  # k-th probe's send time, per user
    seen: dict[str, int] = dict.fromkeys(probe_users, 0)  # probes known visible, per user
    results: list[float] = []
    polls = [0, 0.0]  # requests, seconds spent in them
    done_sending = threading.Event()
    stop_polling = threading.Event()

    def poller() -> None:
        # One POST /vectors/fraud (its features include amount_count_1h) per interval for every probe user
        # with an outstanding probe: the polling load on the worker stays bounded whatever the freshness.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not stop_polling.is_set():
            tick = time.monotonic()
            with lock:
                waiting = [u for u in probe_users if len(sent_at[u]) > seen[u]]
            if not waiting and done_sending.is_set():
                break
            if waiting:
                body = json.dumps({"entities": [{"user_id": u} for u in waiting]})
                try:
                    conn.request(
                        "POST", "/vectors/fraud", body=body, headers={"Content-Type": "application/json"}
                    )
                    response = conn.getresponse()
                    raw = response.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    continue
                now = time.monotonic()
                polls[0] += 1
                polls[1] += now - tick
                if response.status == 200:
                    with lock:
                        for user, result in zip(waiting, json.loads(raw)["results"], strict=True):
                            count = int(result["features"]["amount_count_1h"] or 0)
                            while seen[user] < min(count, len(sent_at[user])):
                                results.append(now - sent_at[user][seen[user]])
                                seen[user] += 1
            time.sleep(max(0.0, tick + args.poll_interval - time.monotonic()))
        conn.close()

    polling = threading.Thread(target=poller, daemon=True)
    polling.start()
    producer = KafkaProducer(bootstrap_servers=broker, acks=1)
    rng = random.Random(args.seed + 1)
    total = int(args.fresh_rate * args.fresh_seconds)
    started = time.monotonic()
    sent = probes = 0
    while sent < total:
        due = min(total, int((time.monotonic() - started) * args.fresh_rate) + 1)
        while sent < due:
            probe = sent % args.probe_every == 0
            user = probe_users[probes % len(probe_users)] if probe else rng.choice(users)
            amount = round(rng.lognormvariate(3.5, 1.0), 2)
            now_wall, now = time.time(), time.monotonic()
            value = f'{{"user_id": "{user}", "ts": {int(now_wall * 1000)}, "amount": {amount!r}}}'.encode()
            if probe:
                with lock:
                    sent_at[user].append(now)
                probes += 1
            producer.send(topic, key=user.encode(), value=value)
            sent += 1
        time.sleep(max(0.001, started + sent / args.fresh_rate - time.monotonic()))
    producer.flush()
    send_seconds = time.monotonic() - started
    producer.close()
    done_sending.set()
    polling.join(timeout=args.fresh_timeout)
    stop_polling.set()
    polling.join(timeout=30)
    with lock:
        visible = list(results)
    missing = probes - len(visible)
    padded = visible + [float("inf")] * missing
    return {
        "events": sent,
        "rate": sent / send_seconds,
        "probes": probes,
        "missing": missing,
        "polls": polls[0],
        "poll_ms": 1000 * polls[1] / polls[0] if polls[0] else float("nan"),
        "p50": float(np.percentile(padded, 50, method="higher")) if padded else float("nan"),
        "p99": float(np.percentile(padded, 99, method="higher")) if padded else float("nan"),
    }


# -- main -------------------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events", type=int, default=200_000, help="pre-filled events for ingest (default 200,000)"
    )
    parser.add_argument(
        "--users", type=int, default=100_000, help="users of the pre-filled events (default 100,000)"
    )
    parser.add_argument("--partitions", type=int, default=4, help="source topic partitions (default 4)")
    parser.add_argument(
        "--definitions",
        type=Path,
        default=DEFINITIONS,
        help="definitions with a 'transactions' set over user_id, ts, amount (default: the example; "
        "benchmarks/sketch_features.py adds the sketch ops)",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed of events and reads (default 7)")
    parser.add_argument("--reads-1", type=int, default=5_000, help="requests at 1 client (default 5,000)")
    parser.add_argument(
        "--reads-32", type=int, default=20_000, help="requests at 32 clients (default 20,000)"
    )
    parser.add_argument(
        "--warmup", type=int, default=200, help="untimed requests before the reads (default 200)"
    )
    parser.add_argument(
        "--fresh-rate", type=float, default=1_000.0, help="events/s of the freshness phase (default 1000)"
    )
    parser.add_argument(
        "--fresh-seconds", type=float, default=15.0, help="length of the freshness phase (default 15 s)"
    )
    parser.add_argument(
        "--probe-every", type=int, default=50, help="every Nth event is a probe (default 50: 20/s)"
    )
    parser.add_argument("--probe-users", type=int, default=50, help="probe users, round robin (default 50)")
    parser.add_argument(
        "--poll-interval", type=float, default=0.05, help="seconds between freshness polls (default 0.05)"
    )
    parser.add_argument(
        "--fresh-timeout",
        type=float,
        default=10.0,
        help="seconds after the last send to wait for outstanding probes (default 10)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)

    import logging

    logging.getLogger("kafka").setLevel(logging.ERROR)
    from featurestream.samples import sample_events

    loads = {"start": _load()}
    print(f"load average at start: {loads['start']} ({os.cpu_count()} cores)", flush=True)
    events = sample_events(args.events, users=args.users, seed=args.seed, span_ms=DAY_MS)
    existing = sorted(events["user_id"].unique().tolist())
    broker = Broker()
    worker = None
    tmp = tempfile.TemporaryDirectory(prefix="featurestream-bench-online-")
    try:
        address = broker.start()
        prefix = f"bench-{uuid.uuid4().hex[:8]}-"
        topic = f"{prefix}{SET}"
        took = prefill(address, topic, events, args.partitions)
        print(
            f"broker {address}; pre-filled {topic}: {args.events:,} events of {len(existing):,} users in "
            f"{args.partitions} partitions ({took:.1f}s)",
            flush=True,
        )

        loads["ingest"] = _load()
        worker = Worker(
            address, prefix, str(Path(tmp.name) / "state"), str(Path(tmp.name) / "worker.log"), args.definitions
        )
        ingest = measure_ingest(worker, args.events)
        m = ingest["metrics"]
        print(
            f"ingest: {ingest['events']:,.0f} events in {ingest['seconds']:.2f}s after {ingest['startup_s']:.1f}s "
            f"of startup; worker CPU {ingest['cpu_share']:.0%} of one core, {ingest['batch_share']:.0%} of the time in "
            f"the agent's batch handler (featurestream_batch_seconds); applied "
            f"{m.get('featurestream_events_applied_total', 0):,.0f}, late {m.get('featurestream_events_late_total', 0):,.0f}, "
            f"rejected {m.get('featurestream_events_rejected_total', 0):,.0f}; load {_load()}",
            flush=True,
        )
        wait_healthy(worker)

        loads["reads"] = _load()
        read_load(worker.port, existing, args.warmup, 1, args.seed + 100)
        reads = [
            read_load(worker.port, existing, args.reads_1, 1, args.seed),
            read_load(worker.port, existing, args.reads_32, 32, args.seed),
        ]
        for r in reads:
            print(
                f"reads at {r['clients']} client(s): {r['requests']:,} requests, {r['errors']} errors, "
                f"{r['rate']:,.0f} req/s; load {_load()}",
                flush=True,
            )

        loads["freshness"] = _load()
        fresh = freshness(address, topic, worker.port, existing, args)
        print(
            f"freshness: {fresh['events']:,} events at {fresh['rate']:,.0f}/s, {fresh['probes']} probes "
            f"({fresh['missing']} not visible in time), {fresh['polls']:,} polls of {fresh['poll_ms']:.1f} ms; load {_load()}",
            flush=True,
        )
        worker.check_alive()
        rss = worker.peak_rss_mb()
        log_lines = worker.log_summary()
        loads["end"] = _load()
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
        tmp.cleanup()

    r1, r32 = reads
    rows = [
        (
            "ingest, 1 worker",
            f"{ingest['rate']:,.0f} events/s",
            f">= {INGEST_BAR:,.0f} events/s",
            _verdict(ingest["rate"] >= INGEST_BAR),
        ),
        (
            "read p50 / p99 / p999, 1 client",
            f"{r1['p50']:.2f} / {r1['p99']:.2f} / {r1['p999']:.2f} ms",
            f"p99 <= {READ_P99_BAR_MS:g} ms",
            _verdict(r1["p99"] <= READ_P99_BAR_MS and not r1["errors"]),
        ),
        ("read rate, 1 client", f"{r1['rate']:,.0f} req/s", "", ""),
        (
            "read p50 / p99 / p999, 32 clients",
            f"{r32['p50']:.2f} / {r32['p99']:.2f} / {r32['p999']:.2f} ms",
            "",
            "",
        ),
        ("read rate, 32 clients", f"{r32['rate']:,.0f} req/s", "", ""),
        (
            f"freshness p50 / p99 @ {fresh['rate']:,.0f} ev/s",
            f"{fresh['p50']:.3f} / {fresh['p99']:.3f} s",
            f"p99 <= {FRESH_P99_BAR_S:g} s",
            _verdict(fresh["p99"] <= FRESH_P99_BAR_S),
        ),
        ("worker peak RSS", f"{rss:.0f} MB", "", ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    header = ("measure", "measured", "bar", "")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    print()
    print(
        f"online benchmark: {args.events:,} events, {args.users:,} users ({len(existing):,} with events), "
        f"{args.partitions} partitions, {os.cpu_count()} cores"
    )
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if log_lines:
        print("most frequent worker log warnings/errors (numbers as N):")
        for line in log_lines:
            print(f"  {line}")
    print("load average (1/5/15 min): " + "; ".join(f"{k} {v}" for k, v in loads.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
