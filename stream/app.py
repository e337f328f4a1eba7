"""Builds the worker's Faust app: one agent and one tile table per FeatureSet, plus the HTTP views.

Tables are plain (non-windowed) Faust tables keyed by entity key bytes whose values are
``aggregations.codec`` state blobs; windows live inside the blobs as tiles. They are stored in
RocksDB through the rocksdict driver and backed by a changelog topic, and partitioned like their
source topic. The table name carries the definition fingerprint, so a changed definition starts
from fresh state (rebuilt by replaying the source) instead of misreading old state.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

import faust

from aggregations.codec import EntityStateCodec
from aggregations.definitions import Registry
from aggregations.naming import DEFAULT_APP_ID, table_name
from aggregations.schema import DEFAULT_MAX_FUTURE

from . import auth, faust_fixes, recovery_guard, store_options
from .agent import DEFAULT_BATCH_MAX, FeatureSetAgent
from .metrics import WorkerMetrics
from .reading import FeatureReader
from .status import WorkerStatus
from .topics import DEFAULT_PARTITIONS, SetTopics, bootstrap_servers, ensure_changelogs, resolve_topics
from .versions import guard_versions
from .views import ServingContext, register_views

ROCKSDB_OPTIONS = {"driver": "rocksdict"}
PRODUCER_BATCH_BYTES = 512 * 1024  # under the broker's default 1 MiB message.max.bytes
PRODUCER_MAX_REQUEST_BYTES = 16 * 1024 * 1024


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def create_app(
    registry: Registry,
    broker: str,
    state_dir: str | os.PathLike,
    web_port: int,
    web_host: str = "127.0.0.1",
    worker_id: str | None = None,
    *,
    app_id: str = DEFAULT_APP_ID,
    topic_prefix: str = "",
    max_future: str = DEFAULT_MAX_FUTURE,
    partitions: int = DEFAULT_PARTITIONS,
    topics: Mapping[str, SetTopics] | None = None,
    web_bind: str | None = None,
    canonical_url: str | None = None,
    batch_max: int = DEFAULT_BATCH_MAX,
    standby_replicas: int = 1,
    session_timeout_s: float = 45.0,
    broker_credentials=None,
    kafka_client_config: Mapping | None = None,
    auth_token: str | None = None,
    allow_partial_state: bool = False,
) -> faust.App:
    """A Faust app serving every FeatureSet of ``registry`` (the worker runs it).

    ``topics`` (set name -> topics and partition count) defaults to asking the broker, creating
    missing topics; source topics are ``topic_prefix + FeatureSet.source``. All workers of one
    deployment share ``app_id`` (the consumer group). ``web_host`` is bound and advertised; pass
    ``web_bind="0.0.0.0"`` with a reachable ``web_host`` (or ``canonical_url``) to serve other hosts.
    ``session_timeout_s`` bounds how long the group waits for a worker that died without leaving
    (kill -9) before its partitions move: the restart of a killed worker waits that long too.
    ``allow_partial_state``: start a changed feature set on empty state even though the group already
    consumed its source (``versions.check_versions`` refuses that by default; run bootstrap instead).
    ``broker_credentials`` (a ``faust.SSLCredentials``/``SASLCredentials``) and ``kafka_client_config``
    (kafka-python arguments for the topic setup) carry Kafka TLS/SASL. ``auth_token``: HTTP bearer token
    required on every route but /health and /metrics (``stream.auth``).
    The returned app carries its ``ServingContext`` as ``app.featurestream``.
    """
    faust_fixes.apply()
    store_options.install()
    sets = list(registry.feature_sets.values())
    declare_changelogs = topics is None  # given topics: the caller set up the broker (unit tests: none)
    if topics is None:
        topics = resolve_topics(
            broker, sets, prefix=topic_prefix, partitions=partitions, client_config=kafka_client_config
        )
        sources = {name: t.source for name, t in topics.items()}
        guard_versions(
            bootstrap_servers(broker), sets, sources, app_id, allow_partial_state, kafka_client_config
        )
    worker_id = worker_id or default_worker_id()
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    first = topics[sets[0].name]
    app = faust.App(
        app_id,
        broker=[f"kafka://{server}" for server in bootstrap_servers(broker)],
        broker_client_id=f"featurestream-{worker_id}",
        broker_credentials=broker_credentials,
        store="rocksdb://",
        datadir=str(state_dir),
        topic_partitions=first.partitions,
        table_standby_replicas=standby_replicas,
        web_port=int(web_port),
        web_host=web_host,
        web_bind=web_bind or web_host,
        canonical_url=canonical_url or f"http://{web_host}:{int(web_port)}",
        # HTTP on a thread and event loop of its own: a read waits at most for the interpreter lock, never
        # behind the ingest loop's callbacks (fetch parsing, changelog batches, store writes).
        web_in_thread=True,
        web_tables_enabled=False,  # would expose raw state blobs
        web_stats_enabled=False,
        web_graph_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=max(1.0, session_timeout_s / 10),
        autodiscover=False,
        # A batch's table writes are all handed to the producer before any is awaited (stream.ports.TableStore via stream.transaction):
        # large produce batches carry them (a state blob is 4-8 KB; the default batch is 16 KB).
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        # A dead letter wraps its event (base64, +1/3): never refuse one client-side that the broker
        # would take; one the broker refuses is dead-lettered without its payload (agent._delivered).
        producer_max_request_size=PRODUCER_MAX_REQUEST_BYTES,
    )
    metrics = WorkerMetrics()
    tables, readers, agents = {}, {}, {}
    for fs in sets:
        t = topics[fs.name]
        table = app.Table(
            table_name(fs),
            partitions=t.partitions,
            # faust-streaming 0.15 takes no key/value_serializer for tables: bytes types select "raw".
            key_type=bytes,
            value_type=bytes,
            options=dict(ROCKSDB_OPTIONS),
            help=f"tile state of feature set {fs.name!r} (aggregations.codec blobs)",
        )
        recovery_guard.install(table, EntityStateCodec(fs))
        tables[fs.name] = table
        readers[fs.name] = FeatureReader(fs)
        agents[fs.name] = FeatureSetAgent(app, fs, t, table, metrics, max_future, batch_max=batch_max)
    if declare_changelogs:
        ensure_changelogs(
            broker, {table.changelog_topic.get_topic_name(): table.partitions for table in tables.values()},
            client_config=kafka_client_config,
        )  # fmt: skip
    faust_fixes.keep_changelog_events(app)
    status = WorkerStatus(
        worker_id, app_id, bootstrap_servers(broker), str(app.conf.canonical_url),
        bind=f"{web_bind or web_host}:{int(web_port)}", session_timeout_s=session_timeout_s,
    )  # fmt: skip
    ctx = ServingContext(
        registry, tables, readers, metrics, worker_id, extra={"agents": agents, "topics": topics, "status": status}
    )
    register_views(app, ctx)
    auth.install(app, auth_token)  # inside the HTTP metrics middleware: refused requests are counted
    app.featurestream = ctx
    return app
