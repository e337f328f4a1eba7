"""Bootstrap benchmark: online state of the example feature set rebuilt from Parquet and produced to Kafka.

    .venv/bin/python benchmarks/bootstrap.py                        # own broker, 10M events, 100k users, 90 days
    .venv/bin/python benchmarks/bootstrap.py --broker 127.0.0.1:9092 --events 1000000 --users 10000

Deterministic data (``benchmarks/offline.py``'s generator and writer: the sink's layout, 4 Kafka
partitions) in a temp dir; a source topic with as many partitions is created. ``sinks.bootstrap`` then
runs in a fresh child process: split the dataset by entity hash, build and expire every entity's tiles
at the data's end, encode, produce to the changelog topic with acks=all. Reported: wall time of the
bootstrap call (process start and imports excluded), its peak RSS (``ru_maxrss``), entities and bytes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.offline import END_MS, KAFKA_PARTITIONS, feature_set, generate_events, write_dataset  # noqa: E402
from benchmarks.ports import free_ports  # noqa: E402


def child(broker: str, data_dir: str, topic: str, app_id: str) -> None:
    from sinks.bootstrap import bootstrap

    started = time.monotonic()
    stats = bootstrap(feature_set(), data_dir, broker, app_id=app_id, topic=topic, now=END_MS, progress=False)
    seconds = time.monotonic() - started
    print(
        json.dumps(
            {"seconds": seconds, "entities": stats.entities, "events": stats.events, "bytes": stats.bytes}
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", help="use this broker (default: start one on a free port, stop it after)")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    broker, own = args.broker, None
    if broker is None:
        port, controller = free_ports(2)
        data_dir = tempfile.mkdtemp(prefix="featurestream-bench-kafka-")
        own = ["--port", str(port), "--controller-port", str(controller), "--data-dir", data_dir]
        subprocess.run([str(REPO / "deploy/kafka/start.sh"), *own], check=True, stdout=subprocess.DEVNULL)
        broker = f"127.0.0.1:{port}"
    try:
        with tempfile.TemporaryDirectory(prefix="featurestream-bench-bootstrap-") as work:
            started = time.monotonic()
            events = generate_events(args.events, args.users, args.days, seed=1)
            files = write_dataset(events, Path(work), flush=500_000)
            del events
            print(
                f"dataset: {args.events:,} events, {args.users:,} users, {files} files ({time.monotonic() - started:.0f}s)"
            )
            from kafka import KafkaAdminClient
            from kafka.admin import NewTopic

            run = uuid.uuid4().hex[:8]
            topic = f"bench-bootstrap-{run}"
            admin = KafkaAdminClient(bootstrap_servers=broker)
            admin.create_topics([NewTopic(topic, KAFKA_PARTITIONS, 1)])
            admin.close()
            proc = subprocess.run(
                [sys.executable, __file__, "--child", broker, work, topic, f"bench-{run}"],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"bootstrap: {r['events']:,} events -> {r['entities']:,} entities, {r['bytes'] / 1e6:.0f} MB to the "
                f"changelog in {r['seconds']:.1f}s ({r['events'] / r['seconds']:,.0f} events/s), peak RSS {peak_mb:.0f} MB"
            )
    finally:
        if own is not None:
            subprocess.run([str(REPO / "deploy/kafka/stop.sh"), *own, "--wipe"], stdout=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
