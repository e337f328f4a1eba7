"""Online path benchmark: reads, ingest and freshness of one worker, beside the machine's own ceilings.

    .venv/bin/python benchmarks/online.py                  # own broker on a free port; about 15 minutes
    .venv/bin/python benchmarks/online.py --events 200000 --reps 1 --seconds 4     # a quick look

One run, one fresh broker (``deploy/kafka/start.sh`` on free ports, temp data dir; stopped and wiped at the
end, also on failure or Ctrl-C), for the example feature set (windows 1h/1d/90d x count, sum, avg, min, max,
last: 18 features). Every measure is taken ``--reps`` times (default 3) and the table shows medians, each
beside its ceiling measured in the same run, and their ratio:

* **ingest**: ``--events`` sample payments (``featurestream.samples``, seed ``--seed``, ``--users`` users,
  Zipf-like, event times over the last day) pre-filled into a ``--partitions`` topic. Each repetition starts
  a fresh worker (``python -m featurestream.cli worker``, default settings, its own app id and state dir) and
  polls its ``/metrics`` every 50 ms: the rate runs from the first poll that sees a consumed event to the one
  that sees all, so startup and recovery are excluded. *Ceiling*: a bare aiokafka consumer reading the same
  topic (``benchmarks/kafkaload.py consume``), with values parsed by orjson (what the worker parses with), and
  also as raw bytes and with ``json.loads``.
* **reads**: ``wrk`` (compiled, one thread) at 1, 8 and 32 keep-alive connections for ``--seconds`` each:
  ``GET /features/transactions/{user}`` (all 18 features) of users drawn at random from every user with
  events, on the worker of the last ingest repetition (state of all of them). *Ceilings*: the same worker's
  ``GET /health`` (its HTTP stack: Faust web, middlewares, no feature work), and a bare aiohttp handler
  answering a fixed body of the same size (``benchmarks/httpload.py``). Latency is wrk's, client side.
* **reads during ingest**: ``--during-rate`` events/s (default 20,000) of new payments produced for
  ``--during-seconds`` while wrk reads at 1 connection; the worker's consumed rate over the same time shows
  that it kept up.
* **the replica** (``featurestream replica``: the read API served by a process of its own that follows the
  last ingest worker's changelogs): started after the ingest runs, with its catch-up time; the same reads as the
  worker's at each connection count, the same reads during ingest (the worker still ingesting), freshness read
  from it, and, last, reads during ingest with the worker's threads at nice 10 (ingest at a lower CPU priority
  than reads, what a host that runs both would do). While the worker alone is measured during ingest and for
  freshness, the replica is paused (SIGSTOP): those are the figures of a deployment without one. *Ceiling* of
  reads during ingest: the bare aiohttp handler under the same ingest (the replica following too), read the
  same way: what this machine's scheduler leaves any HTTP server while the broker, producer and worker run.
* **freshness**: ``--fresh-rate`` events/s for ``--fresh-seconds`` with event time = now; every
  ``--probe-every``-th event is for one of ``--probe-users`` probe users. A poller GETs each probe user with an
  outstanding probe every ``--poll-ms`` ms (``?features=amount_count_1h``); the k-th probe of a user is
  visible when that count reaches k. Freshness = time from just before the producer's send to that response.
  Probes not visible ``--fresh-timeout`` s after the last send count as infinitely late.

Bars (this 2-core machine; printed PASS/MISS, never a CI gate): GET >= 5,000 req/s at 8 connections; GET p99
<= 1 ms at 1 connection; GET p99 <= 5 ms at 1 connection during 20,000 events/s of ingest; ingest >= 100,000
events/s per worker; freshness p99 <= 100 ms. ``--profile DIR`` records the worker with py-spy during the
first ingest, the 8-connection reads and the first reads during ingest (per thread: the web server's thread,
where reads run, and the ingest event loop's, whose work holds the interpreter lock a read waits for) and
prints the top functions. The load average is printed at each
phase: figures taken at a load above ~2 on 2 cores measure the neighbours as much as the worker.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from httpload import BareServer, cpu_seconds, run_wrk  # noqa: E402
from ports import free_ports  # noqa: E402

SET = "transactions"
DEFINITIONS = REPO / "examples" / "transactions" / "features.py"
DAY_MS = 86_400_000
GET_RATE_BAR = 5_000.0  # req/s at 8 connections
GET_P99_BAR_MS = 1.0  # at 1 connection
DURING_P99_BAR_MS = 5.0  # at 1 connection during 20,000 events/s of ingest
INGEST_BAR = 100_000.0  # events/s per worker
FRESH_P99_BAR_S = 0.1
POLL_S = 0.05  # /metrics polling while ingesting
START_TIMEOUT_S = 180.0
CONNECTIONS = (1, 8, 32)


def _load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def _median(values) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


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
            port, controller = free_ports(2)
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

    def __init__(
        self,
        broker: str,
        prefix: str,
        state_dir: str,
        log_path: str,
        definitions: Path | None = None,
        app_id: str | None = None,
    ):
        definitions = definitions or DEFINITIONS
        self.port = free_ports(1)[0]
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
            "--app-id", app_id or f"{prefix}app",
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
        return cpu_seconds(self.proc.pid)

    def peak_rss_mb(self) -> float:
        return _peak_rss_mb(self.proc.pid)

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


class Replica:
    """``python -m featurestream.cli replica`` following the changelogs of one worker's app id."""

    def __init__(self, broker: str, app_id: str, log_path: str, definitions: Path | None = None):
        self.port = free_ports(1)[0]
        self.log_path = log_path
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
        cmd = [sys.executable, "-m", "featurestream.cli", "replica", "--broker", broker, "--app-id", app_id,
               "--definitions", str(definitions or DEFINITIONS), "--web-port", str(self.port)]  # fmt: skip
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.started = time.monotonic()

    def wait_caught_up(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Seconds from launch until /health answers 200 (every changelog record applied)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica exited with {self.proc.returncode}:\n{Path(self.log_path).read_text()[-3000:]}")
            try:
                http_get(self.port, "/health")
                return time.monotonic() - self.started
            except (OSError, RuntimeError):
                time.sleep(0.2)
        raise RuntimeError(f"replica not caught up after {timeout_s}s:\n{Path(self.log_path).read_text()[-3000:]}")

    def pause(self) -> None:
        """Stop the process (SIGSTOP) while the worker alone is measured: a deployment without a replica."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Continue, and wait until the replica has applied what the changelogs received meanwhile."""
        self.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + timeout_s
        while json.loads(http_get(self.port, "/health"))["behind_records"] != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica still behind after {timeout_s}s")
            time.sleep(0.2)

    def peak_rss_mb(self) -> float:
        return _peak_rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- phases -----------------------------------------------------------------------------------------


def create_topic(broker: str, topic: str, partitions: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=broker, client_id="featurestream-bench")
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.wait_for_topics([topic], timeout_ms=30_000)
    admin.close()


def prefill(broker: str, topic: str, events, partitions: int) -> float:
    """Create ``topic`` and produce ``events`` to it, keyed by user (record batches); seconds taken."""
    import asyncio

    from kafkaload import prefill as produce_all

    create_topic(broker, topic, partitions)
    return asyncio.run(
        produce_all(broker, topic, events["user_id"].tolist(), events["ts"].tolist(), events["amount"].tolist())
    )


def measure_ingest(worker: Worker, n: int, on_first=None) -> dict:
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
            deadline = now + 900
            if on_first is not None:
                on_first()
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


def http_get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status} {body[:200]!r}")
        return body
    finally:
        conn.close()


