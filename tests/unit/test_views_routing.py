"""A worker answers for a key another worker owns by forwarding the request to that owner, found from the group's
assignment and the key's home partition. It needs no producer metadata of the table's topic: a worker that has
produced nothing yet may have none, and Faust's router (which asks the producer's partitioner) then failed with
``TypeError: 'NoneType' object is not iterable`` right after /health turned 200, answered as a 500.

Real HTTP on both sides (the worker's Faust aiohttp application and an owner standing in for another worker); the
worker app is built, not started, so no broker is needed.
"""

from __future__ import annotations

import asyncio

import aiokafka
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from stream.app import create_app
from stream.topics import SetTopics
from stream.views import FORWARDED_HEADER
from tests.unit.test_stream_reading import REGISTRY


def _owner_app(seen: list) -> web.Application:
    async def features(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get(FORWARDED_HEADER)))
        wanted = (request.query.get("features") or "amount_count_1h").split(",")
        return web.json_response({"entity": request.match_info["entity"], "features": dict.fromkeys(wanted, 7),
                                  "served_by": "owner"})  # fmt: skip

    owner = web.Application()
    owner.router.add_get("/features/transactions/{entity}", features)
    return owner


async def _scenario(tmp_path) -> None:
    seen: list = []
    topics = {"transactions": SetTopics("transactions", "transactions.dlq", "transactions.late", 6)}
    app = create_app(REGISTRY, "127.0.0.1:1", tmp_path / "state", 6099, topics=topics, worker_id="w1")
    changelog = app.featurestream.tables["transactions"].changelog_topic.get_topic_name()
    # The producer as a worker has it before it produced anything: no metadata of the table's topic.
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    assert producer.client.cluster.partitions_for_topic(changelog) is None
    app.producer._producer = producer
    async with TestServer(_owner_app(seen), host="127.0.0.1") as owner, TestClient(
        TestServer(app.web.web_app, host="127.0.0.1")
    ) as client:
        app.assignor.changelog_distribution = {f"http://127.0.0.1:{owner.port}": {changelog: list(range(6))}}

        response = await client.get("/features/transactions/u1")
        body = await response.json()
        assert response.status == 200, body
        assert body["served_by"] == "owner" and seen[-1] == ("/features/transactions/u1", "1")

        response = await client.post("/vectors/fraud", json={"entities": [{"user_id": "u1"}, {"user_id": "u2"}]})
        body = await response.json()
        assert response.status == 200, body
        assert [set(r["features"].values()) for r in body["results"]] == [{7}, {7}]

        # A request another worker forwarded here is not forwarded again (no ping-pong on a stale assignment).
        response = await client.get("/features/transactions/u1", headers={FORWARDED_HEADER: "1"})
        assert response.status == 503 and "not served here" in (await response.json())["error"]

        # No owner in the assignment (a rebalance under way): 503 with the reason, never a 500.
        app.assignor.changelog_distribution = {}
        for call in (client.get("/features/transactions/u1"),
                     client.post("/vectors/fraud", json={"entities": [{"user_id": "u1"}]})):  # fmt: skip
            response = await call
            assert response.status == 503 and "rebalance" in (await response.json())["error"]

        # The owner cannot be reached: 503 with the reason.
        app.assignor.changelog_distribution = {"http://127.0.0.1:1": {changelog: list(range(6))}}
        response = await client.get("/features/transactions/u1")
        assert response.status == 503 and "did not answer" in (await response.json())["error"]

        # Assigned here but not active (recovering), or active with its database not open yet (Faust opens it on
        # its loop): 503 "retry", and the view never opens a database itself (it runs on the web thread).
        app.assignor.changelog_distribution = {str(app.conf.canonical_url): {changelog: list(range(6))}}
        store = app.featurestream.tables["transactions"].data
        for active in (False, True):
            app.assignor.is_active = lambda tp, active=active: active
            for call in (client.get("/features/transactions/u1"),
                         client.post("/vectors/fraud", json={"entities": [{"user_id": "u1"}]})):  # fmt: skip
                response = await call
                assert response.status == 503 and "not served here" in (await response.json())["error"]
            assert store._dbs == {}
        for partition in range(6):  # opened by the worker, but its first recovery has not completed: 503 "retry"
            store._db_for_partition(partition)
        response = await client.get("/features/transactions/u1?features=amount_count_1h")
        assert response.status == 503 and "not served here" in (await response.json())["error"]
        recovery = app.tables.recovery
        recovery.completed.set()
        recovery.in_recovery = True  # a later rebalance's recovery under way (Faust made the partition active)
        response = await client.get("/features/transactions/u1?features=amount_count_1h")
        assert response.status == 503 and "not served here" in (await response.json())["error"]
        recovery.in_recovery = False  # recovered: read here (no state yet: empty windows)
        response = await client.get("/features/transactions/u1?features=amount_count_1h")
        assert response.status == 200 and (await response.json())["features"] == {"amount_count_1h": 0}
        for db in store._dbs.values():
            db.close()
    await app.http_client.close()


def test_a_key_owned_elsewhere_is_forwarded_without_producer_metadata(tmp_path):
    asyncio.run(_scenario(tmp_path))
