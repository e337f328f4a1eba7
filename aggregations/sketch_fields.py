"""Bounded-state fields: sketches (Apache DataSketches) and the exact last k values, mergeable like every field.

Each tile holds one element per field: ``None`` when no value reached it, else a compact state whose size
is bounded by the field's parameters whatever the input. Sketch elements are the library's serialized
bytes (immutable, what the codec stores); merges deserialize, merge and serialize again. The fields
follow the protocol of ``fields.py`` (zeros, lift, merge, reduce_groups, reduce_ranges, take) and add
``to_bytes``/``from_bytes`` for the codec's binary section.

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
import struct
from dataclasses import dataclass

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


def _objects(items) -> np.ndarray:
    """An object array holding ``items`` one per element (never broadcasting lists or tuples)."""
    items = list(items)
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


@dataclass(frozen=True)
class _BoundedField:
    """Shared vectorized plumbing; subclasses define ``_single`` (one value) and ``_combine`` (many states)."""

    name: str

    binary = True  # the codec stores elements through to_bytes/from_bytes

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
        return (_objects(self.combine(elements[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)),)

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

    def to_bytes(self, element) -> bytes:
        return element

    def from_bytes(self, blob: bytes):
        return blob

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
        items.sort(key=lambda item: (-item[1], item[0]))
        return [{"value": value, "count": count} for value, count in items[:k]]

    def max_error(self, element: bytes | None) -> float:
        """The library's a priori bound on any count's over-estimate for this sketch's total weight."""
        if element is None:
            return 0.0
        total = ds.frequent_strings_sketch.deserialize(element).total_weight
        return ds.frequent_strings_sketch.get_apriori_error(self.lg_max_k, total)


_ENTRY = struct.Struct("<qq")
_COUNT = struct.Struct("<H")
_LEN = struct.Struct("<I")
_FLOAT = struct.Struct("<d")


@dataclass(frozen=True)
class LastKField(_BoundedField):
    """The k latest non-null values by (event time, arrival sequence): a tuple of (ts, seq, value), latest first.

    Equal (ts, seq) pairs, which only a replay of the same event can produce, are ordered by value key, so
    the kept entries never depend on merge order.
    """

    name: str = "last_k:1"
    k: int = 1

    def _single(self, value, ts, seq):
        return ((ts, seq, value),)

    def _combine(self, present: list[tuple]) -> tuple:
        entries = [entry for element in present for entry in element]
        entries.sort(key=lambda e: (e[0], e[1], key_of(e[2])), reverse=True)
        return tuple(entries[: self.k])

    def values(self, element: tuple | None) -> list | None:
        """The kept values, latest first (None when empty)."""
        return None if element is None else [value for _ts, _seq, value in element]

    def to_bytes(self, element: tuple) -> bytes:
        """u16 n, n x (i64 ts, i64 seq), then n tagged values: ``f`` + float64 or ``s``/``j`` + u32 length + UTF-8."""
        chunks = [_COUNT.pack(len(element))]
        chunks += [_ENTRY.pack(ts, seq) for ts, seq, _ in element]
        for _ts, _seq, value in element:
            if isinstance(value, float):
                chunks.append(b"f" + _FLOAT.pack(value))
            else:
                tag, text = (b"s", value) if isinstance(value, str) else (b"j", json.dumps(value, default=str))
                raw = text.encode("utf-8", "surrogatepass")
                chunks.append(tag + _LEN.pack(len(raw)) + raw)
        return b"".join(chunks)

    def from_bytes(self, blob: bytes) -> tuple:
        (n,) = _COUNT.unpack_from(blob, 0)
        offset = _COUNT.size
        stamps = []
        for _ in range(n):
            stamps.append(_ENTRY.unpack_from(blob, offset))
            offset += _ENTRY.size
        values = []
        for _ in range(n):
            tag = blob[offset : offset + 1]
            offset += 1
            if tag == b"f":
                values.append(_FLOAT.unpack_from(blob, offset)[0])
                offset += _FLOAT.size
                continue
            (length,) = _LEN.unpack_from(blob, offset)
            offset += _LEN.size
            text = blob[offset : offset + length].decode("utf-8", "surrogatepass")
            offset += length
            values.append(text if tag == b"s" else json.loads(text))
        return tuple((ts, seq, value) for (ts, seq), value in zip(stamps, values, strict=True))


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