def _run_json(cmd: list[str], timeout: float) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


class Profile:
    """py-spy recording a process (raw collapsed stacks) until ``stop``; ``top`` summarizes it. ``threads``:
    stacks carry their thread's name, and ``top`` can keep one thread (the event loop is ``MainThread``)."""

    def __init__(self, pid: int, path: Path, seconds: float | None = None, threads: bool = False):
        self.path = path
        cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-o", str(path),
               "-f", "raw", "-r", "250", "--nonblocking"]  # fmt: skip
        if threads:
            cmd.append("--threads")
        if seconds is not None:
            cmd += ["-d", str(max(1, int(seconds)))]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def busiest_thread_with(self, frame_text: str) -> str | None:
        """The thread of a ``threads`` profile with the most samples whose stack contains ``frame_text``."""
        counts: Counter = Counter()
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            stack, _, count = line.rpartition(" ")
            if count.isdigit() and stack.startswith("thread (") and frame_text in stack:
                counts[stack.partition(": ")[2].partition(";")[0]] += int(count)
        return counts.most_common(1)[0][0] if counts else None

    def top(self, n: int = 15, thread: str | None = None) -> list[str]:
        """The functions with the most samples, inclusive (cumulative) and exclusive (self); of one thread's
        samples only when ``thread`` is given (a ``threads`` profile)."""
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return ["(no profile: py-spy not installed or not permitted)"]
        own, inclusive, total = Counter(), Counter(), 0
        for line in lines:
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            if stack.startswith("thread ("):  # a threads profile: "thread (tid): name;frame;..."
                name, _, stack = stack.partition(": ")[2].partition(";")
                if thread is not None and name != thread:
                    continue
            frames = [re.sub(r" \(/.*?(site-packages/|wt-[^/]+/|featurestream/)", " (", f) for f in stack.split(";")]
            total += int(count)
            own[frames[-1]] += int(count)
            for f in set(frames):
                inclusive[f] += int(count)
        if not total:
            return ["(empty profile)"]
        skip = ("run_forever", "run_until_complete", "_run_once", "Handle._run", "<module>", "_run_code",
                "_run_module_as_main", "main (", "run_worker", "execute_from_commandline", "_bootstrap")  # fmt: skip
        rows = [f"inclusive {n * 100 / total:5.1f}%  {f}" for f, n in inclusive.most_common(60)
                if not any(s in f for s in skip)][:n]  # fmt: skip
        rows += [f"self      {n * 100 / total:5.1f}%  {f}" for f, n in own.most_common(n)]
        return rows


