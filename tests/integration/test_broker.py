"""The local broker works with both Kafka client libraries the project uses.

kafka-python (admin, simple producers) writes; aiokafka (under Faust) reads, and the other way round.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaConsumer, KafkaProducer

pytestmark = pytest.mark.integration

N_MESSAGES = 100
N_KEYS = 10
PARTITIONS = 4
TIMEOUT_S = 30.0


def expected_messages() -> list[tuple[bytes, bytes]]:
    return [(f"key-{i % N_KEYS}".encode(), f"value-{i:03d}".encode()) for i in range(N_MESSAGES)]


async def consume_with_aiokafka(bootstrap: str, topic: str, n: int) -> list[tuple[int, int, bytes, bytes]]:
    """(partition, offset, key, value) of the first n records of topic, read from the beginning."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[tuple[int, int, bytes, bytes]] = []
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while len(records) < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, batch in batches.items():
                records.extend((tp.partition, r.offset, r.key, r.value) for r in batch)
    finally:
        await consumer.stop()
    return records


def test_kafka_python_produces_aiokafka_consumes(kafka_bootstrap: str, new_topic) -> None:
    topic = new_topic(partitions=PARTITIONS)
    messages = expected_messages()

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in messages]
        producer.flush(timeout=TIMEOUT_S)
        produced = [f.get(timeout=TIMEOUT_S) for f in futures]
    finally:
        producer.close()
    partition_of_value = {v: md.partition for (_, v), md in zip(messages, produced, strict=True)}

    records = asyncio.run(consume_with_aiokafka(kafka_bootstrap, topic, N_MESSAGES))

    assert len(records) == N_MESSAGES
    assert sorted((k, v) for _, _, k, v in records) == sorted(messages)
    # Both clients agree on where each record went, one key always lands in one partition, the
    # default partitioner spread the keys, and each key's records come back in the order they were sent.
    assert {v: p for p, _, _, v in records} == partition_of_value
    partitions_of_key: dict[bytes, set[int]] = {}
    for p, _, k, _ in records:
        partitions_of_key.setdefault(k, set()).add(p)
    assert all(len(ps) == 1 for ps in partitions_of_key.values())
    assert len({p for p, _, _, _ in records}) > 1
    for key in partitions_of_key:
        got = [v for _, _, k, v in sorted(records, key=lambda r: (r[0], r[1])) if k == key]
        assert got == [v for k, v in messages if k == key]


def test_aiokafka_produces_kafka_python_consumes(kafka_bootstrap: str, new_topic) -> None:
    topic = new_topic(partitions=PARTITIONS)
    messages = expected_messages()

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for k, v in messages:
                await producer.send(topic, key=k, value=v)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(produce())

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(TIMEOUT_S * 1000),
    )
    try:
        got: list[tuple[bytes, bytes]] = []
        for record in consumer:
            got.append((record.key, record.value))
            if len(got) == N_MESSAGES:
                break
    finally:
        consumer.close()
    assert sorted(got) == sorted(messages)


def test_transactions_and_consumer_group_offsets(kafka_bootstrap: str, new_topic) -> None:
    """What Faust leans on: a transactional producer, a read_committed group consumer, committed offsets."""
    from kafka import KafkaAdminClient

    topic = new_topic(partitions=PARTITIONS)
    group = f"group-{topic}"
    messages = expected_messages()[:20]

    async def run() -> list[tuple[bytes, bytes]]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{topic}")
        await producer.start()
        try:
            async with producer.transaction():
                for k, v in messages:
                    await producer.send(topic, key=k, value=v)
            # An aborted transaction must stay invisible to read_committed consumers.
            await producer.begin_transaction()
            await producer.send_and_wait(topic, key=b"aborted", value=b"aborted")
            await producer.abort_transaction()
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        got: list[tuple[bytes, bytes]] = []
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while len(got) < len(messages) and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend((r.key, r.value) for r in batch)
            # Anything past the committed records would be the aborted one.
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                got.extend((r.key, r.value) for r in batch)
            await consumer.commit()
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(run())
    assert sorted(got) == sorted(messages)

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        committed = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    assert {tp.partition for tp in committed} <= set(range(PARTITIONS))
    # Committed positions sit past every data record and transaction marker the consumer skipped over.
    assert sum(om.offset for om in committed.values()) >= len(messages)
