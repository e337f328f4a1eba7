"""What ``verify`` asks Kafka (kafka-python): a topic's partitions and end offsets, consumer groups'
committed offsets, the records of offset ranges, and the offsets at a time."""

from __future__ import annotations

import time


class Offsets:
    """End offsets of a topic and committed offsets of consumer groups (kafka-python)."""

    def __init__(self, broker: str, kafka_config: dict | None = None):
        from kafka import KafkaAdminClient, KafkaConsumer

        from aggregations.retry import Retrying, retrying

        self.broker = broker
        where = f"connecting to Kafka at {broker}"
        config = dict(kafka_config or {})
        self.admin = Retrying(
            retrying(lambda: KafkaAdminClient(bootstrap_servers=broker, client_id="featurestream-verify", **config), where)
        )
        self.consumer = Retrying(
            retrying(
                lambda: KafkaConsumer(
                    bootstrap_servers=broker, client_id="featurestream-verify", enable_auto_commit=False, group_id=None,
                    **config,
                ),
                where,
            )
        )  # fmt: skip

    def close(self) -> None:
        self.consumer.close()
        self.admin.close()

    def partitions(self, topic: str) -> list:
        from kafka import TopicPartition

        deadline = time.monotonic() + 30
        while True:
            parts = self.consumer.partitions_for_topic(topic)
            if parts:
                return [TopicPartition(topic, p) for p in sorted(parts)]
            if time.monotonic() > deadline:
                raise ValueError(f"topic {topic!r} not found on {self.broker}")
            self.consumer.topics()  # refresh metadata
            time.sleep(0.5)

    def begin(self, tps) -> dict:
        """The first offset each partition still holds (retention and record deletion move it)."""
        return {tp: int(o) for tp, o in self.consumer.beginning_offsets(list(tps)).items()}

    def end(self, tps) -> dict:
        return {tp: int(o) for tp, o in self.consumer.end_offsets(list(tps)).items()}

    def committed(self, group: str, tps) -> dict:
        got = self.admin.list_group_offsets({group: None}).get(group, {})
        out = {}
        for tp in tps:
            meta = got.get(tp)
            out[tp] = (
                int(meta.offset) if meta is not None and meta.offset is not None and meta.offset >= 0 else 0
            )
        return out

    def records(self, tps, start: dict, stop: dict, timeout_s: float = 60.0):
        """(partition, offset, key bytes, value bytes) of each record in ``[start[tp], stop[tp])``."""
        todo = [tp for tp in tps if stop.get(tp, 0) > start.get(tp, 0)]
        if not todo:
            return
        self.consumer.assign(todo)
        for tp in todo:
            self.consumer.seek(tp, start[tp])
        done: set = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(todo):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading records of {todo[0].topic} timed out after {timeout_s:g}s")
            for tp, batch in self.consumer.poll(timeout_ms=500, max_records=5000).items():
                for r in batch:
                    if r.offset < stop[tp]:
                        yield tp.partition, r.offset, r.key, r.value
                if self.consumer.position(tp) >= stop[tp]:
                    done.add(tp)
                    self.consumer.pause(tp)
            for tp in todo:  # compacted gaps, transaction markers: the position may pass stop without records
                if tp not in done and self.consumer.position(tp) >= stop[tp]:
                    done.add(tp)
        self.consumer.resume(*todo)
        self.consumer.unsubscribe()

    def start_at_time(self, tps, ms: int, end: dict) -> dict:
        found = self.consumer.offsets_for_times({tp: max(0, int(ms)) for tp in tps})
        return {tp: (int(found[tp].offset) if found.get(tp) is not None else end[tp]) for tp in tps}