def ingest_phase(args, address: str, topic: str, prefix: str, tmp: Path, profiles: dict) -> tuple[list, Worker]:
    """``--reps`` fresh workers ingest the pre-filled topic; the last one stays up for the reads."""
    runs, worker = [], None
    for rep in range(args.reps):
        if worker is not None:
            worker.stop()
        load = _load()
        worker = Worker(address, prefix, str(tmp / f"state{rep}"), str(tmp / f"worker{rep}.log"), args.definitions,
                        app_id=f"{prefix}app{rep}")  # fmt: skip
        spy: list = []
        if args.profile and rep == 0:
            profiles["ingest"] = spy

            def start(spy=spy, worker=worker):
                spy.append(Profile(worker.proc.pid, args.profile / "ingest.raw"))
        else:
            start = None
        run = measure_ingest(worker, args.events, start)
        for p in spy:
            p.stop()
        run["load"] = load
        runs.append(run)
        m = run["metrics"]
        print(
            f"ingest {rep + 1}/{args.reps}: {run['rate']:,.0f} events/s ({run['events']:,.0f} in {run['seconds']:.2f}s after "
            f"{run['startup_s']:.1f}s of startup); worker CPU {run['cpu_share']:.0%} of a core; applied "
            f"{m.get('featurestream_events_applied_total', 0):,.0f}, late {m.get('featurestream_events_late_total', 0):,.0f}, "
            f"rejected {m.get('featurestream_events_rejected_total', 0):,.0f}; load {load}",
            flush=True,
        )
    wait_healthy(worker)
    return runs, worker


