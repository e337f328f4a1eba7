"""Kafka load for the online benchmark, each run as its own process (so it competes for the cores like any
client, and never for this process's GIL):

* ``consume``: the ingest ceiling. A bare aiokafka consumer reads every partition of a pre-filled topic
  from the beginning with ``getmany`` and, with ``--decode json|orjson``, parses each value; nothing else.
  The rate counts from its first fetch on (like the worker's), so connecting is excluded.
* ``produce``: steady traffic. ``--rate`` events/s for ``--seconds`` s of sample payments (event time =
  now) of users from ``--users-file``, each in its user's home partition, sent as record batches every
  10 ms (aiokafka ``create_batch``/``send_batch``, so the producer costs little CPU).

    python benchmarks/kafkaload.py consume --broker B --topic T --events N [--decode orjson]
    python benchmarks/kafkaload.py produce --broker B --topic T --rate 20000 --seconds 15 --users-file F

Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


async def consume(broker: str, topic: str, events: int, decode: str) -> dict:
    import orjson
    from aiokafka import AIOKafkaConsumer

    parse = {"json": json.loads, "orjson": orjson.loads}.get(decode)
    # No group: the consumer is given every partition of the topic and starts at the earliest offset.
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        count = first = 0
        started = None
        while count < events:
            batch = await consumer.getmany(timeout_ms=1000)
            if started is None and batch:
                started = time.perf_counter()
                first = sum(len(m) for m in batch.values())
            for messages in batch.values():
                if parse is not None:
                    for m in messages:
                        parse(m.value)
                count += len(messages)
        seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
    return {"events": count - first, "seconds": seconds, "rate": (count - first) / seconds, "decode": decode}


async def produce(broker: str, topic: str, rate: float, seconds: float, users: list[str], seed: int) -> dict:
    from aiokafka import AIOKafkaProducer

    from aggregations.bookkeeping import home_partitions

    producer = AIOKafkaProducer(bootstrap_servers=broker, acks=1, linger_ms=0, max_batch_size=1 << 20)
    await producer.start()
    try:
        partitions = len(await producer.partitions_for(topic))
        rng = random.Random(seed)
        encoded = [u.encode() for u in users]
        home = home_partitions(encoded, partitions).tolist()
        tick = 0.01
        sent = 0
        started = time.perf_counter()
        pending = []
        while True:
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
            due = int(min(elapsed + tick, seconds) * rate) - sent
            if due > 0:
                now_ms = int(time.time() * 1000)
                batches = {}
                for _ in range(due):
                    i = rng.randrange(len(users))
                    value = b'{"user_id":"%s","ts":%d,"amount":%.2f}' % (encoded[i], now_ms, rng.lognormvariate(3.5, 1.0))
                    batch = batches.get(home[i])
                    if batch is None:
                        batch = batches[home[i]] = producer.create_batch()
                    if batch.append(key=encoded[i], value=value, timestamp=None) is None:
                        pending.append(await producer.send_batch(batch, topic, partition=home[i]))
                        batch = batches[home[i]] = producer.create_batch()
                        batch.append(key=encoded[i], value=value, timestamp=None)
                for partition, batch in batches.items():
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                sent += due
            await asyncio.sleep(max(0.0, started + (sent / rate) - time.perf_counter()))
        await asyncio.gather(*pending)
        took = time.perf_counter() - started
    finally:
        await producer.stop()
    return {"events": sent, "seconds": took, "rate": sent / took}


async def prefill(broker: str, topic: str, users: list[str], ts: list[int], amounts: list[float]) -> float:
    """Produce the events (in order) to their users' home partitions as record batches; seconds taken."""
    from aiokafka import AIOKafkaProducer

    from aggregations.bookkeeping import home_partitions

    producer = AIOKafkaProducer(bootstrap_servers=broker, acks=1, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        partitions = len(await producer.partitions_for(topic))
        encoded = [u.encode() for u in users]
        home = home_partitions(encoded, partitions).tolist()
        started = time.perf_counter()
        batches: dict = {}
        pending = []
        for key, part, t, amount in zip(encoded, home, ts, amounts, strict=True):
            value = b'{"user_id": "%s", "ts": %d, "amount": %r}' % (key, t, amount)
            batch = batches.get(part)
            if batch is None:
                batch = batches[part] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                pending.append(await producer.send_batch(batch, topic, partition=part))
                batch = batches[part] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for part, batch in batches.items():
            pending.append(await producer.send_batch(batch, topic, partition=part))
        await asyncio.gather(*pending)
        return time.perf_counter() - started
    finally:
        await producer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("consume")
    c.add_argument("--broker", required=True)
    c.add_argument("--topic", required=True)
    c.add_argument("--events", type=int, required=True)
    c.add_argument("--decode", choices=["none", "json", "orjson"], default="none")
    p = sub.add_parser("produce")
    p.add_argument("--broker", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--users-file", type=Path, required=True)
    p.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    if args.command == "consume":
        out = asyncio.run(consume(args.broker, args.topic, args.events, args.decode))
    else:
        users = [u for u in args.users_file.read_text().splitlines() if u]
        out = asyncio.run(produce(args.broker, args.topic, args.rate, args.seconds, users, args.seed))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
