"""``featurestream replica``: the worker's read API, served by a process of its own from the changelogs.

A worker answers reads on a thread beside its ingest, and the two share one interpreter lock: while it
folds batches a read waits for the lock (a p99 of about 6 ms during 20,000 events/s of ingest, against
0.3 ms idle). A replica is a separate process that follows every feature set's changelog topic (all
partitions, no consumer group, nothing committed), keeps each entity's newest state blob in memory
(``ChangelogMirror``: forward only, as table recovery applies the changelog) and answers with the same
``FeatureReader`` as the worker:

* ``GET /features/{set}/{entity}`` and ``POST /vectors/{vector}``: the worker's answers, for every entity (a
  replica holds every partition, so nothing is forwarded). 503 until every changelog partition has been
  applied up to its end offset as of the replica's start.
* ``GET /health``: 200 once caught up, with the records still to apply; 503 ``degraded`` while no bootstrap server
  accepts connections (reads still answer, from state that no longer moves), as a worker; ``GET /metrics``.

An answer trails the owning worker's by the changelog's delivery: the worker produces a batch's state records
before it stores them, and the replica fetches them at most ``FETCH_WAIT_MS`` after they land (fetches of at
least ``FETCH_MIN_BYTES`` otherwise: a fetch per few records cost the broker a third of a core at 20,000
events/s). A replica
holds the sets' whole state in memory (the changelog topics' compacted size). Same bearer token and limits
as a worker (``stream.auth``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from aggregations.codec import EntityStateCodec
from aggregations.definitions import Registry
from aggregations.naming import changelog_topic

from . import auth, http_json
from .changelog_mirror import ChangelogMirror
from .faust_fixes import finish_fetcher_close
from .read_batch import ReadBatcher
from .reading import (
    BadRequest,
    FeatureReader,
    NotFound,
    parse_feature_list,
    parse_vector_request,
    put_vector_values,
    request_columns,
    resolve_vector,
    vector_entity_keys,
)
from .status import PROBE_S, WAIT_LOG_S, WorkerStatus

log = logging.getLogger(__name__)

#: A changelog fetch returns once it has ``FETCH_MIN_BYTES`` or has waited ``FETCH_WAIT_MS``: the wait bounds how
#: far the replica trails the changelog; the minimum keeps the broker from answering a fetch per few records.
FETCH_WAIT_MS = 20
FETCH_MIN_BYTES = 256 * 1024
#: Records applied between two turns of the event loop once reads are served (a read waits for at most this many,
#: about 0.2 ms: each is compared with the state it replaces), and while catching up (reads answer 503 then).
APPLY_CHUNK = 50
CATCH_UP_CHUNK = 5000
PROGRESS_EVERY_S = 5.0
CATCHING_UP = "this replica is still catching up with the changelog; retry (GET /health says how far behind it is)"


@dataclass
class ReplicaSet:
    """One feature set as the replica serves it: its changelog topic, its mirror, its reader."""

    topic: str
    mirror: ChangelogMirror
    reader: FeatureReader
    batcher: ReadBatcher


def now_ms() -> int:
    return int(time.time() * 1000)


def replica_sets(registry: Registry, app_id: str) -> dict[str, ReplicaSet]:
    """Each set of ``registry`` with its changelog topic (the workers' of ``app_id``), an empty mirror and a reader."""
    out = {}
    for name, fs in registry.feature_sets.items():
        reader = FeatureReader(fs)
        out[name] = ReplicaSet(
            changelog_topic(fs, app_id), ChangelogMirror(EntityStateCodec(fs)), reader, ReadBatcher(reader, now_ms)
        )
    return out


class ChangelogFollower:
    """Applies every partition of the sets' changelog topics to their mirrors, from the beginning, for ever."""

    def __init__(self, sets: Mapping[str, ReplicaSet], broker: list[str], client_config: Mapping | None = None):
        self.sets = sets
        self.broker = broker
        self.client_config = dict(client_config or {})
        self.ready = asyncio.Event()
        self.targets: dict[str, dict[int, int]] = {}  # topic -> partition -> end offset when the replica started
        self.applied = 0
        self.started = time.monotonic()
        self._consumer = None

    def behind(self) -> int:
        """Records known to be in the changelogs but not applied yet (the fetched high watermarks)."""
        consumer = self._consumer
        if consumer is None or not self.targets:
            return -1
        total = 0
        for s in self.sets.values():
            ends = {}
            for partition, target in self.targets.get(s.topic, {}).items():
                tp = _tp(s.topic, partition)
                ends[partition] = max(target, consumer.highwater(tp) or 0)
            total += s.mirror.behind(ends)
        return total

    async def run(self) -> None:
        self._consumer = consumer = await self._connect()
        try:
            await self._assign(consumer)
            await self._follow(consumer)
        finally:
            await consumer.stop()

    async def _connect(self):
        """A started consumer, once a bootstrap server answers (until then: a line every ``WAIT_LOG_S``)."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        finish_fetcher_close()  # its stop must not raise when the broker is gone
        last_line = float("-inf")
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.broker,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=FETCH_WAIT_MS,
                fetch_min_bytes=FETCH_MIN_BYTES,
                client_id="featurestream-replica",
                **self.client_config,
            )
            try:
                await consumer.start()
                return consumer
            except KafkaError as exc:
                await consumer.stop()
                if time.monotonic() - last_line >= WAIT_LOG_S:
                    last_line = time.monotonic()
                    log.warning("replica: waiting for Kafka at %s: %s", ",".join(self.broker), exc)
            await asyncio.sleep(2.0)

    async def _assign(self, consumer) -> None:
        """Wait until every changelog topic exists (a worker creates them), then take all their partitions."""
        topics = {s.topic for s in self.sets.values()}
        warned = False
        while True:
            cluster = await consumer._client.fetch_all_metadata()  # consumer.topics() drops the partitions
            missing = sorted(topics - cluster.topics())
            if not missing:
                break
            if not warned:
                log.warning("waiting for changelog topic(s) %s: is a worker running with the same --app-id and "
                            "definitions?", ", ".join(missing))  # fmt: skip
                warned = True
            await asyncio.sleep(2.0)
        tps = [_tp(t, p) for t in sorted(topics) for p in sorted(cluster.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        by_topic = {s.topic: s for s in self.sets.values()}
        for tp in tps:
            by_topic[tp.topic].mirror.start(tp.partition, begins[tp])
            self.targets.setdefault(tp.topic, {})[tp.partition] = ends[tp]
        await consumer.seek_to_beginning(*tps)
        total = sum(ends[tp] - begins[tp] for tp in tps)
        log.warning("replica: applying %d changelog record(s) of %d partition(s)", total, len(tps))

    def _caught_up(self) -> bool:
        return all(
            s.mirror.positions.get(p, 0) >= end for s in self.sets.values() for p, end in self.targets[s.topic].items()
        )

    async def _follow(self, consumer) -> None:
        by_topic = {s.topic: s.mirror for s in self.sets.values()}
        last_progress = time.monotonic()
        if self._caught_up():
            self._announce_ready()
        while True:
            chunk = APPLY_CHUNK if self.ready.is_set() else CATCH_UP_CHUNK
            batch = await consumer.getmany(timeout_ms=1000, max_records=chunk)
            for tp, messages in batch.items():
                by_topic[tp.topic].apply(tp.partition, ((m.offset, m.key, m.value) for m in messages))
                self.applied += len(messages)
            if not self.ready.is_set():
                for tp in consumer.assignment():  # past records compaction removed at a log's end, too
                    by_topic[tp.topic].advance(tp.partition, await consumer.position(tp))
                if self._caught_up():
                    self._announce_ready()
                elif time.monotonic() - last_progress > PROGRESS_EVERY_S:
                    last_progress = time.monotonic()
                    log.warning("replica: catching up, %d record(s) applied, %d to go", self.applied, self.behind())
            await asyncio.sleep(0)

    def _announce_ready(self) -> None:
        self.ready.set()
        entities = sum(len(s.mirror) for s in self.sets.values())
        log.warning("replica: caught up in %.1f s: %d record(s) applied, %d entities",
                    time.monotonic() - self.started, self.applied, entities)  # fmt: skip


async def _probe_broker(status: WorkerStatus) -> None:
    """Every ``PROBE_S``: is any bootstrap server reachable (logged once per change, as a worker does)."""
    while True:
        status.record_probe(await status.broker_reachable())
        await asyncio.sleep(PROBE_S)


def _tp(topic: str, partition: int):
    from aiokafka import TopicPartition

    return TopicPartition(topic, partition)


def _json(value, status: int = 200) -> web.Response:
    return web.Response(body=http_json.dumps(value), status=status, content_type="application/json")


def build_web_app(registry: Registry, sets: Mapping[str, ReplicaSet], follower: ChangelogFollower,
                  token: str | None = None, status: WorkerStatus | None = None) -> web.Application:  # fmt: skip
    """The replica's aiohttp application: the worker's read routes, ``/health`` (503 ``degraded`` while ``status``
    finds no broker reachable) and ``/metrics``."""

    async def features(request: web.Request) -> web.Response:
        set_name, entity = request.match_info["feature_set"], request.match_info["entity"]
        s = sets.get(set_name)
        if s is None:
            known = ", ".join(sorted(sets)) or "none"
            return _json({"error": f"unknown feature set {set_name!r}; known: {known}"}, 404)
        try:
            wanted = s.reader.check_features(parse_feature_list(request.query.get("features")))
            req = request_columns(s.reader.feature_set, request.query)
        except BadRequest as exc:
            return _json({"error": str(exc)}, 400)
        if not follower.ready.is_set():
            return _json({"error": CATCHING_UP}, 503)
        at, values = await s.batcher.read(s.mirror.get(entity.encode("utf-8", "surrogatepass")), wanted, req)
        return _json({"entity": entity, "at": at, "features": values})

    async def vectors(request: web.Request) -> web.Response:
        try:
            entities = parse_vector_request(await auth.read_body(request))
            body = vector_answer(registry, sets, request.match_info["vector"], entities, follower.ready.is_set())
        except BadRequest as exc:
            return _json({"error": str(exc)}, 400)
        except auth.RequestTooLarge as exc:
            return _json({"error": str(exc)}, 413)
        except NotFound as exc:
            return _json({"error": str(exc)}, 404)
        except _NotReady:
            return _json({"error": CATCHING_UP}, 503)
        return _json(body)

    async def health(request: web.Request) -> web.Response:
        ready = follower.ready.is_set()
        body = {"status": "ok" if ready else "catching up", "role": "replica", "behind_records": follower.behind()}
        down_since = status.broker_down_since if status is not None else None
        if down_since is not None:  # reads still answer, from state that no longer moves
            body.update(status="degraded", reason=f"broker unreachable for {time.time() - down_since:.0f} s", ready=ready)
            return _json(body, 503)
        return _json(body, 200 if ready else 503)

    metrics = ReplicaMetrics()

    async def prometheus(request: web.Request) -> web.Response:
        metrics.refresh(sets, follower)
        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})

    app = web.Application(middlewares=[auth.middleware(token)], client_max_size=auth.MAX_BODY_BYTES)
    app.router.add_get("/features/{feature_set}/{entity}", features)
    app.router.add_post("/vectors/{vector}", vectors)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prometheus)
    return app


class ReplicaMetrics:
    """The replica's Prometheus series, set from the follower and the mirrors when scraped."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Gauge
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        self.registry = registry = CollectorRegistry()
        self.content_type = CONTENT_TYPE_LATEST
        self.behind = Gauge("featurestream_replica_behind_records", "changelog records not applied yet",
                            registry=registry)  # fmt: skip
        self.ready = Gauge("featurestream_replica_ready", "1 once caught up with the changelogs", registry=registry)
        self.entities = Gauge("featurestream_replica_entities", "entities held", ["feature_set"], registry=registry)
        self.state_bytes = Gauge("featurestream_replica_state_bytes", "bytes of keys and state blobs held",
                                 ["feature_set"], registry=registry)  # fmt: skip
        self.skipped = Gauge("featurestream_replica_skipped_records", "changelog records older than the state "
                             "they would have replaced (skipped)", ["feature_set"], registry=registry)  # fmt: skip

    def refresh(self, sets: Mapping[str, ReplicaSet], follower: ChangelogFollower) -> None:
        self.behind.set(follower.behind())
        self.ready.set(1 if follower.ready.is_set() else 0)
        for name, s in sets.items():
            self.entities.labels(name).set(len(s.mirror))
            self.state_bytes.labels(name).set(s.mirror.bytes)
            self.skipped.labels(name).set(s.mirror.skipped)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _NotReady(RuntimeError):
    pass


def vector_answer(registry: Registry, sets: Mapping[str, ReplicaSet], vector_name: str, entities: list[dict],
                  ready: bool) -> dict:  # fmt: skip
    """The body of ``POST /vectors/{vector_name}`` for ``entities``, read from the mirrors."""
    resolved, names = resolve_vector(registry, vector_name, entities)
    if not ready:
        raise _NotReady()
    at = now_ms()
    results: list[dict] = [{"entity": e, "features": {}} for e in entities]
    for set_name, features in resolved.items():
        s = sets[set_name]
        keys = vector_entity_keys(registry.feature_sets[set_name], entities)
        blobs = [s.mirror.get(k.encode("utf-8", "surrogatepass")) for k in keys]
        put_vector_values(results, set_name, features, names, s.reader.read(blobs, at, features, entities))
    return {"at": at, "results": results}


async def serve(registry: Registry, broker: list[str], app_id: str, bind: str, port: int, *,
                token: str | None = None, client_config: Mapping | None = None) -> None:  # fmt: skip
    """Follow the changelogs and serve HTTP on ``bind:port`` until SIGTERM/SIGINT (or the follower fails)."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    sets = replica_sets(registry, app_id)
    follower = ChangelogFollower(sets, broker, client_config)
    status = WorkerStatus("replica", app_id, list(broker), f"http://{bind}:{port}", f"{bind}:{port}", 0.0)
    runner = web.AppRunner(build_web_app(registry, sets, follower, token, status), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, bind, port, reuse_address=True).start()
    log.warning("replica: serving http://%s:%d for %d feature set(s) of app %r", bind, port, len(sets), app_id)
    following = asyncio.ensure_future(follower.run())
    probing = asyncio.ensure_future(_probe_broker(status))
    try:
        await asyncio.wait([following, stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (following, probing):
            task.cancel()
        await asyncio.gather(following, probing, return_exceptions=True)
        await runner.cleanup()
    if following.done() and not following.cancelled() and following.exception() is not None:
        raise following.exception()
