"""The user-facing surface against a real broker, a real worker (with a bearer token), a real sink and Parquet.

One worker and one sink run the definitions in ``surface_definitions.py``: the example ``transactions`` set and
``user_merchant``, keyed by a compound entity (user_id, merchant) whose aggregated column is made by a
transform. Its events are produced keyed by ``user_id`` alone (not the joined key), so the worker forwards
them to their entity's partition. Checked here:

* ``featurestream.OnlineClient``: features of one entity and vectors (dicts and DataFrames, more entities
  than one request takes), against the brute-force oracle; the token; 4xx errors with the worker's message;
  connection errors retried then raised; timeouts.
* the transform, online (worker) and offline (``get_offline_features``), against the oracle;
* ``featurestream verify`` on the compound-key set (it used to crash when the Kafka key was not the joined key).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaAdminClient, KafkaProducer

from aggregations.loading import load_registry
from featurestream import (
    FeatureConnectionError,
    FeatureRequestError,
    FeatureServerError,
    FeatureTimeout,
    OnlineClient,
)
from sinks import get_offline_features, read_events
from tests import oracle
from tests.integration.test_verify import cli
from tests.integration.test_worker import Worker, free_port

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
DEFINITIONS = str(HERE / "surface_definitions.py")
REGISTRY = load_registry(DEFINITIONS)
TX = REGISTRY.feature_set("transactions")
UM = REGISTRY.feature_set("user_merchant")
PROFILES = REGISTRY.feature_set("profiles")
USERS = [f"u{i}" for i in range(8)]
MERCHANTS = ["m1", "m2", "m3"]


def _events(n: int, seed: int, now: int) -> list[dict]:
    """Events in the last 50 minutes (inside every window for the whole test), distinct times, out of order."""
    rng = np.random.default_rng(seed)
    ages = rng.permutation(np.unique(rng.integers(1_000, 3_000_000, n)))
    return [
        {
            "user_id": USERS[int(rng.integers(len(USERS)))],
            "merchant": MERCHANTS[int(rng.integers(len(MERCHANTS)))],
            "ts": now - int(age),
            "amount": None if rng.random() < 0.05 else float(np.round(rng.lognormal(3, 1), 2)),
        }
        for age in ages
    ]


def _oracle_rows(events: list[dict], key, value) -> list[dict]:
    return [{"key": key(e), "ts": e["ts"], "seq": i, "value": value(e)} for i, e in enumerate(events)]


def _cents(e):
    return None if e["amount"] is None else float(round(e["amount"] * 100))


@pytest.fixture(scope="module")
def deployment(kafka_bootstrap, tmp_path_factory):
    run_id = uuid.uuid4().hex[:8]
    prefix, app_id = f"sf-{run_id}-", f"fs-sf-{run_id}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="featurestream-tests")
    topics = {name: f"{prefix}{name}" for name in ("transactions", "payments", "profiles")}
    admin.create_topics(
        {t: {"num_partitions": 3, "replication_factor": 1} for t in topics.values()}, timeout_ms=30_000
    )
    admin.wait_for_topics(list(topics.values()), timeout_ms=30_000)
    admin.close()
    tmp = tmp_path_factory.mktemp(f"surface-{run_id}")
    token = f"surface-{uuid.uuid4().hex}"
    (tmp / "token").write_text(token + "\n")
    worker = Worker(kafka_bootstrap, tmp / "state", prefix, app_id, tmp, "sf")
    worker.extra_args = ["--definitions", DEFINITIONS, "--auth-token-file", str(tmp / "token")]
    now = int(time.time() * 1000)
    events = _events(600, seed=3, now=now)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    for e in events:
        value = json.dumps(e).encode()
        producer.send(topics["transactions"], key=e["user_id"].encode(), value=value)
        producer.send(topics["payments"], key=e["user_id"].encode(), value=value)  # not the joined key
    profile_events = _profile_events(now)
    for e in profile_events:
        producer.send(topics["profiles"], key=e["user_id"].encode(), value=json.dumps(e).encode())
    producer.flush(timeout=30)
    producer.close()
    worker.start()
    client = OnlineClient(worker.url, token=token, timeout=10)
    try:
        # Caught up once every user's 90-day count covers its non-null events, and every pair's 1-day count.
        deadline = time.monotonic() + 90
        want = sum(e["amount"] is not None for e in events)
        pairs = [{"user_id": u, "merchant": m} for u in USERS for m in MERCHANTS]
        while True:
            try:
                got = client.vector("pair").get(pairs)
            except FeatureServerError as exc:  # a 500 right after /health is 200: see notes-surface.md
                assert time.monotonic() < deadline, f"{exc}\n{worker.log_tail()}"
                time.sleep(0.3)
                continue
            tx = sum(
                client.features("transactions", u, ["amount_count_90d"])["amount_count_90d"] for u in USERS
            )
            profiles_now = {u: client.features("profiles", u) for u in USERS}
            t = int(time.time() * 1000)
            if (
                tx == want
                and sum(r["cents_count_1d"] for r in got) == want
                and all(profiles_now[u] == _expected_profile(profile_events, u, t) for u in USERS)
            ):
                break
            assert time.monotonic() < deadline, f"worker not caught up:\n{worker.log_tail()}"
            time.sleep(0.3)
        data = tmp / "data"
        sinks = [("transactions", topics["transactions"]), ("user_merchant", topics["payments"]),
                 ("profiles", topics["profiles"])]  # fmt: skip
        for name, topic in sinks:
            _sink_once(kafka_bootstrap, data, name, topic, f"sink-{run_id}-{name}")
        yield {
            "worker": worker, "client": client, "token": token, "events": events, "data": data,
            "profile_events": profile_events,
            "prefix": prefix, "app_id": app_id, "run_id": run_id, "bootstrap": kafka_bootstrap, "tmp": tmp,
        }  # fmt: skip
    finally:
        client.close()
        worker.stop()


def _sink_once(bootstrap: str, data: Path, name: str, topic: str, group: str) -> None:
    """``featurestream sink --once`` of one set. A new sink has been seen to consume nothing for minutes on a
    busy machine (tests/e2e relaunches it too): after 90 s it is stopped and relaunched once, with a warning
    that carries its log."""
    args = ["sink", "--once", "--broker", bootstrap, "--data-dir", str(data), "--definitions", DEFINITIONS,
            "--feature-set", name, "--topic", topic, "--group", group, "--flush-seconds", "1", "-v"]  # fmt: skip
    try:
        done = cli(*args, timeout=90)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:]
        warnings.warn(f"sink of {name} stuck at start, relaunched; its log: {tail!r}", stacklevel=1)
        done = cli(*args, timeout=180)
    assert done.returncode == 0, done.stderr


def _profile_events(now: int) -> list[dict]:
    """Per user three events 2.5-3 h old and, for three users in four, three in the last 50 minutes (the
    vip ttl is 2 h); nulls everywhere, ints beyond 2**53; produced out of order."""
    rng = np.random.default_rng(11)
    out = []
    for i, user in enumerate(USERS):
        ages = rng.choice(np.arange(9_000_000, 10_800_000, 1000), 3, replace=False).tolist()
        if i % 4 != 3:
            ages += rng.choice(np.arange(1000, 3_000_000, 1000), 3, replace=False).tolist()
        for age in ages:
            out.append(
                {
                    "user_id": user,
                    "ts": now - int(age),
                    "country": [None, "fr", "de", "jp"][int(rng.integers(4))],
                    "age": None if rng.random() < 0.3 else int(rng.integers(2**60)),
                    "vip": None if rng.random() < 0.3 else bool(rng.random() < 0.5),
                }
            )
    return [out[i] for i in rng.permutation(len(out))]


def _expected_profile(events, user: str, at: int) -> dict:
    rows = lambda column: [  # noqa: E731
        {"key": e["user_id"], "ts": e["ts"], "seq": i, "value": e[column]} for i, e in enumerate(events)
    ]
    return {f.name: oracle.latest_at(rows(f.column), user, at, f.ttl_ms) for f in PROFILES.features}


def _expected_tx(events, user: str, at: int) -> dict:
    rows = _oracle_rows(events, lambda e: e["user_id"], lambda e: e["amount"])
    return {
        f.name: oracle.feature_at(rows, user, at, f.op, f.window.length, f.window.period)
        for f in TX.plan.features
    }


def _expected_pair(events, user: str, merchant: str, at: int) -> dict:
    rows = _oracle_rows(events, lambda e: (e["user_id"], e["merchant"]), _cents)
    return {
        f.name: oracle.feature_at(rows, (user, merchant), at, f.op, f.window.length, f.window.period)
        for f in UM.plan.features
    }


def _same(got, want, name):
    if want is None:
        assert got is None, (name, got)
    else:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (name, got, want)


def test_client_reads_one_entity_like_the_oracle(deployment):
    client, events = deployment["client"], deployment["events"]
    now = int(time.time() * 1000)
    for user in USERS:
        got = client.features("transactions", user)
        assert set(got) == set(TX.feature_names())
        want = _expected_tx(events, user, now)
        for name, value in want.items():
            _same(got[name], value, name)
    some = client.features("transactions", USERS[0], ["amount_avg_90d"], amount=50.0)
    assert set(some) == {"amount_avg_90d"}
    with_input = client.features("transactions", USERS[0], ["amount_vs_avg_90d"], amount=50.0)
    assert with_input["amount_vs_avg_90d"] == pytest.approx(50.0 / some["amount_avg_90d"], rel=1e-12)


def test_client_reads_vectors_as_dicts_and_frames_across_request_limits(deployment):
    client, events = deployment["client"], deployment["events"]
    rows = [{"user_id": u, "merchant": m} for u in USERS for m in MERCHANTS]
    now = int(time.time() * 1000)
    got = client.vector("pair").get(rows)
    assert len(got) == len(rows)
    for row, values in zip(rows, got, strict=True):
        want = _expected_pair(events, row["user_id"], row["merchant"], now)
        for name, value in want.items():
            _same(values[name], value, name)
        assert values["amount_count_1h"] == _expected_tx(events, row["user_id"], now)["amount_count_1h"]
    many = [rows[i % len(rows)] for i in range(2500)]  # three requests of at most 1000
    frame = client.vector("pair").get(pd.DataFrame(many), as_frame=True)
    assert list(frame.columns[:2]) == ["user_id", "merchant"] and len(frame) == 2500
    assert frame["cents_sum_1d"].tolist() == [v["cents_sum_1d"] for v in (got * 200)[:2500]]
    fraud = client.vector("fraud").get([{"user_id": USERS[1], "amount": 20.0}])
    assert fraud[0]["amount_vs_avg_90d"] == pytest.approx(20.0 / fraud[0]["amount_avg_90d"], rel=1e-12)


def test_client_errors_carry_the_workers_message(deployment):
    worker, token = deployment["worker"], deployment["token"]
    client = deployment["client"]
    with pytest.raises(FeatureRequestError) as unknown_vector:
        client.vector("nope").get([{"user_id": "u1"}])
    assert (
        unknown_vector.value.status == 404 and "unknown feature vector 'nope'" in unknown_vector.value.message
    )
    with pytest.raises(FeatureRequestError) as unknown_feature:
        client.features("transactions", "u1", ["amount_count_7h"])
    assert unknown_feature.value.status == 400 and "amount_count_7h" in str(unknown_feature.value)
    with pytest.raises(FeatureRequestError) as no_key:
        client.vector("pair").get([{"user_id": "u1"}])
    assert no_key.value.status == 400 and "merchant" in no_key.value.message
    with OnlineClient(worker.url, token="wrong-token") as wrong, pytest.raises(FeatureRequestError) as denied:
        wrong.features("transactions", "u1")
    assert denied.value.status == 401 and "bearer token" in denied.value.message
    with OnlineClient(worker.url, token_file=str(deployment["tmp"] / "token")) as from_file:
        assert from_file.features("transactions", "nobody", ["amount_count_1h"]) == {"amount_count_1h": 0}
        assert from_file.health()
    assert OnlineClient(worker.url, token=token).health()


def test_client_retries_connection_errors_only_and_times_out():
    port = free_port()  # nothing listens here
    started = time.monotonic()
    with pytest.raises(FeatureConnectionError):
        OnlineClient(f"http://127.0.0.1:{port}", retries=2, backoff=0.2).features("transactions", "u1")
    assert time.monotonic() - started >= 0.2  # it waited between attempts

    # A server that accepts, counts requests and never answers: one request, then a timeout.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    seen: list[bytes] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        conns = []
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            seen.append(conn.recv(65536))
            conns.append(conn)
        for c in conns:
            c.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        client = OnlineClient(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=0.5, retries=3)
        with pytest.raises(FeatureTimeout):
            client.vector("fraud").get([{"user_id": "u1"}])
        time.sleep(0.3)
        assert len(seen) == 1 and seen[0].startswith(b"POST /vectors/fraud")
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_transform_offline_matches_the_oracle_and_the_worker(deployment):
    client, events, data = deployment["client"], deployment["events"], deployment["data"]
    rows = pd.DataFrame([{"user_id": u, "merchant": m} for u in USERS for m in MERCHANTS])
    now = int(time.time() * 1000)
    rows["ts"] = now
    offline = get_offline_features("pair", rows, data, registry=REGISTRY)
    online = client.vector("pair").get(rows[["user_id", "merchant"]])
    for i, row in rows.iterrows():
        want = _expected_pair(events, row["user_id"], row["merchant"], now)
        for name, value in want.items():
            got = offline[name].iloc[i]
            _same(None if pd.isna(got) else float(got), value, name)
            _same(online[i][name], value, name)


def test_verify_passes_on_a_compound_key_whose_kafka_key_is_not_the_joined_key(deployment):
    d = deployment
    done = cli(
        "verify", "--broker", d["bootstrap"], "--data-dir", str(d["data"]), "--url", d["worker"].url,
        "--definitions", DEFINITIONS, "--app-id", d["app_id"], "--topic-prefix", d["prefix"],
        "--sink-group", f"sink-{d['run_id']}-user_merchant", "--feature-set", "user_merchant",
        "--auth-token-file", str(d["tmp"] / "token"), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (report,) = json.loads(done.stdout)["feature_sets"]
    assert report["status"] == "consistent"
    assert report["compared_entities"] == len({(e["user_id"], e["merchant"]) for e in d["events"]})


ONLINE_MARK = re.compile(r"^<!-- test: online -->\n```python\n(.*?)^```", re.M | re.S)


@pytest.mark.parametrize("doc", sorted((HERE.parents[1] / "docs").glob("*.md")), ids=lambda p: p.name)
def test_docs_online_blocks_run_against_the_worker(doc, deployment, monkeypatch, capsys):
    """Doc blocks marked ``<!-- test: online -->`` need a worker: they run here with FEATURESTREAM_URL and
    FEATURESTREAM_AUTH_TOKEN pointing at this module's (the unit docs test runs the broker-free blocks)."""
    blocks = ONLINE_MARK.findall(doc.read_text())
    if not blocks:
        return
    monkeypatch.setenv("FEATURESTREAM_URL", deployment["worker"].url)
    monkeypatch.setenv("FEATURESTREAM_AUTH_TOKEN", deployment["token"])
    for i, code in enumerate(blocks):
        exec(compile(code, f"{doc.name}[online block {i}]", "exec"), {"__name__": f"docs_online_{i}"})
    assert "400 feature set 'transactions' has no feature(s) ['amount_avg_7h']" in capsys.readouterr().out


