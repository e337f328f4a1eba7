"""The replica's changelog mirror applies records as table recovery does: newest wins, never backwards."""

from __future__ import annotations

import json

from aggregations.bookkeeping import CHECKPOINT_KEY, Checkpoint
from aggregations.codec import EntityStateCodec
from aggregations.loading import load_registry
from stream.changelog_mirror import ChangelogMirror
from stream.processor import BatchProcessor, SourceRecord

TX = load_registry("examples/transactions/features.py").feature_set("transactions")
NOW = 1_800_000_000_000


def states(user: bytes, offsets: list[int]) -> dict[int, bytes]:
    """The state blob of ``user`` after each source offset of ``offsets`` (applied in that order)."""
    processor = BatchProcessor(TX, "transactions")
    blob, out = None, {}
    for offset in offsets:
        value = json.dumps({"user_id": user.decode(), "ts": NOW - 1000 - offset, "amount": 1.0}).encode()
        record = SourceRecord(0, offset, user, value)
        (write,) = processor.process([record], NOW, lambda p, ks, blob=blob: [blob for _ in ks]).writes
        blob = out[offset] = write.value
    return out


def test_the_newest_record_of_each_key_wins_and_checkpoints_are_not_state():
    a, b = states(b"a", [1, 2]), states(b"b", [3])
    mirror = ChangelogMirror(EntityStateCodec(TX))
    mirror.start(0, 40)
    mirror.apply(0, [(40, b"a", a[1]), (41, b"b", b[3]), (42, CHECKPOINT_KEY, Checkpoint(4).encode()), (43, b"a", a[2])])
    assert mirror.get(b"a") == a[2] and mirror.get(b"b") == b[3]
    assert mirror.get(CHECKPOINT_KEY) is None and len(mirror) == 2
    assert mirror.positions == {0: 44}
    assert mirror.bytes == len(a[2]) + len(b[3]) + 2


def test_a_late_record_of_an_older_state_is_skipped_and_counted():
    a = states(b"a", [5, 9])
    mirror = ChangelogMirror(EntityStateCodec(TX))
    mirror.apply(1, [(0, b"a", a[9]), (1, b"a", a[5])])  # an expelled owner's write lands after the new owner's
    assert mirror.get(b"a") == a[9]
    assert mirror.skipped == 1 and mirror.positions[1] == 2


def test_a_tombstone_deletes_and_the_counts_follow():
    a = states(b"a", [1])
    mirror = ChangelogMirror(EntityStateCodec(TX))
    mirror.apply(0, [(0, b"a", a[1]), (1, b"a", None), (2, b"gone", None), (3, None, b"x")])
    assert mirror.get(b"a") is None and len(mirror) == 0 and mirror.bytes == 0
    assert mirror.positions[0] == 4


def test_behind_counts_records_up_to_the_end_offsets():
    mirror = ChangelogMirror(EntityStateCodec(TX))
    mirror.start(0, 10)
    mirror.start(1, 0)
    mirror.apply(1, [(0, CHECKPOINT_KEY, Checkpoint(1).encode())])
    assert mirror.behind({0: 15, 1: 1, 2: 3}) == 5 + 0 + 3


def test_the_consumer_position_moves_past_records_compaction_removed_but_never_back():
    mirror = ChangelogMirror(EntityStateCodec(TX))
    mirror.start(0, 0)
    mirror.apply(0, [(3, CHECKPOINT_KEY, Checkpoint(1).encode())])  # offsets 0-2 and 4-6 compacted away
    mirror.advance(0, 7)
    assert mirror.behind({0: 7}) == 0
    mirror.advance(0, 5)
    assert mirror.positions[0] == 7
