"""Bounded-state fields: sketches (Apache DataSketches) and the exact last k values, mergeable like every field.

Each tile holds one element per field: ``None`` when no value reached it, else a compact state whose size
is bounded by the field's parameters whatever the input, kept as the bytes the codec stores (the sketch
library's serialization; ``encode_entries`` for last_k), so that tiles a batch does not touch are never
re-encoded; merges decode, merge and encode again. The fields follow the protocol of ``fields.py`` (zeros,
lift, merge, reduce_groups, reduce_ranges, take); ``binary = True`` tells the codec to store their
elements as length-prefixed bytes.

* ``CpcField`` (``cpc``): CPC distinct-count sketch, lg_k 11. Its estimate depends only on the set of
  values merged in, never on the order or grouping of merges: identical online and offline.
* ``KllField`` (``kll``): KLL quantiles sketch of doubles, k 200. Exact while it holds at most 200 values;
  beyond that it compacts at random, so two merge orders agree within the rank error, not bit for bit.
* ``FrequentField`` (``frequent:<lg>``): frequent items sketch with a map of 2^lg counters. Exact counts
  while at most 0.75 * 2^lg distinct values reach it; beyond that counts are over-estimates by at most
  ``3.5 / 2^lg`` of the total.
* ``LastKField`` (``last_k:<k>``): the k latest values by (event time, arrival), exact.

Values are hashed and counted by a type-tagged key (``key_of``): ``"s"`` + text for strings, ``"f"`` +
the shortest repr for numbers (the kernel carries numbers as float64, so 1 and 1.0 are one value), so
that an empty string counts as a value (DataSketches ignores empty strings).
"""

from __future__ import annotations

import json
import math
import operator
import struct
from dataclasses import dataclass
from itertools import pairwise

import datasketches as ds
import numpy as np

State = tuple[np.ndarray, ...]

CPC_LG_K = 11
KLL_K = 200

_NO_FALSE_NEGATIVES = ds.frequent_items_error_type.NO_FALSE_NEGATIVES


def key_of(value) -> str:
    """The type-tagged text a value is hashed and counted by (see the module docstring)."""
    if isinstance(value, str):
        return "s" + value
    if isinstance(value, float | int | np.floating | np.integer) and not isinstance(value, bool):
        return "f" + repr(float(value) + 0.0)  # + 0.0 makes -0.0 the same value as 0.0
    return "j" + json.dumps(value, sort_keys=True, default=str)


def value_of(key: str):
    """The value a key was made from (``key_of``'s inverse for strings and numbers)."""
    tag, body = key[0], key[1:]
    if tag == "s":
        return body
    if tag == "f":
        return float(body)
    return json.loads(body)


def _order(value) -> tuple:
    """Sort key of a value among values of one column: numbers by value, strings by code point, else by key."""
    if isinstance(value, float):
        return (0, value, "")
    if isinstance(value, str):
        return (1, 0.0, value)
    return (2, 0.0, key_of(value))


def _objects(items, count: int = -1) -> np.ndarray:
    """An object array holding ``items`` one per element (never broadcasting lists or tuples)."""
    return np.fromiter(items, dtype=object, count=count)


