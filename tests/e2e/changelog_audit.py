"""Audit a tile table's changelog for records that move an entity's state backwards.

Every legitimate sequence of one entity's state records only moves its applied offsets forward. A record
whose offsets are all at or below the previous record's of the same key (and some below) was written late
by an owner that had already lost the partition: a stale state that any later recovery or standby would
restore over the newer one. This tool reads a changelog from the beginning and lists such records.

    .venv/bin/python -m tests.e2e.changelog_audit --broker 127.0.0.1:9092 --topic <app>-<set>-tiles-<fp>-changelog
"""

from __future__ import annotations

import argparse
import json
import struct
import sys

from aggregations.bookkeeping import CHECKPOINT_KEY, moves_back

_U32 = struct.Struct("<I")


def applied_offsets(blob: bytes) -> dict | None:
    """The applied offsets of a state blob (read from its JSON meta, whatever its definition)."""
    if not blob or len(blob) < 7:
        return None
    try:
        (n,) = _U32.unpack_from(blob, 3)
        return json.loads(blob[7 : 7 + n]).get("offsets")
    except (ValueError, struct.error):
        return None


def audit(broker: str, topic: str) -> dict:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, fetch_max_bytes=64 << 20)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    last: dict[tuple[int, bytes], dict] = {}
    records, backwards = 0, []
    while any(consumer.position(tp) < end[tp] for tp in tps):
        for tp, batch in consumer.poll(timeout_ms=1000, max_records=20_000).items():
            for r in batch:
                if r.key == CHECKPOINT_KEY or r.value is None:
                    continue
                records += 1
                offsets = applied_offsets(r.value)
                where = (tp.partition, r.key)
                previous = last.get(where)
                if previous is not None and offsets is not None and moves_back(previous, offsets):
                    backwards.append({"partition": tp.partition, "offset": r.offset, "key": r.key.decode("utf-8", "replace"),
                                      "before": previous, "record": offsets})  # fmt: skip
                    continue  # what a forward-only recovery keeps
                if offsets is not None:
                    last[where] = offsets
    consumer.close()
    return {"topic": topic, "records": records, "keys": len(last), "backwards": backwards}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", required=True)
    p.add_argument("--topic", required=True)
    args = p.parse_args(argv)
    report = audit(args.broker, args.topic)
    print(f"{report['topic']}: {report['records']} state records of {report['keys']} keys; "
          f"{len(report['backwards'])} move an entity's state backwards")  # fmt: skip
    for b in report["backwards"][:20]:
        print(f"  partition {b['partition']} offset {b['offset']} key {b['key']!r}: {b['record']} after {b['before']}")
    return 1 if report["backwards"] else 0


if __name__ == "__main__":
    sys.exit(main())
