"""Online state rebuilt from Parquet (``sinks.online_state``) equals what the worker's processor builds.

The worker's ``BatchProcessor`` (pure, no Kafka), run as the worker runs it (knowing the partition count,
forwarding events that are not in their entity's home partition and applying them from the ``.by-entity``
topic in their origin slot), is the reference: for the same events and ``now``, the rebuilt states must be
the worker's (same entities in the same partitions, same applied offsets, same values), and the worker
continuing from rebuilt state must skip what was stored and apply the rest, ending where an always-on
worker ends.
Also: the names that stream/ and sinks/ share through ``aggregations.naming``.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd

import stream.app
import stream.processor
from aggregations import naming
from aggregations.bookkeeping import home_partition
from aggregations.codec import EntityStateCodec
from aggregations.loading import load_registry
from sinks.layout import dataset_dir
from sinks.online_state import rebuild_states
from sinks.writer import write_batch
from stream.forwarding import forwarded_groups, origin_header
from stream.processor import BatchProcessor, SourceRecord
from stream.reading import FeatureReader

TX = load_registry("examples/transactions/features.py").feature_set("transactions")
NOW = 1_800_000_000_000
HOUR = 3_600_000
DAY = 24 * HOUR
PARTITIONS = 3


def test_names_match_the_worker():
    # The worker names its table and changelog with these very functions (no second copy of the rule).
    assert stream.app.table_name is naming.table_name
    assert stream.app.DEFAULT_APP_ID == naming.DEFAULT_APP_ID
    assert naming.table_name(TX) == f"transactions-tiles-{TX.fingerprint()}"
    assert naming.changelog_topic(TX) == f"featurestream-transactions-tiles-{TX.fingerprint()}-changelog"
    assert naming.changelog_topic(TX, "x") == f"x-{naming.table_name(TX)}-changelog"
    assert naming.OFFSETS_META == stream.processor.OFFSETS


def history(n: int = 3000, seed: int = 7) -> pd.DataFrame:
    """Events with partition/offset/arrival, out of order in time, some older than the longest window."""
    rng = np.random.default_rng(seed)
    users = np.array([f"u{i}" for i in range(40)], dtype=object)
    user = users[rng.integers(0, len(users), n)]
    age = rng.integers(1, 100 * DAY, n)
    recent = rng.random(n) < 0.3
    age[recent] = rng.integers(1, 2 * HOUR, int(recent.sum()))
    ts = NOW - age
    ts[::97] = (ts[::97] // HOUR) * HOUR  # tile boundaries and ties
    ts[1::97] = ts[::97][: len(ts[1::97])]
    amount = np.round(rng.lognormal(3, 1, n), 2)
    amount[rng.random(n) < 0.05] = np.nan
    # Most events in their entity's home partition; a sixth wherever a producer put them (forwarded).
    partition = np.array([home_partition(u.encode(), PARTITIONS) for u in user])
    misplaced = rng.random(n) < 1 / 6
    partition[misplaced] = rng.integers(0, PARTITIONS, int(misplaced.sum()))
    frame = pd.DataFrame({"user_id": user, "ts": ts, "amount": amount, "_partition": partition})
    frame["_offset"] = frame.groupby("_partition").cumcount()
    frame["_arrival"] = NOW - 1000
    return frame


def records(frame: pd.DataFrame) -> list[SourceRecord]:
    out = []
    columns = ("user_id", "ts", "amount", "_partition", "_offset")
    for user, ts, amount, partition, offset in zip(*(frame[c].tolist() for c in columns), strict=True):
        value = json.dumps(
            {"user_id": user, "ts": ts, "amount": None if np.isnan(amount) else amount}
        ).encode()
        out.append(SourceRecord(partition, offset, user.encode(), value))
    return out


class Store:
    def __init__(self, blobs=None):
        self.blobs: dict[tuple[int, bytes], bytes] = dict(blobs or {})

    def load(self, partition, keys):
        return [self.blobs.get((partition, k)) for k in keys]

    def apply(self, result):
        for w in result.writes:
            self.blobs[(w.partition, w.key)] = w.value


def worker_state(frame: pd.DataFrame, now: int, store: Store | None = None, batch: int = 500, fs=TX) -> Store:
    """What the worker's table holds after consuming ``frame``: source batches partition by partition in
    offset order, then the forwarded events as they come back from the ``.by-entity`` topic."""
    store = store or Store()
    processor = BatchProcessor(fs, "transactions", partitions=PARTITIONS)
    by_entity: dict[int, list] = {}
    for _, part in frame.groupby("_partition"):
        part_records = records(part.sort_values("_offset"))
        for start in range(0, len(part_records), batch):
            result = processor.process(part_records[start : start + batch], now, store.load)
            store.apply(result)
            for e, origin in zip(result.forward, result.forward_origins, strict=True):
                home = home_partition(e.key, PARTITIONS)
                queue = by_entity.setdefault(home, [])
                queue.append(SimpleNamespace(partition=home, offset=len(queue), key=e.key, value=e.value,
                                             headers=[origin_header(*origin)]))  # fmt: skip
    for messages in by_entity.values():
        for slot, group in forwarded_groups(messages):
            store.apply(processor.process(group, now, store.load, slot))
    return store


def assert_same_states(got: dict, want: dict, fs=TX) -> None:
    """The same entities in the same partitions, the same applied offsets and the same feature values
    (float sums summed in another order: within 1e-9 relative)."""
    assert got.keys() == want.keys()
    keys = sorted(want)
    codec = EntityStateCodec(fs)
    assert [codec.decode_meta(got[k])[0] for k in keys] == [codec.decode_meta(want[k])[0] for k in keys]
    reader = FeatureReader(fs)
    for at in (NOW, NOW + 30 * 60_000, NOW + DAY + 1):
        for g, w in zip(reader.read([got[k] for k in keys], at), reader.read([want[k] for k in keys], at), strict=True):
            assert g.keys() == w.keys()
            for name, value in w.items():
                if isinstance(value, float):
                    assert math.isclose(g[name], value, rel_tol=1e-9), (name, g[name], value)
                else:
                    assert g[name] == value, name


def write_dataset(frame: pd.DataFrame, root, fs=TX) -> None:
    for p, part in frame.groupby("_partition"):
        write_batch(
            fs, dataset_dir(root, fs.name), int(p), part[["user_id", "ts", "amount"]].reset_index(drop=True),
            part["_offset"].to_numpy(), part["_arrival"].to_numpy(),
        )  # fmt: skip


def rebuilt(root, now: int, partitions: int, fs=TX) -> dict[tuple[int, bytes], bytes]:
    out = {}
    for part in rebuild_states(fs, root, now, PARTITIONS, partitions=partitions):
        for s in part.states:
            assert (s.partition, s.key) not in out
            out[(s.partition, s.key)] = s.value
    return out


def test_rebuilt_states_are_the_workers(tmp_path):
    frame = history()
    assert (frame["_partition"] != [home_partition(u.encode(), PARTITIONS) for u in frame["user_id"]]).any()
    write_dataset(frame, tmp_path)
    want = worker_state(frame, NOW).blobs
    for partitions in (1, 4):
        assert_same_states(rebuilt(tmp_path, NOW, partitions), want)


def test_rebuilt_plain_features_are_the_workers(tmp_path):
    """A set with plain features (the latest event within a ttl, and without one) besides its windows."""
    from aggregations import Feature, FeatureSet

    plain = FeatureSet(
        name="transactions", entities=TX.entities, timestamp_key="ts", source="transactions", schema=TX.schema,
        aggregations=TX.aggregations, features=[Feature("amount", name="last_amount", ttl="3d"), Feature("ts", name="seen")],
    )  # fmt: skip
    frame = history(seed=5)
    write_dataset(frame, tmp_path, plain)
    want = worker_state(frame, NOW, fs=plain).blobs
    assert_same_states(rebuilt(tmp_path, NOW, 3, plain), want, plain)
    values = FeatureReader(plain).read(list(want.values()), NOW + 1)
    assert all(v["seen"] is None or type(v["seen"]) is int for v in values) and any(
        v["last_amount"] for v in values
    )


def test_worker_continues_from_rebuilt_state_as_if_always_on(tmp_path):
    frame = history(seed=11)
    cut = {p: int(len(g) * 0.7) for p, g in frame.groupby("_partition")}
    stored = frame[frame["_offset"] < frame["_partition"].map(cut)]
    write_dataset(stored, tmp_path)  # the sink lags: the last 30% of each partition is not in Parquet
    later = NOW + 5 * 60_000
    bootstrapped = Store(rebuilt(tmp_path, NOW, 2))
    # The worker then replays the whole topic (history and the rest) at a later time.
    continued = worker_state(frame, later, bootstrapped)
    always_on = worker_state(frame, later)
    assert_same_states(continued.blobs, always_on.blobs)