@dataclass(frozen=True)
class _BoundedField:
    """Shared vectorized plumbing; subclasses define ``_single`` (one value) and ``_combine`` (many states)."""

    name: str

    binary = True  # the codec stores elements as length-prefixed bytes

    def zeros(self, n: int, value_dtype=None) -> State:
        return (np.full(n, None, dtype=object),)

    def lift(self, values: np.ndarray, valid: np.ndarray, ts: np.ndarray, seq: np.ndarray) -> State:
        single = self._single
        return (
            _objects(
                single(v, t, s) if ok else None
                for v, ok, t, s in zip(values.tolist(), valid.tolist(), ts.tolist(), seq.tolist(), strict=True)
            ),
        )

    def merge(self, a: State, b: State) -> State:
        return (_objects(self.combine((x, y)) for x, y in zip(a[0], b[0], strict=True)),)

    def reduce_groups(self, s: State, starts: np.ndarray, ordered: bool = False) -> State:
        elements = s[0]
        if len(starts) == len(elements):  # one element per group: nothing to combine
            return (elements.copy(),)
        ends = np.append(starts[1:], len(elements))
        out = elements[starts]  # right for every group of one element
        for i in np.flatnonzero(ends - starts > 1).tolist():
            out[i] = self.combine(elements[starts[i] : ends[i]])
        return (out,)

    def reduce_ranges(self, s: State, lo: np.ndarray, hi: np.ndarray) -> State:
        elements = s[0]
        done: dict[tuple[int, int], object] = {}  # reads of one entity often share a range
        out = []
        for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
            if (a, b) not in done:
                done[(a, b)] = self.read_combine(elements[a:b]) if b > a else None
            out.append(done[(a, b)])
        return (_objects(out),)

    def read_groups(self, s: State, starts: np.ndarray) -> State:
        """What a read sees over each contiguous group of tiles (``read_combine``, as ``reduce_ranges``)."""
        elements = s[0]
        ends = [*starts[1:].tolist(), len(elements)]
        return (_objects(self.read_combine(elements[a:b]) if b > a else None for a, b in zip(starts.tolist(), ends, strict=True)),)

    def take(self, s: State, index: np.ndarray) -> State:
        return (s[0][index],)

    def read_combine(self, elements) -> object | None:
        """The state a read sees over a range of tiles (``combine`` unless a field reads differently)."""
        return self.combine(elements)

    def combine(self, elements) -> object | None:
        """One state holding everything in ``elements`` (None entries are empty states)."""
        present = [e for e in elements if e is not None]
        if not present:
            return None
        if len(present) == 1:
            return present[0]
        return self._combine(present)

    def _single(self, value, ts: int, seq: int):
        raise NotImplementedError

    def _combine(self, present: list):
        raise NotImplementedError


@dataclass(frozen=True)
class CpcField(_BoundedField):
    """CPC sketch of the distinct values (approx_count_distinct)."""

    name: str = "cpc"
    lg_k: int = CPC_LG_K

    def _single(self, value, ts, seq) -> bytes:
        sketch = ds.cpc_sketch(self.lg_k)
        sketch.update(key_of(value))
        return sketch.serialize()

    def _combine(self, present: list[bytes]) -> bytes:
        union = ds.cpc_union(self.lg_k)
        for blob in present:
            union.update(ds.cpc_sketch.deserialize(blob))
        return union.get_result().serialize()

    def estimate(self, element: bytes | None) -> float:
        """Distinct values estimated by the union estimator (the same for any merge order of the same values)."""
        if element is None:
            return 0.0
        union = ds.cpc_union(self.lg_k)
        union.update(ds.cpc_sketch.deserialize(element))
        return union.get_result().get_estimate()


@dataclass(frozen=True)
class KllField(_BoundedField):
    """KLL quantiles sketch of the numeric values (approx_percentile).

    Tiles hold serialized KLL sketches, merged by the library (which compacts at random beyond k values). A
    read does not merge: it takes the union of the tiles' retained items with their weights (``WeightedItems``),
    which is what a KLL merge would compact, so it is deterministic (the same state always reads the same),
    exact while every tile holds at most k values, and never less accurate than merging.
    """

    name: str = "kll"
    k: int = KLL_K

    def _single(self, value, ts, seq) -> bytes:
        sketch = ds.kll_doubles_sketch(self.k)
        sketch.update(float(value))
        return sketch.serialize()

    def _combine(self, present: list) -> bytes | WeightedItems:
        if any(isinstance(e, WeightedItems) for e in present):  # parts of one read (levels merged in kernel.read)
            return WeightedItems.union(present)
        sketch = ds.kll_doubles_sketch.deserialize(present[0])
        for blob in present[1:]:
            sketch.merge(ds.kll_doubles_sketch.deserialize(blob))
        return sketch.serialize()

    def read_combine(self, elements) -> WeightedItems | None:
        present = [e for e in elements if e is not None]
        return WeightedItems.union(present) if present else None

    def quantile(self, element: bytes | WeightedItems | None, q: float) -> float:
        """The smallest value whose weight at or below it reaches ceil(q n) (NaN when empty)."""
        if element is None:
            return math.nan
        if not isinstance(element, WeightedItems):
            element = WeightedItems.union([element])
        return element.quantile(q)


