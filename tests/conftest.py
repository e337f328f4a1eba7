"""Shared pytest fixtures: a real single-node Kafka broker for the test session.

``kafka_bootstrap`` (session) starts a dedicated broker with ``deploy/kafka/start.sh`` on a free port pair of
127.0.0.1 with a fresh data dir, yields ``"127.0.0.1:PORT"`` and stops and wipes it at the end of the session,
whatever the outcome. Set ``FEATURESTREAM_TEST_BROKER=host:port`` to use an already running broker instead.

``s3_server`` (session) starts a real S3-API server (S3Proxy with its filesystem backend, ``deploy/s3proxy``)
on a free port, points the AWS variables of this process (inherited by the processes it starts) at it and
yields its endpoint URL; ``s3_store`` (function) is a fresh ``s3://featurestream/<test>-<uuid>`` store URI.

``spark`` (session) is one local[2] SparkSession for every Spark test (started on first use, stopped at the end);
it is started after ``s3_server`` so that its executors get the object store's AWS variables.

``new_topic`` (function) is a factory: ``new_topic(partitions=4)`` creates a uniquely named topic and returns
its name once every partition has a leader in the broker's metadata.

Tests under ``tests/integration`` are marked ``integration`` and those under ``tests/e2e`` ``e2e``, so
``-m "not integration and not e2e"`` runs only the broker-free tests.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_DIR = REPO_ROOT / "deploy" / "kafka"
S3PROXY_DIR = REPO_ROOT / "deploy" / "s3proxy"
S3_BUCKET = "featurestream"
TESTS_DIR = Path(__file__).resolve().parent

_DIR_MARKERS = {"integration": "integration", "e2e": "e2e"}


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python 3.0 loads its protocol schemas with importlib.resources' legacy API: ~200 warnings
    # per run that say nothing about this project.
    config.addinivalue_line("filterwarnings", "ignore:(read_text|open_text) is deprecated:DeprecationWarning")
    # PySpark warns on every Arrow call under pandas 3; the Spark engine hands pyspark Arrow only.
    config.addinivalue_line("filterwarnings", "ignore:PySpark does not yet fully support pandas:FutureWarning")
    # SIGTERM (e.g. a CI timeout) would end pytest without teardown: make it an interrupt, so the session
    # fixtures still stop the broker.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            rel = Path(str(item.path)).resolve().relative_to(TESTS_DIR)
        except ValueError:
            continue
        marker = _DIR_MARKERS.get(rel.parts[0]) if len(rel.parts) > 1 else None
        if marker and not item.get_closest_marker(marker):
            item.add_marker(getattr(pytest.mark, marker))


def free_port_pair() -> tuple[int, int]:
    """Two distinct TCP ports on 127.0.0.1 that are free right now (client, controller)."""
    socks = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return socks[0].getsockname()[1], socks[1].getsockname()[1]
    finally:
        for s in socks:
            s.close()


def _run_script(
    script: str, *args: str, env: dict[str, str] | None = None, where: Path = KAFKA_DIR
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(where / script), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a real Kafka broker for this test session."""
    external = os.environ.get("FEATURESTREAM_TEST_BROKER", "").strip()
    if external:
        yield external
        return

    env = dict(os.environ)
    # The readiness check in start.sh sends a metadata request with this interpreter's kafka-python.
    env["FEATURESTREAM_PYTHON"] = sys.executable
    # If this pytest process dies without running its teardown (SIGKILL, a CI timeout), the broker's
    # watchdog stops and wipes it.
    env["KAFKA_WATCH_PID"] = str(os.getpid())
    env["KAFKA_WATCH_WIPE"] = "1"
    last_output = ""
    for _attempt in range(3):
        port, controller_port = free_port_pair()
        data_dir = tmp_path_factory.mktemp(f"kafka-{port}")
        args = ["--port", str(port), "--controller-port", str(controller_port), "--data-dir", str(data_dir)]
        started = _run_script("start.sh", *args, env=env)
        if started.returncode == 0:
            break
        last_output = started.stdout
        _run_script("stop.sh", *args, "--wipe", env=env)
        if "already in use" not in started.stdout:
            break  # not a port race: retrying will not help
    else:
        started = None
    if started is None or started.returncode != 0:
        pytest.fail(f"could not start the test Kafka broker:\n{last_output}", pytrace=False)

    sys.stderr.write(started.stdout)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stopped = _run_script("stop.sh", *args, "--wipe", env=env)
        if stopped.returncode != 0:
            sys.stderr.write(f"stopping the test Kafka broker failed:\n{stopped.stdout}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL of a real S3-API server for this session; the AWS variables of this process point at it."""
    env = dict(os.environ)
    env["S3PROXY_WATCH_PID"] = str(os.getpid())
    env["S3PROXY_WATCH_WIPE"] = "1"
    env["S3PROXY_BUCKETS"] = S3_BUCKET
    for _attempt in range(3):
        port = free_port_pair()[0]
        args = ["--port", str(port), "--data-dir", str(tmp_path_factory.mktemp(f"s3proxy-{port}"))]
        started = _run_script("start.sh", *args, env=env, where=S3PROXY_DIR)
        if started.returncode == 0 or "already in use" not in started.stdout:
            break
    if started.returncode != 0:
        pytest.fail(f"could not start the test S3 server:\n{started.stdout}", pytrace=False)
    sys.stderr.write(started.stdout)
    endpoint = f"http://127.0.0.1:{port}"
    aws = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": env.get("S3PROXY_ACCESS_KEY", "featurestream"),
        "AWS_SECRET_ACCESS_KEY": env.get("S3PROXY_SECRET_KEY", "featurestream-secret"),
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        # S3Proxy rejects the checksum headers newer AWS SDKs send by default.
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }
    saved = {k: os.environ.get(k) for k in aws}
    os.environ.update(aws)
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stopped = _run_script("stop.sh", *args, "--wipe", env=env, where=S3PROXY_DIR)
        if stopped.returncode != 0:
            sys.stderr.write(f"stopping the test S3 server failed:\n{stopped.stdout}")