def consumer_ceiling(args, address: str, topic: str) -> dict[str, list[float]]:
    """The bare aiokafka consumer on the same topic: parsed with orjson, raw bytes, and with json."""
    out: dict[str, list[float]] = {"orjson": [], "none": [], "json": []}
    for rep in range(args.reps):
        load = _load()
        for decode in out:
            got = _run_json(
                [sys.executable, str(REPO / "benchmarks" / "kafkaload.py"), "consume", "--broker", address,
                 "--topic", topic, "--events", str(args.events), "--decode", decode], timeout=600,
            )  # fmt: skip
            out[decode].append(got["rate"])
        print(
            f"bare consumer {rep + 1}/{args.reps}: orjson {out['orjson'][-1]:,.0f}, raw {out['none'][-1]:,.0f}, "
            f"json {out['json'][-1]:,.0f} events/s; load {load}",
            flush=True,
        )
    return out


def reads_phase(args, worker: Worker, replica: Replica, users_file: Path, profiles: dict) -> dict:
    """wrk at each connection count: the worker's GET /features, the replica's, the worker's GET /health, a bare
    aiohttp handler."""
    url, replica_url = f"http://127.0.0.1:{worker.port}", f"http://127.0.0.1:{replica.port}"
    sample_user = users_file.read_text().split("\n", 1)[0]
    body = http_get(worker.port, f"/features/{SET}/{sample_user}").decode()
    bare = BareServer(body)
    out: dict = {c: {"features": [], "replica": [], "health": [], "aiohttp": []} for c in CONNECTIONS}
    try:
        run_wrk(url, 8, 2, users_file, f"/features/{SET}/")  # warm up: untimed
        run_wrk(replica_url, 8, 2, users_file, f"/features/{SET}/")
        for rep in range(args.reps):
            for c in CONNECTIONS:
                load = _load()
                spy = None
                if args.profile and rep == 0 and c == 8:
                    spy = Profile(worker.proc.pid, args.profile / "reads.raw", args.seconds)
                    profiles["reads"] = [spy]
                features = run_wrk(url, c, args.seconds, users_file, f"/features/{SET}/")
                if spy is not None:
                    spy.stop()
                if args.profile and rep == 0 and c == 8:
                    spy = Profile(replica.proc.pid, args.profile / "replica-reads.raw", args.seconds)
                    profiles["replica reads"] = [spy]
                replica_features = run_wrk(replica_url, c, args.seconds, users_file, f"/features/{SET}/")
                if spy is not None:
                    spy.stop()
                health = run_wrk(url, c, args.seconds, None, "/health")
                plain = run_wrk(bare.url, c, args.seconds, None, "/features")
                for name, r in (("features", features), ("replica", replica_features), ("health", health),
                                ("aiohttp", plain)):  # fmt: skip
                    out[c][name].append(r)
                print(
                    f"reads {rep + 1}/{args.reps}, {c} connection(s): worker {features.rate:,.0f} req/s "
                    f"p50/p99/p999 {features.p50:.2f}/{features.p99:.2f}/{features.p999:.2f} ms ({features.errors} errors); "
                    f"replica {replica_features.rate:,.0f} req/s p50/p99/p999 {replica_features.p50:.2f}/"
                    f"{replica_features.p99:.2f}/{replica_features.p999:.2f} ms ({replica_features.errors} errors); "
                    f"/health {health.rate:,.0f}; aiohttp {plain.rate:,.0f}; load {load}",
                    flush=True,
                )
    finally:
        bare.stop()
    out["body_bytes"] = len(body)
    return out


