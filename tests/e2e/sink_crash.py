"""Child process of the object-store kill test: a sink that kill -9s itself at one point of its commit.

    python -m tests.e2e.sink_crash MODE FLUSH BROKER TOPIC GROUP STORE

MODE is where, in the FLUSH-th flush: ``mid-upload`` (a data file's upload begun, half of it sent, never
completed), ``between-files`` (after the first file of a flush, before the next), ``before-commit`` (every
file of the flush stored, Kafka offsets not committed yet).
"""

from __future__ import annotations

import os
import signal
import sys

from sinks import ParquetSink
from sinks.storage import StorePath
from tests.e2e.harness import TX


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main(mode: str, flush: int, broker: str, topic: str, group: str, store: str) -> None:
    uploads = {"n": 0, "flushes": 0}
    upload = StorePath.write_bytes

    def write_bytes(self: StorePath, data: bytes) -> None:
        if "/date=" not in self.path:
            upload(self, data)
            return
        uploads["n"] += 1
        if uploads["flushes"] == flush - 1:
            if mode == "mid-upload":
                stream = self.fs.open_output_stream(self.path)
                stream.write(data[: len(data) // 2])
                die()
            if mode == "between-files" and uploads["n"] > 1:
                print(f"killing after {uploads['n'] - 1} files of flush {flush}", flush=True)
                die()
        upload(self, data)

    def before_commit(offsets: dict[int, int]) -> None:
        uploads["flushes"] += 1
        if mode == "before-commit" and uploads["flushes"] == flush:
            die()

    StorePath.write_bytes = write_bytes
    sink = ParquetSink(
        TX, store, broker, group=group, topic=topic, flush_events=400, flush_seconds=60, before_commit=before_commit,
        consumer_config={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
    )
    sink.run()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:7])