@pytest.fixture(scope="session")
def spark(s3_server: str) -> Iterator[object]:
    """A local[2] SparkSession shared by the whole test session."""
    from sinks.spark_engine import spark_session

    session = spark_session(
        "local[2]", {"spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false", "spark.driver.memory": "1g"}
    )
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture
def s3_store(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh store URI in the test S3 server's bucket."""
    return f"s3://{S3_BUCKET}/{_topic_stem(request.node.name)[:40]}-{uuid.uuid4().hex[:8]}"


def _topic_stem(node_name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9._-]+", "-", node_name).strip("-")[:60] or "topic"


@pytest.fixture
def new_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Factory creating uniquely named topics; they are deleted (best effort) after the test."""
    # Imported here: broker-free test runs never need kafka-python.
    from kafka import KafkaAdminClient, TopicPartition
    from kafka.admin import OffsetSpec

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="featurestream-tests")
    created: list[str] = []

    def make(partitions: int = 4, *, prefix: str | None = None, configs: dict[str, str] | None = None) -> str:
        name = f"{prefix or _topic_stem(request.node.name)}-{uuid.uuid4().hex[:10]}"
        admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1, "configs": dict(configs or {})}},
            timeout_ms=30_000,
        )
        created.append(name)
        admin.wait_for_topics([name], timeout_ms=30_000)
        (described,) = admin.describe_topics([name])
        assert len(described["partitions"]) == partitions, described
        # The metadata cache can name a leader a moment before that broker's replica manager hosts the
        # partition (a first produce then gets NOT_LEADER_OR_FOLLOWER). A ListOffsets answered by the
        # leader for every partition (retried on NotLeader) proves the partitions are really served.
        admin.list_partition_offsets(
            {TopicPartition(name, p): OffsetSpec.LATEST for p in range(partitions)}, timeout_ms=30_000
        )
        return name

    try:
        yield make
    finally:
        try:
            if created:
                admin.delete_topics(created, timeout_ms=30_000, raise_errors=False)
        finally:
            admin.close()
