"""Bad input and awkward times: poison records go to ``<topic>.dlq`` (or ``<topic>.late``) with their reason
and original bytes and affect nothing else; out-of-order and late events around tile boundaries give the
oracle's values online and offline."""

from __future__ import annotations

import json
import random
import time

import pytest

from aggregations.kernel import late_cutoff
from stream.envelope import open_envelope

from .harness import (
    DAY_MS,
    HOUR_MS,
    LONG,
    TX,
    Producer,
    Sent,
    Sink,
    Worker,
    compare_offline,
    compare_online,
    create_topic,
    event,
    now_ms,
    random_events,
    read_topic,
    unique_names,
    wait_for,
    wait_stored,
)

pytestmark = pytest.mark.e2e

MIB = 1 << 20
BIG_TOPIC = {"max.message.bytes": str(8 * MIB)}


def raw(user: str, payload: bytes, reason: str | None) -> Sent:
    """A record that is not a valid event (reason: a substring of the expected DLQ reason)."""
    e = Sent(user, 0, None, payload, valid=False)
    e.reason = reason  # type: ignore[attr-defined]
    return e


def poison(now: int) -> list[Sent]:
    def obj(**fields) -> bytes:
        return json.dumps(fields).encode()

    return [
        raw("p1", b"not json at all", "not valid JSON"),
        raw("p1", b"", "not valid JSON"),
        raw("p1", b"\xff\xfe\x00garbage", "not valid UTF-8"),
        raw("p1", b"[1, 2, 3]", "must be a JSON object"),
        raw("p1", b'"just a string"', "must be a JSON object"),
        raw("p1", obj(user_id="p1", ts=now - 5, amount="12.5"), "amount must be a number"),
        raw("p1", obj(user_id=12, ts=now - 5, amount=1.0), "user_id must be a string"),
        raw("p1", obj(user_id="p1", ts=True, amount=1.0), "timestamp must be"),
        raw("p1", obj(user_id="p1", ts="yesterday", amount=1.0), "not ISO-8601"),
        raw("p1", obj(user_id="p1", ts=now - 5.5, amount=1.0), "whole epoch milliseconds"),
        raw("p1", obj(ts=now - 5, amount=1.0), "missing entity key"),
        raw("p1", obj(user_id="p1", amount=1.0), "missing timestamp"),
        raw("", obj(user_id="", ts=now - 5, amount=1.0), "missing entity key"),
        raw("p1", obj(user_id="p1", ts=now + 10 * DAY_MS, amount=1.0), "in the future"),
        raw("p1", obj(user_id="p1", ts=10**18, amount=1.0), "in the future"),
        raw("p1", obj(user_id="p1", ts=-1, amount=1.0), "before 1970"),
        raw("p1", obj(user_id="p1", ts=-62_135_596_800_000, amount=1.0), "before 1970"),
        raw("p1", obj(user_id="p1", ts="1969-12-31T23:59:59Z", amount=1.0), "before 1970"),
        raw("p1", f'{{"user_id": "p1", "ts": {now - 5}, "amount": NaN}}'.encode(), "must be finite"),
        raw("p1", f'{{"user_id": "p1", "ts": {now - 5}, "amount": 1e400}}'.encode(), "must be finite"),
        raw("p1", b"y" * 600_000, "not valid JSON"),  # big, but its envelope still fits the worker's producer
        raw("p1", b'{"user_id":' + b"[" * 3000 + b"]" * 3000 + b"}", "nested too deeply"),
        raw("p1", obj(user_id="p1", ts=(now - 5) // 1000, amount=1.0), "looks like epoch seconds"),
        raw("p1", obj(user_id="k" * 5000, ts=now - 5, amount=1.0), "longer than 1024"),
        raw("p1", b'{"user_id": "\\ud800", "ts": 1, "amount": 1}', "not valid Unicode"),
    ]


def huge_poison(now: int) -> list[Sent]:
    return [
        raw("p1", b"x" * MIB, "not valid JSON"),  # 1 MiB of garbage
        raw("p1", json.dumps({"user_id": "p1", "ts": now - 5, "amount": "9" * MIB}).encode(), "must be a number"),
    ]


ODD_USERS = ["用户-ü-😀", "a/b?c#d%20e&f=g", "\u202eRTL", "tab\tnew\nline", "  spaces  ", "-", "x" * 300]


def test_poison_input_goes_to_the_dead_letter_and_late_topics(kafka_bootstrap, tmp_path, fault_table):
    started = time.monotonic()
    prefix, app_id, group = unique_names("poison")
    topic = f"{prefix}transactions"
    create_topic(kafka_bootstrap, topic, 3, BIG_TOPIC)
    now = now_ms()
    rng = random.Random(3)
    good = random_events([f"g{i}" for i in range(20)] + ODD_USERS, 1_500 if LONG else 400, rng)
    good.append(event("g0", now - 10_000, None))  # a null amount is valid
    iso_ts = (now - 20_000) // 1000 * 1000
    iso_text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(iso_ts / 1000))
    iso = Sent("g1", iso_ts, 7.25, json.dumps({"user_id": "g1", "ts": iso_text, "amount": 7.25}).encode())
    good.append(iso)
    big_valid = Sent("g2", now - 30_000, 3.5, json.dumps(
        {"user_id": "g2", "ts": now - 30_000, "amount": 3.5, "note": "n" * (MIB - 200)}).encode())  # fmt: skip
    good.append(big_valid)  # 1 MiB, valid: unknown fields are ignored
    late = [event("g3", now - 100 * DAY_MS, 5.0), event("g4", now - 95 * DAY_MS, 6.0)]
    bad = poison(now)
    mixed = good + late + bad
    rng.shuffle(mixed)

    producer = Producer(kafka_bootstrap, topic)
    worker = Worker(kafka_bootstrap, tmp_path / "state", prefix, app_id, tmp_path, "worker")
    sink = Sink(kafka_bootstrap, topic, group, tmp_path / "data", tmp_path)
    try:
        create_topic(kafka_bootstrap, f"{topic}.dlq", 3, BIG_TOPIC)  # room for the 1 MiB payloads' envelopes
        worker.start()
        sink.launch()
        pid = worker.pid
        for e in mixed:
            producer.send(e)
        producer.flush()

        dead = [open_envelope(r.value) for r in read_topic(kafka_bootstrap, f"{topic}.dlq", len(bad))]
        late_records = [open_envelope(r.value) for r in read_topic(kafka_bootstrap, f"{topic}.late", len(late))]
        online = compare_online(worker, good)
        wait_stored(tmp_path / "data", len(good) + len(late), detail=sink.log_tail)
        offline = compare_offline(tmp_path / "data", good + late)
        rejected = worker.metric("featurestream_events_rejected_total")
        late_n = worker.metric("featurestream_events_late_total")
        assert worker.pid == pid and worker.alive(), "the worker restarted on bad input"

        sent_bad = {(e.partition, e.offset): e for e in bad}
        got_bad = {(d["partition"], d["offset"]): d for d in dead}
        misplaced = len(set(sent_bad) ^ set(got_bad)) + len(late) - len(late_records)
        wrong_reason = [
            (sent_bad[k].reason, got_bad[k]["reason"][:80])  # type: ignore[attr-defined]
            for k in set(sent_bad) & set(got_bad)
            if sent_bad[k].reason not in got_bad[k]["reason"] or got_bad[k]["payload"] != sent_bad[k].payload
        ]
        online.mismatched += misplaced + len(wrong_reason)
        online.add(offline)
        fault_table.add(f"poison input ({len(bad)} bad, {len(late)} late, {len(ODD_USERS)} odd keys)",
                        len(mixed), online, time.monotonic() - started)  # fmt: skip
        assert not wrong_reason, wrong_reason
        assert sorted(got_bad) == sorted(sent_bad), "every poison record (and nothing else) is dead-lettered"
        assert all(d["topic"] == topic for d in dead)
        assert sorted(r["offset"] for r in late_records) == sorted(e.offset for e in late)
        assert all(r["reason"].startswith("late:") for r in late_records)
        assert rejected == len(bad) and late_n == len(late)
        assert (online.lost, online.duplicated, online.mismatched) == (0, 0, 0), online.examples
    finally:
        producer.close()
        worker.stop()
        sink.stop()


@pytest.mark.parametrize("dlq_room", [True, False], ids=["dlq-8MiB", "dlq-default"])
def test_one_mib_poison_payloads_are_dead_lettered(kafka_bootstrap, tmp_path, fault_table, dlq_room):
    """1 MiB bad records: dead-lettered with their reason whether or not the DLQ topic takes the payload
    (without room the envelope goes without it); the worker keeps running and the next event counts."""
    started = time.monotonic()
    prefix, app_id, _ = unique_names("huge")
    topic = f"{prefix}transactions"
    create_topic(kafka_bootstrap, topic, 1, BIG_TOPIC)
    if dlq_room:
        create_topic(kafka_bootstrap, f"{topic}.dlq", 1, BIG_TOPIC)
    bad = huge_poison(now_ms())
    after = event("h1", now_ms() - 1000, 4.0)
    producer = Producer(kafka_bootstrap, topic)
    worker = Worker(kafka_bootstrap, tmp_path / "state", prefix, app_id, tmp_path, "worker")
    try:
        worker.start()
        for e in [*bad, after]:
            producer.send(e)
        producer.flush()
        wait_for(lambda: not worker.alive() or worker.metric("featurestream_events_consumed_total") >= 3,
                 "the worker consuming the 1 MiB records", timeout=60, detail=worker.log_tail)  # fmt: skip
        assert worker.alive(), f"the worker stopped on a 1 MiB poison record:\n{worker.log_tail(8)}"
        dead = [open_envelope(r.value) for r in read_topic(kafka_bootstrap, f"{topic}.dlq", len(bad), timeout=30)]
        outcome = compare_online(worker, [after])
        by_offset = {d["offset"]: d for d in dead}
        outcome.mismatched += len(set(by_offset) ^ {e.offset for e in bad})
        for e in bad:
            d = by_offset.get(e.offset)
            kept = d is not None and d["payload"] == e.payload
            if d is None or e.reason not in d["reason"] or (dlq_room and not kept) or d["payload"] not in (
                e.payload, None
            ):  # type: ignore[attr-defined]
                outcome.mismatched += 1
        room = "8 MiB DLQ topic" if dlq_room else "default DLQ topic, payload dropped"
        fault_table.add(f"1 MiB poison payloads ({room})", len(bad) + 1, outcome, time.monotonic() - started)
        assert (outcome.lost, outcome.duplicated, outcome.mismatched) == (0, 0, 0), (outcome.examples, dead)
    finally:
        producer.close()
        worker.stop()


def test_empty_kafka_key_is_dead_lettered_or_served(kafka_bootstrap, tmp_path, fault_table):
    started = time.monotonic()
    prefix, app_id, _ = unique_names("key")
    topic = f"{prefix}transactions"
    create_topic(kafka_bootstrap, topic, 3)
    now = now_ms()
    producer = Producer(kafka_bootstrap, topic)
    worker = Worker(kafka_bootstrap, tmp_path / "state", prefix, app_id, tmp_path, "worker")
    try:
        worker.start()
        keyed = [event("e1", now - 3000, 1.0), event("e1", now - 2000, 2.0)]
        for e in keyed:
            producer.send(e)
        producer.flush()
        empty = event("e1", now - 1000, 4.0)
        producer.send(empty, key=b"", partition=(keyed[0].partition + 1) % 3)  # not the entity's partition
        producer.flush()
        wait_for(lambda: worker.metric("featurestream_events_applied_total")
                 + worker.metric("featurestream_events_rejected_total") >= 3, "3 records applied or rejected",
                 timeout=60, detail=worker.log_tail)  # fmt: skip
        dead = read_topic(kafka_bootstrap, f"{topic}.dlq", 1, timeout=5)
        if dead:  # dead-lettered with a reason: the rest must be exactly the keyed events
            assert open_envelope(dead[0].value)["offset"] == empty.offset
            outcome = compare_online(worker, keyed)
        else:  # applied: then it must be readable, in the entity's state
            outcome = compare_online(worker, [*keyed, empty])
        fault_table.add("valid event, empty Kafka key, another partition", 3, outcome, time.monotonic() - started)
        assert (outcome.lost, outcome.duplicated, outcome.mismatched) == (0, 0, 0), outcome.examples
    finally:
        producer.close()
        worker.stop()


def boundary_events(now: int, rng: random.Random) -> tuple[list[Sent], list[Sent], list[int]]:
    """Events on, just before and just after the tile boundaries every window's read crosses, ties on the
    same millisecond, and events on both sides of the late cut-off; plus the read times worth checking."""
    users = [f"t{i}" for i in range(8)]
    five, hour = 300_000, HOUR_MS
    stamps: list[int] = []
    for k in range(1, 16):  # the 1h window's tail (5-minute tiles), and recent 5-minute tiles
        stamps.append((now - hour) // five * five + (k - 8) * five)
        stamps.append(now // five * five - k * five)
    for k in range(-3, 4):  # the 1d window's tail (1-hour tiles)
        stamps.append((now - DAY_MS) // hour * hour + k * hour)
    for k in range(0, 4):  # the 90d window's tail (1-day tiles) above the late cut-off
        stamps.append((now - 90 * DAY_MS) // DAY_MS * DAY_MS + k * DAY_MS)
    stamps.extend([now // DAY_MS * DAY_MS, now // hour * hour])
    events = []
    for s in stamps:
        for delta in (-1, 0, 0, 1):  # the boundary twice: a tie decided by arrival order (for last)
            ts = s + delta
            if ts < now - 1000:
                events.append(event(rng.choice(users), ts, round(rng.uniform(-50, 50), 3)))
    cut = late_cutoff(TX.plan, now)
    late = [e for e in events if e.ts < cut] + [event(rng.choice(users), cut - d, 1.0) for d in (2, 1000, DAY_MS)]
    events = [e for e in events if e.ts >= cut]
    events.append(event(users[0], cut, 2.0))  # exactly at the cut-off: kept
    events.append(event(users[1], cut + 1, 3.0))
    reads = sorted({s + d for s in stamps for d in (-1, 0, 1) if s + d < now} | {now})
    return events, late, reads


def test_out_of_order_and_late_events_around_tile_boundaries(kafka_bootstrap, tmp_path, fault_table):
    started = time.monotonic()
    now = now_ms()
    if (now % DAY_MS) > DAY_MS - 5 * 60_000:
        time.sleep(DAY_MS - now % DAY_MS + 1000)  # never straddle midnight UTC: the late cut-off moves then
        now = now_ms()
    prefix, app_id, group = unique_names("tiles")
    topic = f"{prefix}transactions"
    create_topic(kafka_bootstrap, topic, 2)
    rng = random.Random(5)
    events, late, reads = boundary_events(now, rng)
    first, second = events[: len(events) // 2], events[len(events) // 2:]
    rng.shuffle(first)
    second.sort(key=lambda e: -e.ts)  # the second wave goes back in time: older than what is applied
    producer = Producer(kafka_bootstrap, topic)
    worker = Worker(kafka_bootstrap, tmp_path / "state", prefix, app_id, tmp_path, "worker")
    sink = Sink(kafka_bootstrap, topic, group, tmp_path / "data", tmp_path)
    try:
        worker.start()
        sink.launch()
        for e in first:
            producer.send(e)
        producer.flush()
        wait_for(lambda: worker.metric("featurestream_events_applied_total") >= len(first),
                 "the first wave applied", detail=worker.log_tail)  # fmt: skip
        for e in [*second, *late]:
            producer.send(e)
        producer.flush()
        late_records = read_topic(kafka_bootstrap, f"{topic}.late", len(late))
        online = compare_online(worker, events)
        online.mismatched += abs(len(late_records) - len(late))
        wait_stored(tmp_path / "data", len(events) + len(late), detail=sink.log_tail)
        # Offline at every boundary (and one ms either side): the late events count there as history.
        offline = compare_offline(tmp_path / "data", events + late, reads[-40:] if not LONG else reads)
        online.add(offline)
        fault_table.add(f"out-of-order + late around tile boundaries ({len(late)} late)", len(events) + len(late),
                        online, time.monotonic() - started)  # fmt: skip
        assert sorted(open_envelope(r.value)["offset"] for r in late_records) == sorted(e.offset for e in late)
        assert (online.lost, online.duplicated, online.mismatched) == (0, 0, 0), online.examples
    finally:
        producer.close()
        worker.stop()
        sink.stop()
