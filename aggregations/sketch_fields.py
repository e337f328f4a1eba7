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
                done[(a, b)] = self.combine(elements[a:b]) if b > a else None
            out.append(done[(a, b)])
        return (_objects(out),)

    def take(self, s: State, index: np.ndarray) -> State:
        return (s[0][index],)

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
    """KLL quantiles sketch of the numeric values (approx_percentile)."""

    name: str = "kll"
    k: int = KLL_K

    def _single(self, value, ts, seq) -> bytes:
        sketch = ds.kll_doubles_sketch(self.k)
        sketch.update(float(value))
        return sketch.serialize()

    def _combine(self, present: list[bytes]) -> bytes:
        sketch = ds.kll_doubles_sketch.deserialize(present[0])
        for blob in present[1:]:
            sketch.merge(ds.kll_doubles_sketch.deserialize(blob))
        return sketch.serialize()

    def quantile(self, element: bytes | None, q: float) -> float:
        """The smallest retained value whose inclusive normalized rank is at least q (NaN when empty)."""
        if element is None:
            return math.nan
        return ds.kll_doubles_sketch.deserialize(element).get_quantile(q, True)


@dataclass(frozen=True)
class FrequentField(_BoundedField):
    """Frequent items sketch with a map of 2^lg_max_k counters (top_k)."""

    name: str = "frequent:6"
    lg_max_k: int = 6

    def _single(self, value, ts, seq) -> bytes:
        sketch = ds.frequent_strings_sketch(self.lg_max_k)
        sketch.update(key_of(value))
        return sketch.serialize()

    def _combine(self, present: list[bytes]) -> bytes:
        sketch = ds.frequent_strings_sketch.deserialize(present[0])
        for blob in present[1:]:
            sketch.merge(ds.frequent_strings_sketch.deserialize(blob))
        return sketch.serialize()

    def top(self, element: bytes | None, k: int) -> list[dict] | None:
        """The k values of highest estimated count, ties by value, as ``{"value", "count"}`` (None when empty)."""
        if element is None:
            return None
        sketch = ds.frequent_strings_sketch.deserialize(element)
        items = [(value_of(key), int(estimate)) for key, estimate, _lo, _hi in sketch.get_frequent_items(_NO_FALSE_NEGATIVES, 0)]
        items.sort(key=lambda item: (-item[1], _order(item[0])))
        return [{"value": value, "count": count} for value, count in items[:k]]

    def max_error(self, element: bytes | None) -> float:
        """The library's a priori bound on any count's over-estimate for this sketch's total weight."""
        if element is None:
            return 0.0
        total = ds.frequent_strings_sketch.deserialize(element).total_weight
        return ds.frequent_strings_sketch.get_apriori_error(self.lg_max_k, total)


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
