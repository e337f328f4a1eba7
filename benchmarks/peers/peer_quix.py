"""Quix Streams on a pre-filled topic: the example feature set's windows, per user, from Kafka.

Runs in benchmarks/peers/.venvs/quixstreams (never in the project venv):

    python peer_quix.py BROKER TOPIC EVENTS STATE_DIR [full|hopping|light]

Consumes TOPIC from the beginning with a fresh consumer group (JSON values
``{"user_id", "ts", "amount"}``, key = user_id, event time = ``ts``), and keeps, per user, three
sliding windows (1h, 1d, 90d; Quix's ``sliding_window``: step 1 ms, both ends inclusive) each with
count, sum, mean, min, max and latest of ``amount`` (18 values, like our example feature set; workload
``light``: one 1h window with count, sum and mean, like benchmarks/peers/light_features.py), emitting
the current values on every event (``.current()``), state in RocksDB with changelog topics (Quix's
defaults, as our worker keeps a RocksDB table with a changelog). Workload ``hopping`` is what a Quix user would
pick for tiled features: hopping windows of the same lengths whose step is our tile period (1h by 5m, 1d by
1h, 90d by 1d), the same six aggregations, emitted when a window closes (``.final()``). The rate is measured from the first
consumed message to the EVENTS-th one, as our benchmark does for the worker. The last stdout line is
JSON: events, seconds, rate, cpu_share.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import quixstreams
from quixstreams import Application
from quixstreams.dataframe.windows import aggregations as agg

WINDOWS_MS = {"1h": 3_600_000, "1d": 86_400_000, "90d": 90 * 86_400_000}
STEPS_MS = {"1h": 300_000, "1d": 3_600_000, "90d": 86_400_000}  # our default tile periods of those windows


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main(argv: list[str]) -> int:
    broker, topic_name, expected, state_dir = argv[1], argv[2], int(argv[3]), argv[4]
    workload = argv[5] if len(argv) > 5 else "full"
    app = Application(
        broker_address=broker,
        consumer_group=f"quix-bench-{os.getpid()}-{int(time.time())}",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel="WARNING",
        auto_create_topics=True,
    )
    topic = app.topic(
        topic_name,
        value_deserializer="json",
        key_deserializer="str",
        timestamp_extractor=lambda value, headers, ts, ts_type: int(value["ts"]),
    )
    sdf = app.dataframe(topic)
    seen = {"n": 0, "t0": 0.0, "cpu0": 0.0, "t1": 0.0, "cpu1": 0.0}

    def tick(_value) -> None:
        if seen["n"] == 0:
            seen["t0"], seen["cpu0"] = time.monotonic(), _cpu()
        seen["n"] += 1

    def done(_value) -> None:
        if seen["n"] >= expected and not seen["t1"]:
            seen["t1"], seen["cpu1"] = time.monotonic(), _cpu()
            app.stop()

    sdf = sdf.update(tick)
    if workload == "full":  # the example feature set: 3 windows x 6 ops
        for label, duration in WINDOWS_MS.items():
            sdf.sliding_window(duration_ms=duration, name=f"amount_{label}").agg(
                count=agg.Count("amount"),
                sum=agg.Sum("amount"),
                avg=agg.Mean("amount"),
                min=agg.Min("amount"),
                max=agg.Max("amount"),
                last=agg.Latest("amount"),
            ).current()
    elif workload == "hopping":  # the same 3 windows x 6 ops, as hopping windows stepped by our tile period
        for label, duration in WINDOWS_MS.items():
            sdf.hopping_window(duration_ms=duration, step_ms=STEPS_MS[label], name=f"amount_{label}").agg(
                count=agg.Count("amount"),
                sum=agg.Sum("amount"),
                avg=agg.Mean("amount"),
                min=agg.Min("amount"),
                max=agg.Max("amount"),
                last=agg.Latest("amount"),
            ).final()
    elif workload == "light":  # benchmarks/peers/light_features.py: one 1h window x count/sum/avg
        sdf.sliding_window(duration_ms=WINDOWS_MS["1h"], name="amount_1h").agg(
            count=agg.Count("amount"), sum=agg.Sum("amount"), avg=agg.Mean("amount")
        ).current()
    else:
        raise SystemExit(f"unknown workload {workload!r}")
    sdf.update(done)  # a branch defined after the three window branches: runs after them for each message
    app.run()
    seconds = seen["t1"] - seen["t0"]
    print(
        json.dumps(
            {
                "events": seen["n"],
                "seconds": seconds,
                "rate": (seen["n"] - 1) / seconds if seconds > 0 else None,
                "cpu_share": (seen["cpu1"] - seen["cpu0"]) / seconds if seconds > 0 else None,
                "version": quixstreams.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(sys.argv))
