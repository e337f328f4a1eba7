"""Audit a tile table's changelog for records that move an entity's state backwards.

Every legitimate sequence of one entity's state records only moves its applied offsets forward. This tool
reads a changelog from the beginning and lists the records that do not:

* **backwards**: offsets all at or below the previous record's of the same key (and some below): written
  late by an owner that had already lost the partition; recovery skips them (``stream.recovery_guard``);
* **stale base**: some slot ahead and some behind: a state computed from an older state than the latest
  one, which loses the events only the latest one held (a lost update);
* **unreadable**: a record whose applied offsets cannot be read (an audit that reads nothing proves nothing).

    .venv/bin/python -m tests.e2e.changelog_audit --broker 127.0.0.1:9092 --topic <app>-<set>-tiles-<fp>-changelog
"""

from __future__ import annotations

import argparse
import json
import struct
import sys

from aggregations.bookkeeping import CHECKPOINT_KEY, OFFSETS_META, moves_back
from aggregations.codec import MAGIC, MAGIC_FS2, _read_meta

_U32 = struct.Struct("<I")


def applied_offsets(blob: bytes) -> dict | None:
    """The applied offsets of a state blob, whatever its definition (FS3: binary header then meta; FS2: JSON
    meta); None if it cannot be read."""
    if not blob or len(blob) < 7:
        return None
    try:
        if blob[:3] == MAGIC:
            meta, _ = _read_meta(blob, 11)
            return meta.get(OFFSETS_META) or {}
        if blob[:3] == MAGIC_FS2:
            (n,) = _U32.unpack_from(blob, 3)
            return json.loads(blob[7 : 7 + n]).get(OFFSETS_META) or {}
    except (ValueError, struct.error, IndexError):
        return None
    return None


def stale_base(previous: dict, incoming: dict) -> bool:
    """Some slot ahead of the key's previous record and some behind it: computed from an older state."""
    ahead = any(offset > previous.get(slot, -1) for slot, offset in incoming.items())
    behind = any(offset > incoming.get(slot, -1) for slot, offset in previous.items())
    return ahead and behind


def audit(broker: str, topic: str) -> dict:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, fetch_max_bytes=64 << 20)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    last: dict[tuple[int, bytes], dict] = {}
    records, backwards, stale, unreadable = 0, [], [], 0
    while any(consumer.position(tp) < end[tp] for tp in tps):
        for tp, batch in consumer.poll(timeout_ms=1000, max_records=20_000).items():
            for r in batch:
                if r.key == CHECKPOINT_KEY or r.value is None:
                    continue
                records += 1
                offsets = applied_offsets(r.value)
                if offsets is None:
                    unreadable += 1
                    continue
                where = (tp.partition, r.key)
                previous = last.get(where)
                found = {"partition": tp.partition, "offset": r.offset, "key": r.key.decode("utf-8", "replace"),
                         "before": previous, "record": offsets}  # fmt: skip
                if previous is not None and moves_back(previous, offsets):
                    backwards.append(found)
                    continue  # what a forward-only recovery keeps
                if previous is not None and stale_base(previous, offsets):
                    stale.append(found)
                last[where] = offsets
    consumer.close()
    return {"topic": topic, "records": records, "keys": len(last), "backwards": backwards, "stale_base": stale,
            "unreadable": unreadable}  # fmt: skip


def audit_app(broker: str, app_id: str) -> list[dict]:
    """``audit`` of every tile changelog of the app ``app_id``."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=broker, client_id="featurestream-audit")
    try:
        topics = sorted(t for t in admin.list_topics() if t.startswith(f"{app_id}-") and t.endswith("-changelog"))
    finally:
        admin.close()
    return [audit(broker, t) for t in topics]


def summary(reports: list[dict], examples: int = 5) -> list:
    """What a failing test shows of the audits: counts per changelog, then the first offending records."""
    out: list = []
    for r in reports:
        out.append((r["topic"], f"{r['records']} records", f"{len(r['backwards'])} backwards",
                    f"{len(r['stale_base'])} stale base", f"{r['unreadable']} unreadable"))  # fmt: skip
        for b in (r["stale_base"] + r["backwards"])[:examples]:
            out.append((b["partition"], b["offset"], b["key"], b["record"], "after", b["before"]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", required=True)
    p.add_argument("--topic", required=True)
    args = p.parse_args(argv)
    report = audit(args.broker, args.topic)
    print(f"{report['topic']}: {report['records']} state records of {report['keys']} keys; "
          f"{len(report['backwards'])} move an entity's state backwards, {len(report['stale_base'])} computed from "
          f"an older state, {report['unreadable']} unreadable")  # fmt: skip
    for b in (report["backwards"] + report["stale_base"])[:20]:
        print(f"  partition {b['partition']} offset {b['offset']} key {b['key']!r}: {b['record']} after {b['before']}")
    return 1 if report["backwards"] or report["stale_base"] or report["unreadable"] else 0


if __name__ == "__main__":
    sys.exit(main())
