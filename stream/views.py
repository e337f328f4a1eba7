"""HTTP views of a worker (Faust web): features of one entity, feature vectors, health, metrics.

* ``GET /features/{feature_set}/{entity}[?features=a,b]`` -> ``{"entity", "at", "features"}`` at
  t = now (ms), per the window contract; an entity without state reads as empty windows. Each set
  has its own route; a key whose partition is active here is read from that partition's store
  (``LocalState``), any other is forwarded to the worker that owns the partition in the group's assignment
  (503 with the reason while no owner is known, or while a rebalance and its table recovery are under way
  here); a catch-all route answers 404 for unknown sets. Query
  parameters named like on-read inputs (e.g. ``amount``) feed on-read features. Reads that arrive together
  are computed together (``read_batch``).
* ``POST /vectors/{vector}`` with ``{"entities": [{...}, ...]}`` (at most 1000) -> one result per
  entity with the vector's features, on-read ones included. Keys owned here are read locally in
  one batch; keys owned elsewhere are fetched one by one from their owner's GET view.
* ``GET /health`` -> 200 once table recovery has finished, else 503 (also while the broker is unreachable).
* ``GET /metrics`` -> Prometheus text exposition.
* ``GET /sample/{name}`` -> the last rows served for a vector or set (``served_sample``; drift monitoring).

The views run on Faust's web server thread (``web_in_thread``), beside the ingest loop: they read state through
the table's ``StateCache`` (thread-safe) and never open a partition's database, which Faust opens and drops on
its own loop during a rebalance.

Bearer-token access control and request limits: ``stream.auth`` (a middleware; forwarded calls carry the token).

The table key is the entity key's UTF-8 bytes (composite keys: parts joined by U+001F).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from faust.types import TP
from yarl import URL

from aggregations.definitions import Registry

from . import auth
from .http_metrics import install_http_metrics
from .metrics import WorkerMetrics
from .partitioning import entity_partition
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
from .served_sample import ServedSample, register_sample_view
from .state_cache import PartitionNotOpen, StateCache
from .strict_view import StrictJSONView as View


@dataclass
class ServingContext:
    """What the views need: definitions, each set's table and reader, metrics."""

    registry: Registry
    tables: dict[str, Any]
    readers: dict[str, FeatureReader]
    metrics: WorkerMetrics
    worker_id: str = ""
    extra: dict = field(default_factory=dict)


def now_ms() -> int:
    return int(time.time() * 1000)


def is_ready(app) -> bool:
    """True once the worker has an assignment settled and its tables recovered from their changelogs."""
    recovery = app.tables.recovery
    return recovery.completed.is_set() and not recovery.in_recovery and not app.rebalancing


def register_views(app, ctx: ServingContext) -> None:
    """Add the featurestream routes to a Faust app (per-set routes before the catch-all)."""
    install_http_metrics(app, ctx.metrics)
    _close_http_session(app)
    register_sample_view(app, ctx.registry, ctx.extra.setdefault("served_sample", ServedSample()), ctx.worker_id)
    for name in ctx.registry.feature_sets:
        _register_feature_set_view(app, ctx, name)

    @app.page("/features/{feature_set}/{entity}", name="featurestream-unknown-set")
    class UnknownFeatureSet(View):
        async def get(self, request, feature_set: str, entity: str):
            known = ", ".join(sorted(ctx.registry.feature_sets)) or "none"
            return self.json({"error": f"unknown feature set {feature_set!r}; known: {known}"}, status=404)

    @app.page("/vectors/{vector}", name="featurestream-vectors")
    class Vectors(View):
        async def post(self, request, vector: str):
            try:
                return self.json(await _vector_response(app, ctx, self, request, vector))
            except BadRequest as exc:
                return self.json({"error": str(exc)}, status=400)
            except auth.RequestTooLarge as exc:
                return self.json({"error": str(exc)}, status=413)
            except NotFound as exc:
                return self.json({"error": str(exc)}, status=404)
            except _Unavailable as exc:
                return self.json({"error": str(exc)}, status=503)

    @app.page("/health", name="featurestream-health")
    class Health(View):
        async def get(self, request):
            status = ctx.extra.get("status")
            if status is not None:  # readiness and broker reachability (stream.status)
                code, body = status.health(is_ready(app))
                return self.json(body, status=code)
            if is_ready(app):
                return self.json({"status": "ok", "worker": ctx.worker_id})
            return self.json({"status": "recovering", "worker": ctx.worker_id}, status=503)

    @app.page("/metrics", name="featurestream-metrics")
    class Metrics(View):
        async def get(self, request):
            ctx.metrics.refresh(app, ctx.extra.get("topics", {}), ready=is_ready(app))
            return self.bytes(ctx.metrics.render(), headers={"Content-Type": ctx.metrics.content_type})


