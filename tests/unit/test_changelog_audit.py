"""The soak's changelog audit reads the applied offsets of real state records (FS3 as the worker writes
them, FS2 as an earlier release did) and sorts a key's record sequence into forward, backwards (a late write)
and stale base (computed from an older state: a lost update). An audit that reads nothing proves nothing."""

from __future__ import annotations

import json
import struct

import numpy as np

from aggregations.codec import EntityStateCodec
from aggregations.kernel import EventBatch, build_levels
from aggregations.loading import load_registry
from tests.e2e.changelog_audit import applied_offsets, stale_base

FS = load_registry("examples/transactions/features.py").feature_sets["transactions"]
CODEC = EntityStateCodec(FS)
NOW = 1_700_000_000_000


def _blobs(metas: list[dict]) -> list[bytes]:
    n = len(metas)
    batch = EventBatch(np.arange(n, dtype=np.int64), np.full(n, NOW - 1000, dtype=np.int64),
                       np.arange(n, dtype=np.int64), {"amount": np.ones(n)})  # fmt: skip
    return CODEC.encode_all(build_levels(FS.plan, batch), list(range(n)), metas)


def test_the_offsets_of_worker_state_are_read():
    metas = [{"offsets": {"1": 6984, "f5": 4741}}, {"offsets": {"0": 7}}, {}]
    blobs = _blobs(metas)
    assert all(blob[:3] == b"FS3" for blob in blobs)
    assert [applied_offsets(b) for b in blobs] == [{"1": 6984, "f5": 4741}, {"0": 7}, {}]


def test_the_offsets_of_fs2_state_are_read():
    meta = json.dumps({"offsets": {"2": 41}, "fp": CODEC.fingerprint}).encode()
    assert applied_offsets(b"FS2" + struct.pack("<I", len(meta)) + meta) == {"2": 41}


def test_records_that_cannot_be_read_are_none():
    assert applied_offsets(b"") is None
    assert applied_offsets(b"junk-state-record") is None
    assert applied_offsets(_blobs([{"offsets": {"1": 1}}])[0][:12]) is None  # truncated


def test_a_state_computed_from_an_older_state_is_a_stale_base():
    # The soak's lost update: slot 1 went back from 6984 to 6967 while forwarded slots moved on.
    before = {"f5": 4741, "1": 6984, "f0": 4392}
    assert stale_base(before, {"f5": 5587, "1": 6967, "f0": 5584})
    assert not stale_base(before, {"f5": 5587, "1": 6984, "f0": 4392})  # forward only
    assert not stale_base(before, {"f5": 4741, "1": 6990, "f0": 4392, "f3": 1})  # a new slot is forward
    assert not stale_base(before, {"f5": 4000, "1": 6984, "f0": 4392})  # all behind: a late write, not this
