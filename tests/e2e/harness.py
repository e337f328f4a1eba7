"""Processes and checks for the fault suite: real workers and sinks started through the CLI, a producer that
records where each event landed, a dedicated broker, and the comparison with the brute-force oracle.

Every wait is on a condition with a deadline; every subprocess wait has a timeout.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aggregations import FeatureVector
from aggregations.loading import load_registry
from tests import oracle

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_DIR = REPO_ROOT / "deploy" / "kafka"
REGISTRY = load_registry(str(REPO_ROOT / "examples" / "transactions" / "features.py"))
TX = REGISTRY.feature_set("transactions")
FEATURES = list(TX.plan.features)
NAMES = [f.name for f in FEATURES]
LONG = os.environ.get("FEATURESTREAM_E2E_LONG", "").strip() not in ("", "0")
TIMEOUT_S = 240.0 if LONG else 120.0
CATCH_UP_S = 180.0 if LONG else 60.0  # a caught-up worker takes seconds; this is only the failure bound
SESSION_TIMEOUT_S = "6"  # the broker's group.min.session.timeout.ms: a kill -9'd member leaves this fast
DAY_MS, HOUR_MS = 86_400_000, 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, what: str, timeout: float = TIMEOUT_S, interval: float = 0.2, detail=lambda: ""):
    """Poll ``predicate`` until it returns a truthy value (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}\n{detail()}", pytrace=False)
        time.sleep(interval)


def http_json(method: str, url: str, body: bytes | None = None, timeout: float = 10) -> tuple[int, object]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, ctype = response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, raw, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    return status, (json.loads(raw) if "json" in ctype else raw.decode("utf-8", "replace"))


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
    return env


class Proc:
    """A featurestream CLI subprocess with its log file."""

    name = "proc"

    def __init__(self, log_dir: Path, name: str):
        self.log_dir, self.name = log_dir, name
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_path = log_dir / f"{name}-0.log"

    def _launch(self, args: list[str]) -> None:
        self.starts += 1
        self.log_path = self.log_dir / f"{self.name}-{self.starts}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in _reap
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "featurestream.cli", *args],
            cwd=REPO_ROOT, env=_env(), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            return f"--- {self.log_path} ---\n" + "\n".join(
                self.log_path.read_text(errors="replace").splitlines()[-n:]
            )
        except OSError:
            return ""

    def _reap(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=30)
        self.proc = None
        self._log.close()
        return code

    def kill9(self) -> None:
        """kill -9 this process (os.kill with SIGKILL) and reap it."""
        os.kill(self.pid, signal.SIGKILL)
        self._reap(30)

    def stop(self, timeout: float = 60) -> int:
        if not self.alive():
            return self._reap(1) if self.proc is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        return self._reap(timeout)