def test_plain_features_online_offline_and_verify(deployment):
    """Plain features served by the worker, computed offline and verified: the oracle's values, ints kept
    as ints (beyond 2**53), strings as strings, a null in the latest event served as null, ttl respected."""
    client, events, data = deployment["client"], deployment["profile_events"], deployment["data"]
    now = int(time.time() * 1000)
    for user in USERS:
        got = client.features("profiles", user)
        assert got == _expected_profile(events, user, now), user
        assert got["age"] is None or type(got["age"]) is int
    assert any(client.features("profiles", u)["vip"] is None for u in USERS[3::4])  # only events past the ttl
    rows = pd.DataFrame({"user_id": USERS, "ts": pd.to_datetime(now, unit="ms", utc=True)})
    offline = get_offline_features("scoring", rows, data, registry=REGISTRY)
    assert str(offline["age"].dtype) == "Int64" and pd.api.types.is_string_dtype(offline["country"])
    for i, user in enumerate(USERS):
        want = _expected_profile(events, user, now)
        assert (None if pd.isna(offline["age"].iloc[i]) else int(offline["age"].iloc[i])) == want["age"]
        assert (None if pd.isna(offline["country"].iloc[i]) else offline["country"].iloc[i]) == want[
            "country"
        ]
    online = client.vector("scoring").get(rows[["user_id"]])
    assert [r["age"] for r in online] == [_expected_profile(events, u, now)["age"] for u in USERS]
    d = deployment
    done = cli(
        "verify", "--broker", d["bootstrap"], "--data-dir", str(d["data"]), "--url", d["worker"].url,
        "--definitions", DEFINITIONS, "--app-id", d["app_id"], "--topic-prefix", d["prefix"],
        "--sink-group", f"sink-{d['run_id']}-profiles", "--feature-set", "profiles",
        "--auth-token-file", str(d["tmp"] / "token"), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (report,) = json.loads(done.stdout)["feature_sets"]
    assert report["compared_entities"] == len(USERS) and set(report["features"]) == {"country", "age", "vip"}


def test_live_ingest_reaches_the_worker_and_the_sink_once(deployment, tmp_path):
    """``featurestream ingest`` of a CSV into a running deployment: the worker and the sink apply the rows like
    any event (the oracle's values online, ``verify`` consistent); the same ingest again writes nothing; an
    interrupted one (some rows produced, not marked finished) produces only the rest."""
    from featurestream.ingest import HEADER, ingest, ingest_id, validate
    from sinks.ingest_records import IngestRecords

    d, client, events = deployment, deployment["client"], deployment["profile_events"]
    now = int(time.time() * 1000)
    new = [
        {"user_id": USERS[i % len(USERS)], "ts": now - 2_000 + i, "country": ["nz", None][i % 2],
         "age": 2**61 + i, "vip": i % 3 == 0}
        for i in range(24)
    ]  # fmt: skip
    pd.DataFrame(new).to_csv(tmp_path / "updates.csv", index=False)
    topic = f"{d['prefix']}profiles"
    args = ["ingest", "--set", "profiles", str(tmp_path / "updates.csv"), "--broker", d["bootstrap"],
            "--data-dir", str(d["data"]), "--definitions", DEFINITIONS, "--topic", topic]  # fmt: skip
    done = cli(*args)
    assert done.returncode == 0 and "24 valid, 0 rejected; 24 produced" in done.stdout, (
        done.stdout + done.stderr
    )
    again = cli(*args)
    assert "0 produced to the source topic, 24 already ingested" in again.stdout, again.stdout + again.stderr
    events.extend(new)

    # Interrupted: a registry entry that started but never finished, and half of the rows on the topic.
    later = [dict(e, ts=e["ts"] + 1_000, age=e["age"] + 1) for e in new]
    frame = pd.DataFrame(later)
    rows, _, _ = validate(PROFILES, frame, int(time.time() * 1000))
    key = ingest_id(PROFILES, rows)
    IngestRecords(d["data"] / "profiles").put(
        key, {"mode": "live", "topic": topic, "rows": len(rows), "started_at_ms": int(time.time() * 1000)}
    )
    producer = KafkaProducer(bootstrap_servers=d["bootstrap"], acks="all")
    for i in range(0, len(rows), 2):
        producer.send(topic, key=rows[i]["user_id"].encode(), value=json.dumps(rows[i]).encode(),
                      headers=[(HEADER, f"{key}:{i}".encode())])  # fmt: skip
    producer.flush(timeout=30)
    producer.close()
    resumed = ingest(PROFILES, frame, data_dir=d["data"], broker=d["bootstrap"], topic=topic)
    assert (resumed.ingest_id, resumed.written, resumed.skipped) == (key, 12, 12)
    events.extend(later)

    deadline = time.monotonic() + 60
    while True:
        t = int(time.time() * 1000)
        got = {u: client.features("profiles", u) for u in USERS}
        if all(got[u] == _expected_profile(events, u, t) for u in USERS):
            break
        assert time.monotonic() < deadline, (got, {u: _expected_profile(events, u, t) for u in USERS})
        time.sleep(0.3)
    assert all(type(got[u]["age"]) is int and got[u]["age"] > 2**61 for u in USERS)
    _sink_once(d["bootstrap"], d["data"], "profiles", topic, f"sink-{d['run_id']}-profiles")
    stored = read_events(PROFILES, d["data"])
    assert len(stored) == len(events)  # each ingested row once offline
    done = cli(
        "verify", "--broker", d["bootstrap"], "--data-dir", str(d["data"]), "--url", d["worker"].url,
        "--definitions", DEFINITIONS, "--app-id", d["app_id"], "--topic-prefix", d["prefix"],
        "--sink-group", f"sink-{d['run_id']}-profiles", "--feature-set", "profiles",
        "--auth-token-file", str(d["tmp"] / "token"), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