_KLL_EMPTY, _KLL_SINGLE = 1, 4  # KLL serialization flags (byte 3)
QUANTILE_SCALE = 10_000  # quantiles have at most 4 decimals (ops.MAX_QUANTILE_DECIMALS)


def kll_items(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The retained items of a serialized KLL doubles sketch and their weights (2^level).

    DataSketches' KLL format: 8 bytes of preamble (flags in byte 3); a single item follows at byte 8; a full
    sketch has n (u64), min_k (u16), the number of levels L (u8) and a spare byte, then L u32 level offsets,
    the min and max items, then the items from level 0 up (tests check this against the library's iterator).
    """
    flags = blob[3]
    if flags & _KLL_EMPTY:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    if flags & _KLL_SINGLE:
        return np.frombuffer(blob, dtype="<f8", count=1, offset=8), _ONES[:1]
    levels = blob[18]
    offsets = struct.unpack_from(f"<{levels}I", blob, 20)
    items = np.frombuffer(blob, dtype="<f8", offset=20 + 4 * levels + 16)
    if levels == 1:
        return items, (_ONES[: len(items)] if len(items) <= len(_ONES) else np.ones(len(items), dtype=np.int64))
    ends = [*(o - offsets[0] for o in offsets[1:]), len(items)]
    sizes = [ends[0], *(b - a for a, b in pairwise(ends))]
    return items, np.repeat(_POWERS[:levels], sizes)


_ONES = np.ones(4096, dtype=np.int64)
_POWERS = np.int64(1) << np.arange(62, dtype=np.int64)


class WeightedItems:
    """Weighted items of KLL tiles, united without compaction: what a read of a window sees."""

    __slots__ = ("_cumulative", "_sorted", "values", "weights")

    def __init__(self, values: np.ndarray, weights: np.ndarray):
        self.values, self.weights = values, weights
        self._sorted = self._cumulative = None

    @classmethod
    def union(cls, elements) -> WeightedItems:
        """Items of serialized sketches and of other unions, together."""
        parts = [(e.values, e.weights) if isinstance(e, WeightedItems) else kll_items(e) for e in elements]
        if len(parts) == 1:
            return cls(*parts[0])
        return cls(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def quantile(self, q: float) -> float:
        """The smallest item whose cumulative weight reaches ceil(q n): the inverted CDF, exact while no tile
        compacted. q's decimals are taken exactly (0.9 of 10 values is rank 9, never 10 by rounding)."""
        if self._sorted is None:
            if (self.weights == 1).all():  # no tile compacted: every item is one value
                self._sorted = np.sort(self.values)
                self._cumulative = np.arange(1, len(self._sorted) + 1)
            else:
                order = np.argsort(self.values)
                self._sorted = self.values[order]
                self._cumulative = np.cumsum(self.weights[order])
        total = int(self._cumulative[-1])
        target = max(-(-round(q * QUANTILE_SCALE) * total // QUANTILE_SCALE), 1)
        index = int(np.searchsorted(self._cumulative, target, side="left"))
        return float(self._sorted[min(index, len(self._sorted) - 1)])


@dataclass(frozen=True)
class FrequentField(_BoundedField):
    """Frequent items sketch with a map of 2^lg_max_k counters (top_k).

    Tiles hold serialized sketches, merged by the library (which purges small counters once more distinct
    values arrive than the map holds). A read does not merge: it adds up the tiles' counts (``ItemCounts``),
    so it is exact while every tile is, and keeps the sketch's guarantee otherwise.
    """

    name: str = "frequent:6"
    lg_max_k: int = 6

    def _single(self, value, ts, seq) -> bytes:
        sketch = ds.frequent_strings_sketch(self.lg_max_k)
        sketch.update(key_of(value))
        return sketch.serialize()

    def _combine(self, present: list) -> bytes | ItemCounts:
        if any(isinstance(e, ItemCounts) for e in present):  # parts of one read (levels merged in kernel.read)
            return ItemCounts.union(present)
        sketch = ds.frequent_strings_sketch.deserialize(present[0])
        for blob in present[1:]:
            sketch.merge(ds.frequent_strings_sketch.deserialize(blob))
        return sketch.serialize()

    def read_combine(self, elements) -> ItemCounts | None:
        present = [e for e in elements if e is not None]
        return ItemCounts.union(present) if present else None

    def top(self, element: bytes | ItemCounts | None, k: int) -> list[dict] | None:
        """The k values of highest estimated count, ties by value, as ``{"value", "count"}`` (None when empty)."""
        if element is None:
            return None
        if not isinstance(element, ItemCounts):
            element = ItemCounts.union([element])
        estimates = element.estimates()
        keys = list(estimates)
        if len(keys) > k:  # only values counted at least as often as the k-th can make the list
            counts = np.fromiter(estimates.values(), dtype=np.int64, count=len(keys))
            floor = np.partition(counts, len(counts) - k)[len(counts) - k]
            keys = [keys[i] for i in np.flatnonzero(counts >= floor).tolist()]
        items = [(value_of(key), estimates[key]) for key in keys]
        items.sort(key=lambda item: (-item[1], _order(item[0])))
        return [{"value": value, "count": count} for value, count in items[:k]]


class ItemCounts:
    """Frequent-items tiles added up without purging: what a read of a window sees.

    Per tile, a tracked value's count is within [lower bound, lower bound + offset] and an untracked value's
    is at most the offset (0 for a tile that never purged). So across tiles a value's count is within
    [sum of its lower bounds, that + the sum of the offsets]: the estimate reported is the upper end, which
    over-counts by at most the offsets' sum (the sketch's a priori error of the total), and is exact while
    no tile purged. Deterministic: the same tiles always give the same counts.
    """

    __slots__ = ("lower", "offset")

    def __init__(self, lower: dict[str, int], offset: int):
        self.lower, self.offset = lower, offset

    @classmethod
    def union(cls, elements) -> ItemCounts:
        lower: dict[str, int] = {}
        offset = 0
        for element in elements:
            if isinstance(element, ItemCounts):
                pairs, tile_offset = element.lower.items(), element.offset
            else:
                sketch = ds.frequent_strings_sketch.deserialize(element)
                tile_offset = int(sketch.get_upper_bound(""))  # "" is never a key (keys carry a type tag)
                pairs = [(key, int(lo)) for key, _est, lo, _hi in sketch.get_frequent_items(_NO_FALSE_NEGATIVES, 0)]
            get = lower.get
            for key, count in pairs:
                lower[key] = get(key, 0) + count
            offset += tile_offset
        return cls(lower, offset)

    def estimates(self) -> dict[str, int]:
        """Each tracked value's estimated count (an upper bound on the true count)."""
        return {key: count + self.offset for key, count in self.lower.items()}


_HEAD = struct.Struct("<cH")  # value kind, number of entries
_stamp = operator.itemgetter(0, 1)


@dataclass(frozen=True)
class LastKField(_BoundedField):
    """The k latest non-null values by (event time, arrival sequence), latest first, exact.

    An element is the encoding of up to k (ts, seq, value) entries (``encode_entries``), kept as bytes like
    the sketches' so that tiles a batch does not touch are never re-encoded. Equal (ts, seq) pairs, which
    only a replay of the same event can produce, are ordered by value key, so the kept entries never depend
    on merge order.
    """

    name: str = "last_k:1"
    k: int = 1

    def _single(self, value, ts, seq) -> bytes:
        return encode_entries(((ts, seq, value),))

    def _combine(self, present: list[bytes]) -> bytes:
        # Elements are usually disjoint in time (tiles, or a batch newer than what is stored): walking them
        # newest first, an element entirely older than what is kept is appended by slicing bytes, and the
        # walk stops once k entries are kept and the rest is older. Overlapping elements are merged in full.
        ordered = sorted(present, key=_newest, reverse=True)
        acc = ordered[0]
        for element in ordered[1:]:
            room = self.k - _count(acc)
            if _oldest(acc) > _newest(element):
                if room <= 0:
                    break
                acc = _append_older(acc, element, room)
            else:
                acc = self._merge_entries([acc, element])
        return acc

    def _merge_entries(self, present: list[bytes]) -> bytes:
        entries = [entry for element in present for entry in decode_entries(element)]
        entries.sort(key=_stamp, reverse=True)
        kept = entries[: self.k + 1]
        if any(a[:2] == b[:2] for a, b in pairwise(kept)):  # a replayed event: order ties by value
            entries.sort(key=lambda e: (e[0], e[1], key_of(e[2])), reverse=True)
        return encode_entries(entries[: self.k])

    def values(self, element: bytes | None) -> list | None:
        """The kept values, latest first (None when empty)."""
        return None if element is None else [value for _ts, _seq, value in decode_entries(element)]


_HEAD = struct.Struct("<cH")  # value kind, number of entries
_stamp = operator.itemgetter(0, 1)


def encode_entries(entries) -> bytes:
    """(ts, seq, value) entries as: kind (``F`` floats, ``S`` strings, ``J`` JSON), u16 n, n x (i64 ts, i64
    seq), then the values: n float64, or n u32 UTF-8 lengths and the texts, or one JSON array."""
    n = len(entries)
    stamps = [x for ts, seq, _ in entries for x in (ts, seq)]
    values = [v for _, _, v in entries]
    if all(type(v) is float for v in values):
        return struct.pack(f"<cH{2 * n}q{n}d", b"F", n, *stamps, *values)
    if all(type(v) is str for v in values):
        texts = [v.encode("utf-8", "surrogatepass") for v in values]
        return struct.pack(f"<cH{2 * n}q{n}I", b"S", n, *stamps, *map(len, texts)) + b"".join(texts)
    tail = json.dumps(values, default=str).encode("utf-8", "surrogatepass")
    return struct.pack(f"<cH{2 * n}q", b"J", n, *stamps) + tail


_N = struct.Struct("<H")
_STAMP = struct.Struct("<qq")


def _count(blob: bytes) -> int:
    return _N.unpack_from(blob, 1)[0]


def _newest(blob: bytes) -> tuple[int, int]:
    return _STAMP.unpack_from(blob, _HEAD.size)


def _oldest(blob: bytes) -> tuple[int, int]:
    return _STAMP.unpack_from(blob, _HEAD.size + 16 * (_count(blob) - 1))


def _append_older(newer: bytes, older: bytes, room: int) -> bytes:
    """``newer``'s entries then up to ``room`` of ``older``'s (all older), by slicing the encodings."""
    kind, n1 = _HEAD.unpack_from(newer, 0)
    kind2, n2 = _HEAD.unpack_from(older, 0)
    m = min(room, n2)
    if kind != kind2 or kind == b"J":
        return encode_entries(decode_entries(newer) + decode_entries(older)[:m])
    h = _HEAD.size
    stamps = newer[h : h + 16 * n1] + older[h : h + 16 * m]
    v1, v2 = h + 16 * n1, h + 16 * n2
    if kind == b"F":
        values = newer[v1 : v1 + 8 * n1] + older[v2 : v2 + 8 * m]
    else:
        lengths2 = older[v2 : v2 + 4 * m]
        text2 = v2 + 4 * n2
        values = (
            newer[v1 : v1 + 4 * n1] + lengths2 + newer[v1 + 4 * n1 :]
            + older[text2 : text2 + sum(struct.unpack(f"<{m}I", lengths2))]
        )  # fmt: skip
    return _HEAD.pack(kind, n1 + m) + stamps + values


def decode_entries(blob: bytes) -> list[tuple]:
    """``encode_entries``' inverse."""
    kind, n = _HEAD.unpack_from(blob, 0)
    offset = _HEAD.size
    stamps = struct.unpack_from(f"<{2 * n}q", blob, offset)
    offset += 16 * n
    if kind == b"F":
        values = struct.unpack_from(f"<{n}d", blob, offset)
    elif kind == b"S":
        lengths = struct.unpack_from(f"<{n}I", blob, offset)
        offset += 4 * n
        values = []
        for length in lengths:
            values.append(blob[offset : offset + length].decode("utf-8", "surrogatepass"))
            offset += length
    else:
        values = json.loads(blob[offset:].decode("utf-8", "surrogatepass"))
    return list(zip(stamps[0::2], stamps[1::2], values, strict=True))


def parametrized_field(name: str):
    """The field named ``family:parameter`` (``frequent:7``, ``last_k:5``), or None for another name."""
    family, _, param = name.partition(":")
    if not param.isdigit():
        return None
    if family == "frequent":
        return FrequentField(name, int(param))
    if family == "last_k":
        return LastKField(name, int(param))
    return None
