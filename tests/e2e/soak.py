"""Soak of the worker group's lifecycle: N cycles of scaling 1 -> 3 -> 1 under steady production.

Each cycle starts two more workers next to the long-lived one, waits a random while, then stops them one
after the other, each by SIGTERM or by kill -9 at a random point, while a producer keeps sending events,
a share of them not keyed by their entity (another entity's key or no key, so they land in a partition
their entity does not live in and take the ``.by-entity`` path). After each cycle, every entity's online
features are compared with the brute-force oracle over the whole stream so far: the table counts events,
lost, duplicated and mismatched per cycle. Exit status 1 if any cycle lost or double-counted an event, or if
the changelog audit finds a state record moving an entity backwards or computed from an older state.
``--read-rate`` adds GETs of the long-lived worker throughout (its HTTP thread reading while it takes over
partitions); ``--users 2000 --rate 3000`` makes batches large enough to be stored in several write batches.

    .venv/bin/python -m tests.e2e.soak --cycles 20            # a dedicated broker of its own
    .venv/bin/python -m tests.e2e.soak --cycles 3 --broker 127.0.0.1:9092
    .venv/bin/python -m tests.e2e.soak --cycles 10 --users 2000 --rate 3000 --read-rate 20
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from _pytest.outcomes import Failed

from .changelog_audit import audit_app
from .harness import (
    Broker,
    Outcome,
    Producer,
    Worker,
    compare_online,
    create_topic,
    event,
    http_json,
    now_ms,
    unique_names,
)

PARTITIONS = 6
DAY_MS = 86_400_000


class SteadyFeeder(threading.Thread):
    """Sends events at ``rate``/s until stopped; ``misplaced`` of them keyed by another entity or unkeyed."""

    def __init__(self, producer: Producer, users: list[str], rate: float, misplaced: float, rng: random.Random):
        super().__init__(daemon=True, name="soak-feeder")
        self.producer, self.users, self.rate, self.misplaced, self.rng = producer, users, rate, misplaced, rng
        self.running = threading.Event()
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self.sent = 0

    def run(self) -> None:
        try:
            started, budget = time.monotonic(), 0
            while not self.stopped.is_set():
                if not self.running.wait(0.1):
                    started, budget = time.monotonic(), 0
                    continue
                ahead = budget / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(min(ahead, 0.05))
                    continue
                user = self.rng.choice(self.users)
                ts = now_ms() - 1000 - self.rng.randrange(2 * DAY_MS)
                if self.rng.random() < 0.05:
                    ts = (ts // 300_000) * 300_000  # tile boundaries, with ties
                e = event(user, ts, round(self.rng.lognormvariate(3, 1), 2))
                roll = self.rng.random()
                if roll < self.misplaced / 2:
                    self.producer.send(e, key=self.rng.choice(self.users).encode())
                elif roll < self.misplaced:
                    self.producer.send(e, key=b"", partition=self.rng.randrange(PARTITIONS))  # unkeyed
                else:
                    self.producer.send(e)
                self.sent += 1
                budget += 1
        except BaseException as exc:
            self.error = exc

    def pause(self) -> None:
        """Stop sending and wait until everything sent is acknowledged (offsets known for the oracle)."""
        self.running.clear()
        time.sleep(0.2)
        self.producer.flush()
        if self.error:
            raise self.error


class Reader(threading.Thread):
    """GETs random users' features from the long-lived worker at ``rate``/s while the cycles run, so that
    reads (on the worker's HTTP thread) overlap take-overs, recoveries and batches. Answers are not checked
    (a 503 during a rebalance is expected); what they must not do is change what ingest computes."""

    def __init__(self, worker: Worker, users: list[str], rate: float, rng: random.Random):
        super().__init__(daemon=True, name="soak-reader")
        self.worker, self.users, self.rate, self.rng = worker, users, rate, rng
        self.stopped = threading.Event()
        self.statuses: dict[int, int] = {}

    def run(self) -> None:
        while not self.stopped.wait(1.0 / self.rate):
            try:
                status, _ = http_json("GET", f"{self.worker.url}/features/transactions/{self.rng.choice(self.users)}", timeout=5)
            except OSError:
                status = 0
            self.statuses[status] = self.statuses.get(status, 0) + 1


@dataclass
class Row:
    cycle: int
    events: int
    lost: int
    duplicated: int
    mismatched: int
    stops: str
    seconds: float


def stop(worker: Worker, rng: random.Random, kill_share: float) -> str:
    if rng.random() < kill_share:
        worker.kill9()
        return "kill9"
    code = worker.stop()
    return f"term({code})"


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="featurestream-soak-"))
    broker = None
    if args.broker:
        bootstrap = args.broker
    else:
        broker = Broker(work / "kafka")
        broker.start()
        bootstrap = broker.bootstrap
    prefix, app_id, _ = unique_names("soak")
    topic = f"{prefix}transactions"
    create_topic(bootstrap, topic, PARTITIONS)
    users = [f"k{i:03d}" for i in range(args.users)]
    producer = Producer(bootstrap, topic)
    feeder = SteadyFeeder(producer, users, args.rate, args.misplaced, rng)
    a = Worker(bootstrap, work / "a", prefix, app_id, work, "a")
    reader = Reader(a, users, args.read_rate, random.Random(rng.random())) if args.read_rate > 0 else None
    rows: list[Row] = []
    cycle_workers: list[Worker] = []  # b and c of the cycle under way: stopped too if the soak fails
    print(f"soak: broker {bootstrap}, topic {topic}, logs in {work}", flush=True)
    try:
        a.start()
        feeder.start()
        if reader is not None:
            reader.start()
        for cycle in range(1, args.cycles + 1):
            started = time.monotonic()
            feeder.running.set()
            # b and c keep their state dirs from cycle to cycle, as restarted workers do (a fresh dir would
            # restore the whole changelog every time, which grows with the stream).
            b = Worker(bootstrap, work / "b", prefix, app_id, work, f"b{cycle}")
            c = Worker(bootstrap, work / "c", prefix, app_id, work, f"c{cycle}")
            cycle_workers[:] = [b, c]
            b.launch()
            c.launch()
            b.wait_healthy()
            c.wait_healthy()
            time.sleep(rng.uniform(1.0, args.dwell))
            stops = [stop(b, rng, args.kill_share)]
            time.sleep(rng.uniform(0.5, args.dwell / 2))
            stops.append(stop(c, rng, args.kill_share))
            time.sleep(rng.uniform(0.0, 2.0))
            feeder.pause()
            try:
                outcome = compare_online(a, producer.valid())
            except Failed as exc:
                outcome = Outcome(examples=[str(exc)[:300]])
                outcome.mismatched = -1
            rows.append(Row(cycle, len(producer.valid()), outcome.lost, outcome.duplicated, outcome.mismatched,
                            "+".join(stops), time.monotonic() - started))  # fmt: skip
            r = rows[-1]
            print(f"cycle {cycle:3d}: events {r.events:7d} lost {r.lost:5d} duplicated {r.duplicated:5d} "
                  f"mismatched {r.mismatched:5d} stops {r.stops:<16} {r.seconds:5.0f} s", flush=True)  # fmt: skip
            if outcome.lost or outcome.duplicated or outcome.mismatched:
                print(f"  examples: {outcome.examples[:6]}", flush=True)
                if args.stop_on_failure:
                    break
        feeder.stopped.set()
        if reader is not None:
            reader.stopped.set()
            print(f"reads during the cycles, by HTTP status: {dict(sorted(reader.statuses.items()))}", flush=True)
        a.stop()
        audits = audit_app(bootstrap, app_id)
    finally:
        feeder.stopped.set()
        if reader is not None:
            reader.stopped.set()
        feeder.running.clear()
        producer.close()
        for w in cycle_workers:
            w.stop()
        a.stop()
        if broker is not None and not args.keep:
            broker.stop(wipe=True)
    bad = [r for r in rows if r.lost or r.duplicated or r.mismatched]
    print("\ncycle | events | lost | duplicated | mismatched | stops")
    for r in rows:
        print(f"{r.cycle:5d} | {r.events:6d} | {r.lost:4d} | {r.duplicated:10d} | {r.mismatched:10d} | {r.stops}")
    print(f"\n{len(rows)} cycles, {len(bad)} with a difference; logs in {work}")
    wrong = sum(len(r["backwards"]) + len(r["stale_base"]) + r["unreadable"] for r in audits)
    for r in audits:
        print(f"changelog {r['topic']}: {r['records']} state records, {len(r['backwards'])} moving an entity "
              f"backwards, {len(r['stale_base'])} computed from an older state, {r['unreadable']} unreadable")  # fmt: skip
        for b in (r["backwards"] + r["stale_base"])[:10]:
            print(f"  partition {b['partition']} offset {b['offset']} key {b['key']!r}: {b['record']} after {b['before']}")
    return 1 if bad or wrong else 0




def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--broker", help="an already running broker (default: start a dedicated one)")
    p.add_argument("--rate", type=float, default=800.0, help="events per second while a cycle runs")
    p.add_argument("--misplaced", type=float, default=0.15, help="share of events not keyed by their entity")
    p.add_argument("--kill-share", type=float, default=0.3, help="share of stops that are kill -9")
    p.add_argument("--dwell", type=float, default=8.0, help="upper bound of the random waits, seconds")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--read-rate", type=float, default=0.0, help="GETs per second of the long-lived worker meanwhile")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop-on-failure", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the dedicated broker's data")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