def renice(pid: int, niceness: int) -> bool:
    """Set every thread of process ``pid`` to ``niceness`` (Linux: a priority per thread); False if refused."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.setpriority(os.PRIO_PROCESS, int(tid), niceness)
    except (PermissionError, ProcessLookupError, FileNotFoundError):
        return False
    return True


def during_phase(args, address: str, topic: str, worker: Worker, users_file: Path, profiles: dict,
                 reader=None, label: str = "worker", bare: bool = False) -> list[dict]:  # fmt: skip
    """Reads at 1 connection (of the worker, or of ``reader``: the replica, or a bare aiohttp handler's fixed
    answer when ``bare``) while ``--during-rate`` events/s of new payments arrive at the worker."""
    runs = []
    target = reader or worker
    url = f"http://127.0.0.1:{target.port}"
    entities, path = (None, "/features") if bare else (users_file, f"/features/{SET}/")
    for rep in range(args.reps):
        load = _load()
        before = (worker.metrics() or {}).get("featurestream_events_consumed_total", 0.0)
        producer = subprocess.Popen(
            [sys.executable, str(REPO / "benchmarks" / "kafkaload.py"), "produce", "--broker", address, "--topic",
             topic, "--rate", str(args.during_rate), "--seconds", str(args.during_seconds), "--users-file",
             str(users_file), "--seed", str(args.seed + rep)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(2.0)  # traffic flowing before the reads start
        seconds = max(1.0, args.during_seconds - 4.0)
        if args.profile and rep == 0 and reader is None:
            profiles["during"] = [Profile(worker.proc.pid, args.profile / "during.raw", seconds, threads=True)]
        reads = run_wrk(url, 1, seconds, entities, path)
        stdout, stderr = producer.communicate(timeout=args.during_seconds + 120)
        at_end = (worker.metrics() or {}).get("featurestream_events_consumed_total", 0.0)
        lines = [x for x in stdout.splitlines() if x.startswith("{")]
        if producer.returncode != 0 or not lines:
            raise RuntimeError(f"producer failed:\n{stdout}\n{stderr}")
        produced = json.loads(lines[-1])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = (worker.metrics() or {}).get("featurestream_events_consumed_total", 0.0)
            if done >= before + produced["events"]:
                break
            time.sleep(0.1)
        run = {"reads": reads, "produced": produced, "consumed_by_end": at_end - before, "load": load}
        runs.append(run)
        print(
            f"reads of the {label} during ingest {rep + 1}/{args.reps}: {produced['rate']:,.0f} events/s produced, the worker had "
            f"consumed {at_end - before:,.0f} of {produced['events']:,} when the producer stopped; GET at 1 connection "
            f"{reads.rate:,.0f} req/s p50/p99/p999 {reads.p50:.2f}/{reads.p99:.2f}/{reads.p999:.2f} ms; load {load}",
            flush=True,
        )
    return runs


def freshness(broker: str, topic: str, port: int, users: list[str], args, rep: int) -> dict:
    """Steady produce at ``args.fresh_rate`` with probe events; poll each outstanding probe until visible."""
    from kafka import KafkaProducer

    probe_users = [f"probe{rep}x{i:04d}" for i in range(args.probe_users)]
    lock = threading.Lock()
    sent_at: dict[str, list[float]] = {u: [] for u in probe_users}  # k-th probe's send time, per user
    seen: dict[str, int] = dict.fromkeys(probe_users, 0)  # probes known visible, per user
    results: list[float] = []
    polls = [0]
    done_sending = threading.Event()
    stop_polling = threading.Event()

    def poller() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not stop_polling.is_set():
            with lock:
                waiting = [u for u in probe_users if len(sent_at[u]) > seen[u]]
            if not waiting:
                if done_sending.is_set():
                    break
                time.sleep(args.poll_ms / 1000)
                continue
            for user in waiting:
                try:
                    conn.request("GET", f"/features/{SET}/{user}?features=amount_count_1h")
                    response = conn.getresponse()
                    raw = response.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    continue
                now = time.monotonic()
                polls[0] += 1
                if response.status == 200:
                    count = int(json.loads(raw)["features"]["amount_count_1h"] or 0)
                    with lock:
                        while seen[user] < min(count, len(sent_at[user])):
                            results.append(now - sent_at[user][seen[user]])
                            seen[user] += 1
            time.sleep(args.poll_ms / 1000)
        conn.close()

    polling = threading.Thread(target=poller, daemon=True)
    polling.start()
    producer = KafkaProducer(bootstrap_servers=broker, acks=1)
    rng = random.Random(args.seed + 1 + rep)
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
        "p50": float(np.percentile(padded, 50, method="higher")) if padded else float("nan"),
        "p99": float(np.percentile(padded, 99, method="higher")) if padded else float("nan"),
    }


# -- report -----------------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _med(results, attr: str) -> float:
    return _median([getattr(r, attr) for r in results])


def _lat(results) -> str:
    return f"{_med(results, 'p50'):.2f} / {_med(results, 'p99'):.2f} / {_med(results, 'p999'):.2f}"


def report(args, ingest, ceiling, reads, during, fresh, existing: int) -> list[tuple[str, ...]]:
    rows = []
    for c in CONNECTIONS:
        h, a = reads[c]["health"], reads[c]["aiohttp"]
        h_rate, a_rate = _med(h, "rate"), _med(a, "rate")
        for who, f in (("worker", reads[c]["features"]), ("replica", reads[c]["replica"])):
            rate = _med(f, "rate")
            bar = f">= {GET_RATE_BAR:,.0f}" if c == 8 else ""
            rows.append((
                f"GET /features (18), {who}, {c} conn: req/s", f"{rate:,.0f}",
                f"/health {h_rate:,.0f}; aiohttp {a_rate:,.0f}", f"{rate / h_rate:.2f} / {rate / a_rate:.2f}", bar,
                _verdict(rate >= GET_RATE_BAR and not sum(r.errors for r in f)) if bar else "",
            ))  # fmt: skip
            bar = f"p99 <= {GET_P99_BAR_MS:g}" if c == 1 else ""
            rows.append((
                f"  p50 / p99 / p999 ms, {who}, {c} conn", _lat(f), f"/health {_lat(h)}; aiohttp {_lat(a)}", "", bar,
                _verdict(_med(f, "p99") <= GET_P99_BAR_MS) if bar else "",
            ))  # fmt: skip
    for who, runs in during.items():
        if not runs:
            rows.append((f"GET of the {who} during ingest", "not measured (renice refused)", "", "", "", ""))
            continue
        d = [r["reads"] for r in runs]
        produced = _median([r["produced"]["rate"] for r in runs])
        if who.startswith("bare"):
            rows.append((f"  the machine's floor: a {who} during {produced:,.0f} ev/s ingest, p50/p99/p999 ms", _lat(d),
                         f"idle: {_lat(reads[1]['aiohttp'])}", "", "", ""))  # fmt: skip
            continue
        rows.append((
            f"GET of the {who} during {produced:,.0f} ev/s ingest, 1 conn: p50/p99/p999 ms", _lat(d),
            f"idle: {_lat(reads[1]['replica' if 'replica' in who else 'features'])}", "", f"p99 <= {DURING_P99_BAR_MS:g}",
            _verdict(_med(d, "p99") <= DURING_P99_BAR_MS and not sum(r.errors for r in d)),
        ))  # fmt: skip
    rate = _median([r["rate"] for r in ingest])
    orj, raw, js = (_median(ceiling[k]) for k in ("orjson", "none", "json"))
    rows.append((
        "ingest, 1 worker: events/s", f"{rate:,.0f}", f"consumer+orjson {orj:,.0f}; raw {raw:,.0f}; +json {js:,.0f}",
        f"{rate / orj:.2f}", f">= {INGEST_BAR:,.0f}", _verdict(rate >= INGEST_BAR),
    ))  # fmt: skip
    cpu = _median([r["cpu_share"] for r in ingest])
    rows.append(("  worker CPU while ingesting", f"{cpu:.0%} of a core", "", "", "", ""))
    for who, runs in fresh.items():
        p50, p99 = _median([r["p50"] for r in runs]), _median([r["p99"] for r in runs])
        rows.append((
            f"freshness p50 / p99 @ {_median([r['rate'] for r in runs]):,.0f} ev/s, read from the {who}",
            f"{p50 * 1000:.0f} / {p99 * 1000:.0f} ms", "", "", f"p99 <= {FRESH_P99_BAR_S * 1000:.0f} ms",
            _verdict(p99 <= FRESH_P99_BAR_S),
        ))  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="pre-filled events (default 1,000,000)")
    parser.add_argument("--users", type=int, default=100_000, help="users of the events (default 100,000)")
    parser.add_argument("--partitions", type=int, default=4, help="source topic partitions (default 4)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every measure (default 3)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of each wrk run (default 8)")
    parser.add_argument(
        "--definitions", type=Path, default=DEFINITIONS,
        help="definitions with a 'transactions' set over user_id, ts, amount (default: the example; "
        "benchmarks/sketch_features.py adds the sketch ops)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=7, help="random seed of events and reads (default 7)")
    parser.add_argument("--during-rate", type=float, default=20_000.0, help="events/s while reading (default 20,000)")
    parser.add_argument("--during-seconds", type=float, default=14.0, help="length of that phase (default 14 s)")
    parser.add_argument("--fresh-rate", type=float, default=1_000.0, help="events/s of the freshness phase (default 1000)")
    parser.add_argument("--fresh-seconds", type=float, default=10.0, help="length of the freshness phase (default 10 s)")
    parser.add_argument("--probe-every", type=int, default=50, help="every Nth event is a probe (default 50: 20/s)")
    parser.add_argument("--probe-users", type=int, default=50, help="probe users, round robin (default 50)")
    parser.add_argument("--poll-ms", type=float, default=2.0, help="ms between polls of an outstanding probe (default 2)")
    parser.add_argument("--fresh-timeout", type=float, default=10.0, help="s to wait for outstanding probes (default 10)")
    parser.add_argument("--profile", type=Path, default=None, help="directory for py-spy profiles of the worker")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    import logging

    logging.getLogger("kafka").setLevel(logging.ERROR)
    from featurestream.samples import sample_events

    loads = {"start": _load()}
    print(f"load average at start: {loads['start']} ({os.cpu_count()} cores)", flush=True)
    events = sample_events(args.events, users=args.users, seed=args.seed, span_ms=DAY_MS)
    existing = sorted(events["user_id"].unique().tolist())
    broker = Broker()
    worker = replica = None
    profiles: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="featurestream-bench-online-"))
    users_file = tmp / "users.txt"
    users_file.write_text("\n".join(existing) + "\n")
    try:
        address = broker.start()
        prefix = f"bench-{uuid.uuid4().hex[:8]}-"
        topic = f"{prefix}{SET}"
        took = prefill(address, topic, events, args.partitions)
        print(f"broker {address}; pre-filled {topic}: {args.events:,} events of {len(existing):,} users in "
              f"{args.partitions} partitions ({took:.1f}s)", flush=True)  # fmt: skip
        loads["ingest"] = _load()
        ingest, worker = ingest_phase(args, address, topic, prefix, tmp, profiles)
        replica = Replica(address, f"{prefix}app{args.reps - 1}", str(tmp / "replica.log"), args.definitions)
        ceiling = consumer_ceiling(args, address, topic)
        caught_up_s = replica.wait_caught_up()
        found = re.search(r"applying (\d+) changelog record", Path(replica.log_path).read_text())
        changelog_records = int(found.group(1)) if found else -1
        print(f"replica caught up with {changelog_records:,} changelog records {caught_up_s:.1f}s after its start "
              "(it started with the bare consumer runs)", flush=True)  # fmt: skip
        loads["reads"] = _load()
        reads = reads_phase(args, worker, replica, users_file, profiles)
        loads["during"] = _load()
        replica.pause()  # the worker's figures are those of a deployment without a replica
        during = {"worker": during_phase(args, address, topic, worker, users_file, profiles)}
        replica.resume()
        during["replica"] = during_phase(args, address, topic, worker, users_file, profiles, replica, "replica")
        bare = BareServer(http_get(worker.port, f"/features/{SET}/{existing[0]}").decode())
        try:  # the machine's own floor under the same load: a fixed answer, no feature work
            during["bare aiohttp handler"] = during_phase(args, address, topic, worker, users_file, profiles, bare,
                                                          "bare aiohttp handler", bare=True)  # fmt: skip
        finally:
            bare.stop()
        loads["freshness"] = _load()
        fresh: dict[str, list] = {"worker": [], "replica": []}
        for rep in range(args.reps):
            for who, port in (("worker", worker.port), ("replica", replica.port)):
                load = _load()
                if who == "worker":
                    replica.pause()
                fresh[who].append(freshness(address, topic, port, existing, args, rep + (100 if who == "replica" else 0)))
                if who == "worker":
                    replica.resume()
                f = fresh[who][-1]
                print(f"freshness read from the {who} {rep + 1}/{args.reps}: {f['events']:,} events at {f['rate']:,.0f}/s, "
                      f"{f['probes']} probes ({f['missing']} not visible in time), {f['polls']:,} polls; p50/p99 "
                      f"{f['p50'] * 1000:.0f}/{f['p99'] * 1000:.0f} ms; load {load}", flush=True)  # fmt: skip
        # Last, as it may not be undone without privileges: ingest at a lower CPU priority than reads.
        loads["during, worker niced"] = _load()
        niced = "replica, worker at nice 10"
        during[niced] = []
        if renice(worker.proc.pid, 10):
            during[niced] = during_phase(args, address, topic, worker, users_file, profiles, replica, niced)
            renice(worker.proc.pid, 0)
        worker.check_alive()
        rss, replica_rss = worker.peak_rss_mb(), replica.peak_rss_mb()
        log_lines = worker.log_summary()
        loads["end"] = _load()
    finally:
        if replica is not None:
            replica.stop()
        if worker is not None:
            worker.stop()
        broker.stop()

    rows = report(args, ingest, ceiling, reads, during, fresh, len(existing))
    rows.append(("worker peak RSS", f"{rss:.0f} MB", "", "", "", ""))
    rows.append(("replica: catch-up from launch; peak RSS", f"{caught_up_s:.1f} s for {changelog_records:,} records; "
                 f"{replica_rss:.0f} MB", "", "", "", ""))  # fmt: skip
    header = ("measure", "featurestream (median)", "ceiling, same run (median)", "ratio", "bar", "")
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    print()
    print(f"online benchmark: {args.events:,} events of {len(existing):,} users, {args.partitions} partitions, "
          f"{args.reps} repetitions (medians), {os.cpu_count()} cores; ratio = featurestream / ceiling "
          f"(reads: / worker's /health and / bare aiohttp, {reads['body_bytes']} byte answers)")  # fmt: skip
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if log_lines:
        print("most frequent worker log warnings/errors (numbers as N):")
        for line in log_lines:
            print(f"  {line}")
    for name, spies in profiles.items():
        for spy in spies:
            spy.stop()
            print(f"py-spy profile of the worker, {name} ({spy.path}): top functions")
            for line in spy.top():
                print(f"  {line}")
            if name == "during":
                web = spy.busiest_thread_with("web_protocol")
                print(f"  the web server's thread only ({web}: where reads run, each waiting for the interpreter lock):")
                for line in spy.top(thread=web):
                    print(f"  {line}")
                print("  the ingest event loop's thread only (MainThread):")
                for line in spy.top(thread="MainThread"):
                    print(f"  {line}")
    print("load average (1/5/15 min): " + "; ".join(f"{k} {v}" for k, v in loads.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