#: Marks a request one worker forwarded to another: the owner answers it itself, never forwards it again.
FORWARDED_HEADER = "X-Featurestream-Forwarded"


class LocalState:
    """One table's state of the keys this worker owns, read straight from the key's partition store, and the
    owner of any other key.

    A key's partition is its home partition (``aggregations.bookkeeping``), the one Faust's router hashes
    it to. ``get`` answers ``(True, blob)`` when that partition is active here and the worker is ready
    (``is_ready``, what ``/health`` answers 200 on), ``(False, None)`` when it is not (another worker owns it,
    or a rebalance and its table recovery are under way: reads wait for them, as Kafka Streams' interactive
    queries do). ``owner`` names the worker that owns the partition in the group's current assignment. Both
    compute the partition here: Faust's router asks the producer's partitioner, which fails while the producer
    has no metadata of the table's topic (a worker that has produced nothing yet may not), and may probe every
    partition's store.
    """

    def __init__(self, app, table, partitions: int | None):
        self.app = app
        self.table = table
        self.partitions = partitions or table.partitions
        self.topic = table.changelog_topic.get_topic_name()
        self.cache = StateCache.of(table)
        self._tps: dict[int, Any] = {}

    def partition(self, key: bytes) -> int:
        return entity_partition(key, self.partitions)

    def get(self, key: bytes) -> tuple[bool, bytes | None]:
        partition = self.partition(key)
        tp = self._tps.get(partition)
        if tp is None:
            tp = self._tps[partition] = TP(self.topic, partition)
        if not self.app.assignor.is_active(tp) or not is_ready(self.app):
            return False, None  # Faust makes a partition active before its recovery ends: wait for ready
        try:  # on the web server's thread: never open a database (Faust does, on its loop)
            return True, self.cache.get(partition, key, open_db=False)
        except PartitionNotOpen:  # active, but its database is being opened or dropped: a rebalance
            return False, None

    def owner(self, key: bytes) -> URL | None:
        """The URL of the worker that owns the key's partition (None while the assignment does not say)."""
        partition = self.partition(key)
        for url, topics in self.app.assignor.changelog_distribution.items():
            if partition in topics.get(self.topic, ()):
                return URL(str(url))
        return None

    def is_me(self, url: URL) -> bool:
        me = URL(str(self.app.conf.canonical_url))
        return (url.host, url.port) == (me.host, me.port)


