"""Sink and backfill throughput: events/s from a pre-filled topic to durable Parquet, with peak memory.

    .venv/bin/python benchmarks/sink.py                   # own broker on a free port, 500k events, 3 runs
    .venv/bin/python benchmarks/sink.py --broker 127.0.0.1:9092 --events 1000000 --runs 5

A topic of ``--partitions`` partitions is filled once with sample payments (JSON, keyed by user).
Each run is a fresh process (so peak RSS is its own, from ``wait4``) writing into an empty dataset:

* ``sink``: ``ParquetSink.run(once=True)`` in a new consumer group — poll, validate, write fsynced
  files, commit — until caught up with the end of the topic;
* ``backfill``: ``backfill()`` from the beginning (no group, no commits).

Time is from the start of consumption to the last durable file (process start and imports excluded).
Prints each run, the median, and the load average before and after each mode's runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ports import free_ports  # noqa: E402


def _load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def fill(broker: str, topic: str, events: int, partitions: int, users: int = 10_000) -> float:
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=broker)
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.close()
    time.sleep(1.0)
    producer = KafkaProducer(bootstrap_servers=broker, linger_ms=20, batch_size=1 << 20, acks=1)
    now = int(time.time() * 1000)
    started = time.monotonic()
    for i in range(events):
        user = f"u{(i * 7919) % users:05d}"
        value = f'{{"user_id": "{user}", "ts": {now - (i * 37) % 86_400_000}, "amount": {(i % 1000) / 10}}}'
        producer.send(topic, key=user.encode(), value=value.encode())
    producer.flush()
    producer.close()
    return time.monotonic() - started


def child(mode: str, broker: str, topic: str, data_dir: str) -> None:
    import logging

    logging.getLogger("kafka").setLevel(logging.ERROR)
    from aggregations.loading import load_registry
    from sinks.backfill import backfill
    from sinks.parquet_sink import ParquetSink

    fs = load_registry(str(REPO / "examples" / "transactions" / "features.py")).feature_set("transactions")
    started = time.monotonic()
    if mode == "sink":
        stats = ParquetSink(fs, data_dir, broker, topic=topic, group=f"bench-{uuid.uuid4().hex[:8]}").run(
            once=True
        )
        written = stats.written
    else:
        written = backfill(fs, data_dir, broker, topic=topic, until_sink=False).written
    seconds = time.monotonic() - started
    print(json.dumps({"written": written, "seconds": seconds}))


def run_once(mode: str, broker: str, topic: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="featurestream-bench-") as data_dir:
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--broker",
                broker,
                "--topic",
                topic,
                "--data-dir",
                data_dir,
            ],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"{mode} run failed ({proc.returncode})")
        result = json.loads(out.decode().strip().splitlines()[-1])
        result["peak_rss_mb"] = usage.ru_maxrss / 1024
        result["rate"] = result["written"] / result["seconds"]
        return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", help="use this broker (default: start one on a free port, stop it after)")
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", choices=["sink", "backfill"], help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.broker, args.topic, args.data_dir)
        return 0
    broker, own = args.broker, None
    if broker is None:
        port, controller = free_ports(2)
        data_dir = tempfile.mkdtemp(prefix="featurestream-bench-kafka-")
        own = ["--port", str(port), "--controller-port", str(controller), "--data-dir", data_dir]
        subprocess.run([str(REPO / "deploy/kafka/start.sh"), *own], check=True, stdout=subprocess.DEVNULL)
        broker = f"127.0.0.1:{port}"
    try:
        topic = f"bench-sink-{uuid.uuid4().hex[:8]}"
        took = fill(broker, topic, args.events, args.partitions)
        print(f"filled {topic}: {args.events:,} events in {args.partitions} partitions ({took:.1f}s)")
        for mode in ("sink", "backfill"):
            print(f"{mode}: {_load()} before")
            results = [run_once(mode, broker, topic) for _ in range(args.runs)]
            for r in results:
                assert r["written"] == args.events, r
                print(
                    f"  {mode:8s} {r['rate']:>10,.0f} events/s  {r['seconds']:6.2f}s  peak RSS {r['peak_rss_mb']:.0f} MB"
                )
            rate = statistics.median(r["rate"] for r in results)
            rss = statistics.median(r["peak_rss_mb"] for r in results)
            print(
                f"{mode}: median {rate:,.0f} events/s, peak RSS {rss:.0f} MB ({args.runs} runs; {_load()} after)"
            )
    finally:
        if own is not None:
            subprocess.run(
                [str(REPO / "deploy/kafka/stop.sh"), *own, "--wipe"],
                stdout=subprocess.DEVNULL,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
