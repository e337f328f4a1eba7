"""``featurestream produce``: write sample events to a feature set's source topic, keyed by entity."""

from __future__ import annotations

import json
import sys

from kafka import KafkaProducer

from aggregations.loading import load_registry

from .samples import sample_events


def add_command(subparsers, shared) -> None:
    p = subparsers.add_parser(
        "produce",
        help="write deterministic sample events to Kafka",
        description="Write N deterministic sample events of the example schema to the feature set's topic.",
        epilog="example: featurestream produce --count 10000 --users 500",
    )
    shared(p, "definitions", "broker", "topic_prefix", "kafka")
    p.add_argument(
        "--feature-set", default="transactions", help="feature set whose source topic gets the events"
    )
    p.add_argument("--count", type=int, default=1000, help="number of events (default 1000)")
    p.add_argument("--users", type=int, default=100, help="number of distinct users (default 100)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument(
        "--span", type=int, default=3_600_000, help="events spread over the last SPAN ms (default 1h)"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    fs = load_registry(args.definitions).feature_set(args.feature_set)
    events = sample_events(args.count, users=args.users, seed=args.seed, span_ms=args.span)
    key = fs.entity_names[0]
    security = args.kafka.client_config() if getattr(args, "kafka", None) else {}
    producer = KafkaProducer(bootstrap_servers=args.broker.split(","), linger_ms=20, acks="all", **security)
    topic = f"{args.topic_prefix}{fs.source}"
    for row in events.to_dict("records"):
        payload = {"user_id": row["user_id"], "ts": int(row["ts"]), "amount": float(row["amount"])}
        producer.send(topic, key=str(row[key]).encode(), value=json.dumps(payload).encode())
    producer.flush(timeout=60)
    producer.close()
    print(
        f"produced {len(events)} events for {events[key].nunique()} users to topic {topic!r}",
        file=sys.stderr,
    )
    return 0