class Worker(Proc):
    """``featurestream worker`` on a state dir, app id and topic prefix."""

    def __init__(self, broker: str, state_dir: Path, prefix: str, app_id: str, log_dir: Path, name: str):
        super().__init__(log_dir, name)
        self.broker, self.state_dir, self.prefix, self.app_id = broker, state_dir, prefix, app_id
        self.port = 0
        self.port_races = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> None:
        self.port = free_port()
        self._launch([
            "worker", "--broker", self.broker, "--state-dir", str(self.state_dir),
            "--web-port", str(self.port), "--topic-prefix", self.prefix, "--app-id", self.app_id,
            "--worker-id", f"{self.name}-{self.starts + 1}", "--loglevel", "INFO",
            "--session-timeout", SESSION_TIMEOUT_S,
        ])  # fmt: skip

    def healthy(self) -> bool:
        if not self.alive():
            if self._lost_port_race():
                self._reap(1)
                self.launch()  # another process took the free port between our pick and the worker's bind
                return False
            pytest.fail(f"worker {self.name} exited with {self.proc.returncode}\n{self.log_tail()}", pytrace=False)
        try:
            return http_json("GET", f"{self.url}/health", timeout=5)[0] == 200
        except OSError:
            return False

    def _lost_port_race(self) -> bool:
        """The worker exited because its web port was taken (``free_port`` cannot reserve it), at most twice."""
        try:
            lost = f"('127.0.0.1', {self.port}): address already in use" in self.log_path.read_text(errors="replace")
        except OSError:
            return False
        self.port_races += lost
        return lost and self.port_races <= 2

    def wait_healthy(self) -> None:
        wait_for(self.healthy, f"worker {self.name} healthy", interval=0.3, detail=self.log_tail)

    def start(self) -> None:
        self.launch()
        self.wait_healthy()

    def metric(self, name: str) -> float:
        try:
            status, text = http_json("GET", f"{self.url}/metrics", timeout=5)
        except OSError:
            return -1.0
        if status != 200:
            return -1.0
        for line in str(text).splitlines():
            if line.startswith(f'{name}{{feature_set="transactions"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


class Sink(Proc):
    """``featurestream sink`` (continuous) on one topic, group and data dir."""

    def __init__(self, broker: str, topic: str, group: str, data_dir: Path, log_dir: Path, name: str = "sink"):
        super().__init__(log_dir, name)
        self.broker, self.topic, self.group, self.data_dir = broker, topic, group, data_dir

    def wait_writing(self) -> None:
        """Until the dataset holds at least one event (the sink is up and consuming)."""
        wait_stored(self.data_dir, 1, detail=self.log_tail)

    def launch(self) -> None:
        self._launch([
            "sink", "--broker", self.broker, "--data-dir", str(self.data_dir), "--topic", self.topic,
            "--group", self.group, "--feature-set", "transactions", "--flush-seconds", "0.5",
            "--flush-events", "3000",
        ])  # fmt: skip


@dataclass
class Sent:
    user: str
    ts: int
    amount: float | None
    payload: bytes
    valid: bool = True
    partition: int = -1
    offset: int = -1


class Producer:
    """Sends events keyed by user; remembers where each landed (partition, offset) for the oracle."""

    def __init__(self, broker: str, topic: str, **config):
        from kafka import KafkaProducer

        self.topic = topic
        options = dict(
            bootstrap_servers=broker, acks="all", linger_ms=5, enable_idempotence=True,
            max_in_flight_requests_per_connection=1, retries=2**31 - 1, delivery_timeout_ms=180_000,
            request_timeout_ms=10_000, max_request_size=4 << 20,
        )  # fmt: skip
        options.update(config)
        self.producer = KafkaProducer(**options)
        self.sent: list[Sent] = []
        self._pending: list[tuple[Sent, object]] = []
        self.lock = threading.Lock()

    def send(self, event: Sent, key: bytes | None = None, partition: int | None = None) -> None:
        key = event.user.encode("utf-8", "surrogatepass") if key is None else key
        future = self.producer.send(self.topic, key=key, value=event.payload, partition=partition)
        with self.lock:
            self.sent.append(event)
            self._pending.append((event, future))

    def flush(self, timeout: float = 180) -> None:
        self.producer.flush(timeout=timeout)
        with self.lock:
            pending, self._pending = self._pending, []
        for event, future in pending:
            meta = future.get(timeout=timeout)
            event.partition, event.offset = meta.partition, meta.offset

    def close(self) -> None:
        self.producer.close(timeout=30)

    def valid(self) -> list[Sent]:
        return [e for e in self.sent if e.valid]


def event(user: str, ts: int, amount: float | None) -> Sent:
    return Sent(user, ts, amount, json.dumps({"user_id": user, "ts": ts, "amount": amount}).encode())


def random_events(users: list[str], n: int, rng: random.Random, span_ms: int = 2 * DAY_MS) -> list[Sent]:
    """n events of random users, timestamps over the last ``span_ms`` (not after now - 1 s), out of order,
    a twentieth of them on 5-minute tile boundaries (ties included), amounts with two decimals."""
    now = now_ms() - 1000
    out = []
    for i in range(n):
        ts = now - rng.randrange(span_ms)
        if i % 20 == 0:
            ts = (ts // 300_000) * 300_000
        out.append(event(rng.choice(users), ts, round(rng.lognormvariate(3, 1), 2)))
    return out


class Feeder(threading.Thread):
    """Produces ``events`` at about ``rate`` per second in a background thread; a ``misplaced`` share of
    them keyed by another entity, so they land outside their entity's partition (forwarded by workers)."""

    def __init__(self, producer: Producer, events: list[Sent], rate: float, misplaced: float = 0.0, seed: int = 0):
        super().__init__(daemon=True, name="feeder")
        self.producer, self.events, self.rate = producer, events, rate
        self.misplaced, self.rng = misplaced, random.Random(seed)
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.count = 0

    def run(self) -> None:
        try:
            started = time.monotonic()
            for i, e in enumerate(self.events):
                if self.misplaced and self.rng.random() < self.misplaced:
                    self.producer.send(e, key=f"{e.user}-elsewhere-{self.rng.randrange(1000)}".encode())
                else:
                    self.producer.send(e)
                self.count = i + 1
                ahead = self.count / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            self.producer.flush()
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            self.done.set()

    def finish(self, timeout: float = TIMEOUT_S) -> None:
        self.join(timeout)
        assert not self.is_alive(), "producer thread did not finish"
        if self.error:
            raise self.error


# --- oracle comparisons -----------------------------------------------------------------------------------


def by_user(events: list[Sent]) -> dict[str, list[dict]]:
    """Oracle rows per user; seq = the documented tie order of equal timestamps: source offset, then partition."""
    rows = defaultdict(list)
    for e in sorted(events, key=lambda e: (e.offset, e.partition)):
        rows[e.user].append({"key": e.user, "ts": e.ts, "seq": len(rows[e.user]), "value": e.amount})
    return rows


def expected(rows: list[dict], user: str, at: int) -> dict:
    return {f.name: oracle.feature_at(rows, user, at, f.op, f.window.length, f.window.period) for f in FEATURES}


def same(op: str, want, got, rows: list[dict], f, at: int) -> bool:
    if want is None or (isinstance(want, float) and math.isnan(want)):
        return got is None or (isinstance(got, float) and math.isnan(got))
    if got is None or (isinstance(got, float) and math.isnan(got)):
        return False
    if op in ("count", "min", "max", "last", "first", "count_distinct"):
        return float(got) == float(want)
    window = oracle.window_events(rows, rows[0]["key"] if rows else None, at, f.window.length, f.window.period)
    return abs(float(got) - float(want)) <= max(oracle.tolerance(op, window), 1e-9 * abs(float(want)))


@dataclass
class Outcome:
    lost: int = 0
    duplicated: int = 0
    mismatched: int = 0
    examples: list = field(default_factory=list)

    def add(self, other: Outcome) -> None:
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.mismatched += other.mismatched
        self.examples.extend(other.examples[:5])
        del self.examples[40:]


def compare_values(rows: list[dict], user: str, at: int, values: dict) -> Outcome:
    out = Outcome()
    want = expected(rows, user, at)
    for f in FEATURES:
        if not same(f.op, want[f.name], values.get(f.name), rows, f, at):
            out.mismatched += 1
            if len(out.examples) < 5:
                out.examples.append((user, at, f.name, values.get(f.name), want[f.name]))
    got_n, want_n = values.get("amount_count_90d") or 0, want["amount_count_90d"]
    out.lost, out.duplicated = max(0, want_n - got_n), max(0, got_n - want_n)
    if out.lost or out.duplicated:
        out.examples.insert(0, ("count_90d", user, at, got_n, want_n))
    return out


def read_online(worker: Worker, users: list[str], features: str | None = None) -> dict[str, dict]:
    url = worker.url

    def one(user: str) -> dict:
        query = "?" + urllib.parse.urlencode({"features": features}) if features else ""
        path = f"{url}/features/transactions/{urllib.parse.quote(user, safe='')}{query}"
        for _attempt in range(10):
            if not worker.alive():
                break
            try:
                status, body = http_json("GET", path)
                if status == 200:
                    return body
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"cannot read {user!r} from {url}")

    with ThreadPoolExecutor(8) as pool:
        return dict(zip(users, pool.map(one, users), strict=True))


def online_counts_match(worker: Worker, groups: dict[str, list[dict]]) -> bool:
    """True once every user's online 90-day count equals the oracle's (the worker caught up)."""
    users = list(groups)
    if not worker.alive():
        pytest.fail(f"worker {worker.name} died\n{worker.log_tail()}", pytrace=False)
    try:
        bodies = read_online(worker, users, "amount_count_90d")
    except AssertionError:
        return False
    return all(
        bodies[u]["features"]["amount_count_90d"] == expected_count(groups[u], u, bodies[u]["at"]) for u in users
    )


def expected_count(rows, user, at) -> int:
    f = next(f for f in FEATURES if f.name == "amount_count_90d")
    return oracle.feature_at(rows, user, at, "count", f.window.length, f.window.period)


def compare_online(worker: Worker, events: list[Sent], wait: bool = True) -> Outcome:
    """Every user of ``events`` read over HTTP and compared with the oracle at the answer's ``at`` (first
    waiting, up to the timeout, until the worker's counts cover every event)."""
    groups = by_user(events)
    if wait:
        deadline = time.monotonic() + CATCH_UP_S
        while not online_counts_match(worker, groups) and time.monotonic() < deadline:
            time.sleep(0.5)
    out = Outcome()
    for user, body in read_online(worker, list(groups)).items():
        out.add(compare_values(groups[user], user, body["at"], body["features"]))
    if out.lost or out.duplicated:  # which source partitions the differing users live in
        partitions = {e.user: e.partition for e in events}
        out.examples.insert(0, ("partitions of differing users", sorted(
            {partitions[x[1]] for x in out.examples if x and x[0] == "count_90d"})))
    return out


def dataset_offsets(data_dir: Path) -> pd.DataFrame:
    from sinks import read_events

    return read_events(TX, data_dir)


def compare_offline(data_dir: Path, events: list[Sent], times: list[int] | None = None) -> Outcome:
    """The dataset holds each valid event exactly once; offline features at ``times`` equal the oracle."""
    from sinks import get_offline_features

    stored = dataset_offsets(data_dir)
    produced = {(e.partition, e.offset) for e in events}
    pairs = list(zip(stored["_partition"].tolist(), stored["_offset"].tolist(), strict=True))
    out = Outcome(lost=len(produced - set(pairs)), duplicated=len(pairs) - len(set(pairs)))
    out.duplicated += len(set(pairs) - produced)  # rows that were never valid events
    groups = by_user(events)
    users = sorted(groups)
    times = times or [now_ms()]
    rows = pd.DataFrame(
        {"user_id": [u for t in times for u in users], "ts": np.array([t for t in times for _ in users], np.int64)}
    )
    vector = FeatureVector("e2e_all", [f"transactions.{n}" for n in NAMES])
    frame = get_offline_features(vector, rows, data_dir, registry={"transactions": TX})
    for i, (user, t) in enumerate(zip(rows["user_id"], rows["ts"], strict=True)):
        values = {n: _py(frame[n].iloc[i]) for n in NAMES}
        one = compare_values(groups[user], user, int(t), values)
        out.mismatched += one.mismatched
        out.examples.extend(one.examples[:2])
    return out


def _py(v):
    if isinstance(v, np.generic):
        v = v.item()
    return None if isinstance(v, float) and math.isnan(v) else v


def stored_within(data_dir: Path, n: int, timeout: float) -> bool:
    """Whether the dataset holds at least n events within ``timeout`` seconds (no failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(dataset_offsets(data_dir)) >= n:
                return True
        except (FileNotFoundError, OSError):
            pass
        time.sleep(0.5)
    return False


def wait_stored(data_dir: Path, n: int, detail=lambda: "") -> None:
    def enough() -> bool:
        try:
            return len(dataset_offsets(data_dir)) >= n
        except (FileNotFoundError, OSError):
            return False

    wait_for(enough, f"{n} events in the dataset", interval=0.5, detail=detail)


# --- a broker of our own ------------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Broker:
    """A dedicated broker (deploy/kafka/start.sh / stop.sh) on a port pair in 19500-19599."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        rng = random.Random(uuid.uuid4().int)
        candidates = list(range(19500, 19599, 2))
        rng.shuffle(candidates)
        for port in candidates:
            if _port_free(port) and _port_free(port + 1):
                self.port = port
                break
        else:
            pytest.skip("no free port pair in 19500-19599 for a dedicated broker")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _script(self, script: str, *extra: str) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env["FEATURESTREAM_PYTHON"] = sys.executable
        env["KAFKA_WATCH_PID"] = str(os.getpid())  # a killed pytest takes this broker with it
        env["KAFKA_WATCH_WIPE"] = "1"
        env["KAFKA_NUM_PARTITIONS"] = "4"
        args = ["--port", str(self.port), "--controller-port", str(self.port + 1), "--data-dir", str(self.data_dir)]
        return subprocess.run(
            ["bash", str(KAFKA_DIR / script), *args, *extra], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, check=False,
        )  # fmt: skip

    def start(self) -> None:
        done = self._script("start.sh")
        assert done.returncode == 0, done.stdout

    def stop(self, wipe: bool = False) -> None:
        done = self._script("stop.sh", *(["--wipe"] if wipe else []))
        assert done.returncode == 0, done.stdout


def create_topic(broker: str, name: str, partitions: int = 4, configs: dict | None = None) -> None:
    from kafka import KafkaAdminClient, TopicPartition
    from kafka.admin import OffsetSpec

    admin = KafkaAdminClient(bootstrap_servers=broker, client_id="featurestream-e2e")
    try:
        admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1, "configs": dict(configs or {})}},
            timeout_ms=30_000,
        )
        admin.wait_for_topics([name], timeout_ms=30_000)
        admin.list_partition_offsets(
            {TopicPartition(name, p): OffsetSpec.LATEST for p in range(partitions)}, timeout_ms=30_000
        )
    finally:
        admin.close()


def read_topic(broker: str, topic: str, n: int, timeout: float = 60) -> list:
    """The first ``n`` records of ``topic`` (fails if fewer arrive in time)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, bootstrap_servers=broker, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
        consumer_timeout_ms=2_000, fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20,
    )  # fmt: skip
    records = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def unique_names(tag: str) -> tuple[str, str, str]:
    run = uuid.uuid4().hex[:8]
    return f"e2e-{tag}-{run}-", f"fs-e2e-{tag}-{run}", f"sink-e2e-{tag}-{run}"
