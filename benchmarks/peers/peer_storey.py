"""MLRun's storey, in memory: AggregateByKey with sliding windows over the benchmark's events.

Runs in benchmarks/peers/.venvs/storey (never in the project venv):

    python peer_storey.py EVENTS.parquet OUT.parquet

EVENTS.parquet: user_id (str), ts (epoch ms, int64), amount (float64), in the order to feed them.
For every event storey emits the event enriched with its features; OUT.parquet keeps, for each
user, the features emitted with that user's LAST event (what a read right after it would see), named
``amount_{op}_{window}`` like ours. The last stdout line is JSON: events, seconds, events/s.

The windows are those of the example feature set with our default periods (1h by 5m, 1d by 1h,
90d by 1d), one FieldAggregator per window so each gets its own period, as storey requires one period
per aggregator. The table is storey's in-memory ``Table("", NoopDriver())``: no persistence.
"""

from __future__ import annotations

import json
import sys
import time

import pandas as pd
import storey
from storey import AggregateByKey, DataframeSource, FieldAggregator, NoopDriver, Reduce, SlidingWindows, Table

OPS = ["count", "sum", "avg", "min", "max", "last"]
WINDOWS = {"1h": "5m", "1d": "1h", "90d": "1d"}  # window -> period (our defaults)


def main(argv: list[str]) -> int:
    events_path, out_path = argv[1], argv[2]
    frame = pd.read_parquet(events_path)
    frame["ts"] = pd.to_datetime(frame["ts"], unit="ms", utc=True)
    aggregates = [
        FieldAggregator(f"w{window}", "amount", OPS, SlidingWindows([window], period))
        for window, period in WINDOWS.items()
    ]
    last: dict[str, dict] = {}

    def keep(acc, event):
        acc[event["user_id"]] = event
        return acc

    flow = storey.build_flow(
        [
            DataframeSource(frame),
            AggregateByKey(aggregates, Table("", NoopDriver()), key_field="user_id", time_field="ts"),
            Reduce(last, keep),
        ]
    )
    started = time.perf_counter()
    flow.run().await_termination()
    seconds = time.perf_counter() - started

    rows = []
    for user, event in last.items():
        row = {"user_id": user, "ts": int(pd.Timestamp(event["ts"]).value // 1_000_000)}
        for window in WINDOWS:
            for op in OPS:
                row[f"amount_{op}_{window}"] = event.get(f"w{window}_{op}_{window}")
        rows.append(row)
    pd.DataFrame(rows).to_parquet(out_path)
    print(
        json.dumps(
            {
                "events": len(frame),
                "seconds": seconds,
                "rate": len(frame) / seconds,
                "storey": storey.__version__ if hasattr(storey, "__version__") else None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
