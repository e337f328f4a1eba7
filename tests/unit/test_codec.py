"""Online state bytes: round trips keep every read, string and set states included; wrong definitions refuse."""

import numpy as np
import pytest

from aggregations import Aggregation, Entity, FeatureSet
from aggregations.codec import EntityStateCodec, StateMismatch
from aggregations.kernel import EventBatch, build_levels, read


def make_set(windows=("1h", "1d")):
    return FeatureSet(
        "c",
        [Entity("k")],
        "ts",
        "c",
        {"k": "string", "ts": "timestamp", "x": "float64", "m": "string"},
        [
            Aggregation("x", ["count", "sum", "min", "last", "var"], windows=list(windows)),
            Aggregation("m", ["first", "last", "count_distinct"], windows=["1d"]),
        ],
    )


def test_round_trip_with_strings_sets_and_absent_entities():
    fs = make_set()
    rng = np.random.default_rng(5)
    n, now = 3000, 1_800_000_000_000
    codes = rng.integers(0, 50, n)
    ts = now - rng.integers(0, 2 * 86_400_000, n)
    x = rng.normal(0, 1, n)
    x[::7] = np.nan
    m = np.array([None if i % 11 == 0 else f"m{i % 13}" for i in range(n)], dtype=object)
    levels = build_levels(fs.plan, EventBatch(codes, ts, np.arange(n), {"x": x, "m": m}))
    codec = EntityStateCodec(fs)
    blobs = codec.encode_all(levels, list(range(50)), [{"offsets": {"0": i}} for i in range(50)])
    blobs.insert(3, None)  # an entity with no state yet decodes to nothing
    decoded, metas = codec.decode_many(blobs)
    assert metas[3] == {} and metas[4]["offsets"] == {"0": 3}
    q_codes = np.arange(51)
    original_codes = np.where(q_codes < 3, q_codes, q_codes - 1)
    original_codes[3] = 999  # no such entity
    q_ts = np.full(51, now)
    expected = read(fs.plan, levels, original_codes, q_ts)
    got = read(fs.plan, decoded, q_codes, q_ts)
    for name, values in expected.items():
        assert [repr(v) for v in values.tolist()] == [repr(v) for v in got[name].tolist()], name


def test_state_of_another_definition_is_refused():
    old, new = make_set(("1h",)), make_set(("2h",))
    levels = build_levels(
        old.plan,
        EventBatch(
            np.zeros(1, np.int64),
            np.ones(1, np.int64),
            np.zeros(1, np.int64),
            {"x": np.ones(1), "m": np.array(["a"], dtype=object)},
        ),
    )
    blob = EntityStateCodec(old).encode(levels, 0, {})
    with pytest.raises(StateMismatch, match="written by definition"):
        EntityStateCodec(new).decode_many([blob])
    with pytest.raises(StateMismatch, match="bad magic"):
        EntityStateCodec(new).decode_many([b"junk"])


def _fs2_blobs(codec: EntityStateCodec, levels, codes, metas) -> list[bytes]:
    """The previous layout (FS2), written as an earlier release wrote it: JSON meta (with ``fp`` and the object
    arrays under ``obj``), then per level of the chain a u32 tile count, the rows, and the binary chunks."""
    import json
    import struct

    out = []
    for code, meta in zip(codes, metas, strict=True):
        body = dict(meta, fp=codec.fingerprint)
        chunks, objects = [], {}
        for period in codec.plan.chain:
            level = levels.levels[period]
            a, b = np.searchsorted(level.codes, [code, code + 1]).tolist()
            matrix = codec._matrix(level)[a:b].astype("<i8")
            chunks += [struct.pack("<I", b - a), matrix.tobytes()]
            for key, pos in codec.binary:
                raw = [b"" if e is None else e for e in level.states[key][pos][a:b].tolist()]
                chunks += [struct.pack(f"<{len(raw)}I", *map(len, raw)), *raw]
            for key, pos, _ in codec.objects:
                values = level.states[key][pos][a:b].tolist()
                if values:
                    objects[f"{period}|{key[0]}|{key[1]}|{pos}"] = [
                        sorted(v, key=repr) if isinstance(v, frozenset) else v for v in values
                    ]
        if objects:
            body["obj"] = objects
        meta_bytes = json.dumps(body, separators=(",", ":")).encode()
        out.append(b"FS2" + struct.pack("<I", len(meta_bytes)) + meta_bytes + b"".join(chunks))
    return out


def _sketch_set():
    return FeatureSet(
        "s",
        [Entity("k")],
        "ts",
        "s",
        {"k": "string", "ts": "timestamp", "x": "float64", "m": "string"},
        [
            Aggregation("x", ["count", "approx_percentile(0.5)"], windows=["1h", "1d"]),
            Aggregation("m", ["approx_count_distinct", "top_k(2)", "last_k(3)", "first"], windows=["1d"]),
        ],
    )


def _levels_of(fs, n_entities=20, n=2000, seed=5):
    rng = np.random.default_rng(seed)
    now = 1_800_000_000_000
    x = rng.normal(0, 1, n)
    x[::7] = np.nan
    m = np.array([None if i % 11 == 0 else f"m{i % 13}" for i in range(n)], dtype=object)
    batch = EventBatch(rng.integers(0, n_entities, n), now - rng.integers(0, 2 * 86_400_000, n), np.arange(n), {"x": x, "m": m})
    return build_levels(fs.plan, batch), now


def test_state_written_by_the_previous_layout_reads_the_same():
    for fs in (make_set(), _sketch_set()):
        codec = EntityStateCodec(fs)
        levels, now = _levels_of(fs)
        metas = [{"offsets": {"0": i, "f1": 7}} for i in range(20)]
        old = _fs2_blobs(codec, levels, range(20), metas)
        new = codec.encode_all(levels, list(range(20)), [dict(m) for m in metas])
        assert all(len(b) <= len(a) for a, b in zip(old, new, strict=True))  # state bytes do not grow
        old_levels, old_metas = codec.decode_many([*old, None])
        new_levels, new_metas = codec.decode_many([*new, None])
        assert old_metas == new_metas and new_metas[3]["offsets"] == {"0": 3, "f1": 7}
        for at in (now, now + 3_600_000):
            q = np.arange(21)
            a = read(fs.plan, old_levels, q, np.full(21, at))
            b = read(fs.plan, new_levels, q, np.full(21, at))
            for name in a:
                assert [repr(v) for v in a[name].tolist()] == [repr(v) for v in b[name].tolist()], name
        reencoded = codec.encode_all(old_levels, list(range(20)), [dict(m) for m in old_metas[:20]])
        assert reencoded == new  # an old state is rewritten in the current layout, same content


def test_meta_entries_other_than_offsets_survive():
    fs = make_set()
    codec = EntityStateCodec(fs)
    levels, _ = _levels_of(fs, n_entities=2)
    blobs = codec.encode_all(levels, [0, 1], [{"offsets": {"0": 1}, "note": [1, "x"]}, {"note": None}])
    _, metas = codec.decode_many(blobs)
    assert metas[0]["offsets"] == {"0": 1} and metas[0]["note"] == [1, "x"]
    assert metas[1]["note"] is None and "offsets" not in metas[1]