async def _forward(app, view: View, request, owner: URL):
    """``request`` answered by ``owner`` (its status and body passed on); 503 if the owner cannot be reached."""
    url = request.url.with_host(owner.host).with_port(owner.port)
    headers = {**request.headers, FORWARDED_HEADER: "1"}
    try:
        async with http_session(app).request(method=request.method, headers=headers, url=url) as response:
            return view.text(await response.text(), content_type=response.content_type, status=response.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return view.json({"error": f"the owner of this key ({owner}) did not answer: {exc!r}; retry"}, status=503)


_SESSION_ATTR = "_featurestream_http_session"


def http_session(app) -> aiohttp.ClientSession:
    """The HTTP client of the views, made on first use in the loop that serves them (the web thread's;
    Faust's ``app.http_client`` belongs to the main loop) and closed when the web server stops."""
    session = getattr(app, _SESSION_ATTR, None)
    if session is None or session.closed:
        session = aiohttp.ClientSession()
        setattr(app, _SESSION_ATTR, session)
    return session


def _close_http_session(app) -> None:
    """Close the views' HTTP client when the web server stops (aiohttp's cleanup, in the serving loop)."""

    async def close(_web_app) -> None:
        session = getattr(app, _SESSION_ATTR, None)
        if session is not None:
            await session.close()

    app.web.web_app.on_cleanup.append(close)


def _register_feature_set_view(app, ctx: ServingContext, set_name: str) -> None:
    table = ctx.tables[set_name]
    reader = ctx.readers[set_name]
    fs = ctx.registry.feature_sets[set_name]
    topics = ctx.extra.get("topics", {}).get(set_name)
    local = ctx.extra.setdefault("local_state", {})[set_name] = LocalState(
        app, table, topics.partitions if topics is not None else None
    )
    sample = ctx.extra["served_sample"]
    batcher = ReadBatcher(reader, now_ms)

    class FeaturesOfEntity(View):
        async def get(self, request, entity: str):
            try:
                features = reader.check_features(parse_feature_list(request.query.get("features")))
                req = request_columns(fs, request.query)
            except BadRequest as exc:
                return self.json({"error": str(exc)}, status=400)
            key = entity.encode("utf-8", "surrogatepass")
            here, blob = local.get(key)
            if not here:  # owned elsewhere (forwarded there), or the assignment is not settled here yet
                owner = local.owner(key)
                if owner is None:
                    return self.json({"error": NO_OWNER}, status=503)
                if local.is_me(owner):  # assigned here, not active (recovering) yet
                    return self.json({"error": NOT_HERE}, status=503)
                if request.headers.get(FORWARDED_HEADER):
                    return self.json({"error": f"{NOT_HERE} (forwarded here, owner {owner})"}, status=503)
                return await _forward(app, self, request, owner)
            at, values = await batcher.read(blob, features, req)
            sample.record("feature_set", set_name, [values])
            return self.json({"entity": entity, "at": at, "features": values})

    FeaturesOfEntity.__name__ = f"FeaturesOf_{set_name}"
    app.page(f"/features/{set_name}/{{entity}}", name=f"featurestream-features-{set_name}")(FeaturesOfEntity)


class _Unavailable(RuntimeError):
    pass


NO_OWNER = "no worker owns this key's partition in the group's assignment yet (a rebalance is under way); retry"
NOT_HERE = "this key's partition is not served here yet (a rebalance or its recovery is under way); retry"


async def _vector_response(app, ctx: ServingContext, view: View, request, vector_name: str) -> dict:
    entities = parse_vector_request(await auth.read_body(request))
    resolved, names = resolve_vector(ctx.registry, vector_name, entities)
    at = now_ms()
    results: list[dict] = [{"entity": e, "features": {}} for e in entities]
    for set_name, features in resolved.items():
        fs = ctx.registry.feature_sets[set_name]
        keys = vector_entity_keys(fs, entities)
        state = ctx.extra["local_state"][set_name]
        owners: list[URL | None] = []  # None: read here
        blobs = []
        for k in keys:
            key = k.encode("utf-8", "surrogatepass")
            here, blob = state.get(key)
            owner = None
            if not here:
                owner = state.owner(key)
                if owner is None:
                    raise _Unavailable(f"{fs.name}/{k}: {NO_OWNER}")
                if state.is_me(owner) or request.headers.get(FORWARDED_HEADER):  # here but recovering: retry
                    raise _Unavailable(f"{fs.name}/{k}: {NOT_HERE}")
            owners.append(owner)
            blobs.append(blob)
        values = ctx.readers[set_name].read(blobs, at, features, entities)
        remote = [i for i, owner in enumerate(owners) if owner is not None]
        if remote:  # keys other workers own: asked concurrently, one GET each
            answers = await asyncio.gather(
                *(_remote_features(app, owners[i], fs, keys[i], features, entities[i]) for i in remote)
            )
            for i, answer in zip(remote, answers, strict=True):
                values[i] = answer
        put_vector_values(results, set_name, features, names, values)
    ctx.extra["served_sample"].record("vector", vector_name, [r["features"] for r in results])
    return {"at": at, "results": results}


async def _remote_features(app, owner: URL, fs, key: str, features: list[str], entity: dict) -> dict:
    """One entity's features from the worker that owns its partition (via its GET view)."""
    inputs = {c: entity[c] for o in fs.on_read for c in o.inputs if c in entity and entity[c] is not None}
    url = owner.with_path(f"/features/{fs.name}/{quote(key, safe='')}", encoded=True).with_query(
        {"features": ",".join(features), **{k: str(v) for k, v in inputs.items()}}
    )
    headers = {**auth.outgoing_headers(app), FORWARDED_HEADER: "1"}
    try:
        async with http_session(app).get(url, headers=headers) as response:
            if response.status != 200:
                raise _Unavailable(f"owner {owner} of {fs.name}/{key} answered HTTP {response.status}")
            body = await response.json()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _Unavailable(f"owner {owner} of {fs.name}/{key} did not answer: {exc!r}") from None
    return body["features"]
