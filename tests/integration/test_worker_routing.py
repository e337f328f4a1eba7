"""Three workers in one group: any worker answers any key, forwarding it to the worker that owns its partition."""

import json
import time
import uuid

import pytest
from kafka import KafkaAdminClient

from stream.auth import TOKEN_ENV
from tests.integration.test_worker import TX, Events, Worker, assert_oracle, http, make_events, wait_caught_up

pytestmark = pytest.mark.integration

USERS = 300
EVENTS = 6_000


def test_three_workers_route_every_key_to_its_owner(kafka_bootstrap, tmp_path, monkeypatch):
    # With a bearer token on (env FEATURESTREAM_AUTH_TOKEN, inherited by the workers; ``http`` sends it):
    # a forwarded GET carries the caller's header, POST /vectors adds it to the GETs it sends to owners.
    token = f"trio-token-{uuid.uuid4().hex}"
    monkeypatch.setenv(TOKEN_ENV, token)
    run_id = uuid.uuid4().hex[:8]
    prefix, app_id = f"trio-{run_id}-", f"fs-trio-{run_id}"
    topic = f"{prefix}{TX.source}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="featurestream-tests")
    admin.create_topics({topic: {"num_partitions": 6, "replication_factor": 1}}, timeout_ms=30_000)
    admin.wait_for_topics([topic], timeout_ms=30_000)
    admin.close()
    workers = [Worker(kafka_bootstrap, tmp_path / n, prefix, app_id, tmp_path, n) for n in ("a", "b", "c")]
    users = [f"t{run_id}-{i}" for i in range(USERS)]
    events = Events(kafka_bootstrap, topic)
    try:
        for worker in workers:
            worker.launch()
        for worker in workers:
            worker.wait_healthy()
        # Right after /health turned 200, before anything was produced: a key owned by another worker is
        # forwarded to its owner, never a 500. A 503 says why (a rebalance
        # may still be settling the three-way assignment).
        for worker in workers:
            for user in users[:12]:
                status, reply = http("GET", f"{worker.url}/features/transactions/{user}")
                assert status == 200 or (status == 503 and reply.get("error")), (worker.name, user, status, reply)
        time.sleep(2.0)  # let the group settle on its three-way assignment before producing
        events.send(make_events(users, EVENTS, seed=11))
        bodies = wait_caught_up(workers[0], events, users)
        assert sum(b["features"]["amount_count_90d"] for b in bodies.values()) == sum(
            1 for r in events.rows if r["value"] is not None
        )
        for user in users[:30]:
            assert_oracle(events, bodies[user], user)
        # Every worker gives the same answer for every key: two of the three route each request.
        for user in users[:60]:
            answers = [w.features(user, "?features=amount_count_90d,amount_sum_90d")["features"] for w in workers]
            assert answers[0] == answers[1] == answers[2], user
        # A batch read from one worker covers keys owned by all three.
        body = json.dumps({"entities": [{"user_id": u} for u in users[:30]]}).encode()
        status, reply = http("POST", f"{workers[2].url}/vectors/fraud", body)
        assert status == 200, reply
        # (The 90-day window only moves at midnight UTC, so the values cannot drift between the two reads.)
        got = [r["features"]["amount_avg_90d"] for r in reply["results"]]
        expected = [bodies[u]["features"]["amount_avg_90d"] for u in users[:30]]
        assert got == pytest.approx(expected, rel=1e-12)
        # Without the token (or with a wrong one) only /health and /metrics answer.
        for wrong in ("", "not-" + token):
            status, reply = http("GET", f"{workers[1].url}/features/transactions/{users[0]}", token=wrong)
            assert status == 401 and "bearer token" in reply["error"], reply
            assert http("POST", f"{workers[1].url}/vectors/fraud", body, token=wrong)[0] == 401
            assert http("GET", f"{workers[1].url}/sample/fraud", token=wrong)[0] == 401
        assert http("GET", f"{workers[1].url}/health", token="")[0] == 200
        assert http("GET", f"{workers[1].url}/metrics", token="")[0] == 200
    finally:
        for worker in workers:
            worker.stop()
        events.producer.close()
