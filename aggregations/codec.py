"""Bytes for one entity's online state (its tiles at every level plus metadata), and back.

Layout: b"FS2" | u32 meta length | meta JSON | per level of the chain: u32 n | n rows of
(1 + k) little-endian 8-byte words: the tile index, then each numeric field array of the plan
in plan order (floats stored by their bit pattern), then, for each array of a binary field (sketches,
last-k values; ``binary = True``), n u32 lengths (0 = empty) followed by the n elements' bytes. Row-major
tiles let a whole batch of entities decode with one ``frombuffer`` per level. Other object arrays (string
first/last values, distinct sets) travel in the meta JSON, and so do plain features' candidate events
(``latest``: times, sequence numbers and Python values, so ints stay ints). The meta carries the definition
fingerprint, so state of a changed definition is never read by accident, and free-form entries (e.g. applied source offsets).
Deliberately not pickle: the changelog topic must not be able to run code.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import numpy as np

from . import latest as plain
from .definitions import FeatureSet
from .fields import FIELDS
from .kernel import Level, Levels

MAGIC = b"FS2"
LATEST_META = "latest"  # meta entry: plain features' candidate events (aggregations.latest.encode)
_U32 = struct.Struct("<I")
_WORD = np.dtype("<i8")


class StateMismatch(ValueError):
    """Stored state was written by a different feature set definition (or is not tile state)."""


class EntityStateCodec:
    """Encodes and decodes per-entity tile state for one FeatureSet."""

    def __init__(self, feature_set: FeatureSet):
        self.feature_set = feature_set
        self.plan = feature_set.plan
        self.fingerprint = feature_set.fingerprint()
        self.keys = [(c, f) for c, fs in self.plan.fields_by_column.items() for f in fs]
        kinds = {
            c: ("O" if feature_set.schema.get(c) == "string" else "f") for c in self.plan.fields_by_column
        }
        self.value_dtype = {c: (object if k == "O" else np.float64) for c, k in kinds.items()}
        # (key, array position, dtype) of every array; numeric ones are 8-byte words, object ones go to JSON.
        self.arrays = []
        self.binary = []  # (key, array position) of the arrays of binary fields, stored as length-prefixed bytes
        for column, field in self.keys:
            binary = getattr(FIELDS[field], "binary", False)
            for pos, arr in enumerate(FIELDS[field].zeros(0, self.value_dtype[column])):
                if binary:
                    self.binary.append(((column, field), pos))
                    continue
                if arr.dtype.kind != "O" and arr.dtype.itemsize != 8:
                    raise TypeError(f"codec stores 8-byte words, field {field} has {arr.dtype}")
                self.arrays.append(((column, field), pos, arr.dtype))
        self.numeric = [a for a in self.arrays if a[2].kind != "O"]
        self.objects = [a for a in self.arrays if a[2].kind == "O"]
        self.width = 1 + len(self.numeric)

    # -- encoding ---------------------------------------------------------------------------------------

    def _matrix(self, level: Level) -> np.ndarray:
        """Tiles of a level as an (n, width) matrix of 8-byte words, row per tile."""
        columns = [level.index.astype(np.int64, copy=False)]
        columns += [
            level.states[key][pos].astype(dtype, copy=False).view(np.int64)
            for key, pos, dtype in self.numeric
        ]
        return np.ascontiguousarray(np.column_stack(columns).astype(_WORD, copy=False))

    def encode(self, levels: Levels, code: int, meta: dict | None = None) -> bytes:
        """One entity's tiles (the rows of ``code`` in ``levels``) as bytes."""
        return self.encode_all(levels, [code], [meta or {}])[0]

    def encode_all(self, levels: Levels, codes: Sequence[int], metas: Sequence[dict]) -> list[bytes]:
        """Encode many entities at once (``levels`` sorted by code, as the kernel keeps them)."""
        per_level = []
        for period in self.plan.chain:
            level = levels.levels[period]
            lo = np.searchsorted(level.codes, codes, side="left")
            hi = np.searchsorted(level.codes, codes, side="right")
            binary = {}
            if self.binary and len(codes):
                first, last = int(lo.min()), int(hi.max())
                for key, pos in self.binary:
                    binary[(key, pos)] = _binary_elements(level.states[key][pos], first, last)
            per_level.append((period, level, self._matrix(level), lo, hi, binary))
        out = []
        for i, meta in enumerate(metas):
            body = dict(meta)
            body["fp"] = self.fingerprint
            chunks: list[bytes] = []
            objects: dict[str, list] = {}
            for period, level, matrix, lo, hi, binary in per_level:
                a, b = int(lo[i]), int(hi[i])
                chunks.append(_U32.pack(b - a))
                chunks.append(matrix[a:b].tobytes())
                for first, lengths, raw in binary.values():
                    chunks.append(lengths[a - first : b - first].tobytes())
                    chunks.extend(raw[a - first : b - first])
                for key, pos, _ in self.objects:
                    values = level.states[key][pos][a:b].tolist()
                    if values:
                        objects[f"{period}|{key[0]}|{key[1]}|{pos}"] = [_jsonable(v) for v in values]
            if objects:
                body["obj"] = objects
            if self.plan.latest and levels.latest is not None:  # plain features' candidate events
                candidates = plain.encode(levels.latest, int(codes[i]))
                if candidates:
                    body[LATEST_META] = candidates
            meta_bytes = json.dumps(body, separators=(",", ":")).encode()
            out.append(MAGIC + _U32.pack(len(meta_bytes)) + meta_bytes + b"".join(chunks))
        return out

    # -- decoding ---------------------------------------------------------------------------------------

    def decode_meta(self, blob: bytes) -> tuple[dict, int]:
        """The meta of one state blob and the offset where its tiles begin; checks the fingerprint."""
        if blob[:3] != MAGIC:
            raise StateMismatch("state is not featurestream tile state of this format (bad magic)")
        (n,) = _U32.unpack_from(blob, 3)
        meta = json.loads(blob[7 : 7 + n])
        if meta.get("fp") != self.fingerprint:
            raise StateMismatch(
                f"state of feature set {self.feature_set.name!r} was written by definition {meta.get('fp')}, "
                f"current definition is {self.fingerprint}"
            )
        return meta, 7 + n

    def decode_many(self, blobs: Sequence[bytes | None]) -> tuple[Levels, list[dict]]:
        """Decode entities' states into one ``Levels`` with code i for blobs[i] (None = no state yet)."""
        row_bytes = 8 * self.width
        slices: dict[int, list[bytes]] = {p: [] for p in self.plan.chain}
        counts: dict[int, list[int]] = {p: [] for p in self.plan.chain}
        owners: dict[int, list[int]] = {p: [] for p in self.plan.chain}
        objects_by_level: dict[int, dict] = {p: {} for p in self.plan.chain}
        binary_by_level: dict[int, dict] = {p: {k: [] for k in self.binary} for p in self.plan.chain}
        metas = []
        latest_entries: list[dict | None] = [None] * len(blobs)
        for code, blob in enumerate(blobs):
            if blob is None:
                metas.append({})
                continue
            meta, offset = self.decode_meta(blob)
            objects = meta.pop("obj", None)
            latest_entries[code] = meta.pop(LATEST_META, None)
            metas.append(meta)
            for period in self.plan.chain:
                (n,) = _U32.unpack_from(blob, offset)
                offset += 4
                slices[period].append(blob[offset : offset + n * row_bytes])
                offset += n * row_bytes
                for key, pos in self.binary:
                    offset = _read_binary(blob, offset, n, binary_by_level[period][(key, pos)])
                counts[period].append(n)
                owners[period].append(code)
                if self.objects:
                    for key, pos, _ in self.objects:
                        name = f"{period}|{key[0]}|{key[1]}|{pos}"
                        values = objects.get(name) if objects else None
                        objects_by_level[period].setdefault((key, pos), []).extend(values or [None] * n)
        levels = {}
        for period in self.plan.chain:
            matrix = np.frombuffer(b"".join(slices[period]), dtype=_WORD).reshape(-1, self.width)
            codes = np.repeat(np.asarray(owners[period], np.int64), np.asarray(counts[period], np.int64))
            arrays = {}
            for j, (key, pos, dtype) in enumerate(self.numeric, start=1):
                arrays[(key, pos)] = matrix[:, j].astype(np.int64).view(dtype)
            for key, pos, _ in self.objects:
                values = objects_by_level[period].get((key, pos), [])
                arr = np.empty(len(values), dtype=object)
                arr[:] = [frozenset(v) if key[1] == "distinct" and v is not None else v for v in values]
                arrays[(key, pos)] = arr
            for key, pos in self.binary:
                values = binary_by_level[period][(key, pos)]
                arr = np.empty(len(values), dtype=object)
                for i, value in enumerate(values):
                    arr[i] = value
                arrays[(key, pos)] = arr
            states = {
                key: tuple(
                    arrays[(key, pos)]
                    for pos in range(len(FIELDS[key[1]].zeros(0, self.value_dtype[key[0]])))
                )
                for key in self.keys
            }
            levels[period] = Level(period, codes, matrix[:, 0].astype(np.int64), states)
        return Levels(levels, plain.decode(self.plan, latest_entries)), metas


def _binary_elements(elements: np.ndarray, first: int, last: int) -> tuple[int, np.ndarray, list[bytes]]:
    """Rows [first, last) of a binary field's array (bytes or None) as (first, u32 lengths, bytes): an
    entity's chunk is its rows' lengths (0 for an empty element) followed by their bytes."""
    raw = [b"" if e is None else e for e in elements[first:last].tolist()]
    return first, np.fromiter(map(len, raw), dtype="<u4", count=len(raw)), raw


def _read_binary(blob: bytes, offset: int, n: int, into: list) -> int:
    """Append the n elements of a binary chunk at ``offset`` to ``into``; returns the offset after it."""
    if n == 0:
        return offset
    lengths = struct.unpack_from(f"<{n}I", blob, offset)
    offset += 4 * n
    for length in lengths:
        into.append(None if length == 0 else blob[offset : offset + length])
        offset += length
    return offset


def _jsonable(value):
    if isinstance(value, frozenset | set):
        return sorted(value, key=repr)
    if isinstance(value, float) and value != value:
        return None
    return value
