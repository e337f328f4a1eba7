"""Bytes for one entity's online state (its tiles at every level plus metadata), and back.

Layout: b"FS1" | u32 meta length | meta JSON | per level of the chain: u32 n | int64 tile index[n] |
each numeric field array of the plan, in plan order. Object arrays (string first/last values,
distinct sets) travel in the meta JSON. The meta carries the definition fingerprint, so state of a
changed definition is never read by accident, and free-form entries (e.g. applied source offsets).
Deliberately not pickle: the changelog topic must not be able to run code.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import numpy as np

from .definitions import FeatureSet
from .fields import FIELDS
from .kernel import Level, Levels

MAGIC = b"FS1"
_U32 = struct.Struct("<I")


class StateMismatch(ValueError):
    """Stored state was written by a different feature set definition."""


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
        # (key, array position, dtype) of every array; object arrays go to the JSON meta.
        self.arrays = []
        for column, field in self.keys:
            for pos, arr in enumerate(FIELDS[field].zeros(0, self.value_dtype[column])):
                self.arrays.append(((column, field), pos, arr.dtype))

    def encode(self, levels: Levels, code: int, meta: dict | None = None, bounds=None) -> bytes:
        """One entity's tiles (rows of ``code`` in ``levels``) as bytes; ``bounds`` = per-level row slices."""
        body = dict(meta or {})
        body["fp"] = self.fingerprint
        objects: dict[str, list] = {}
        chunks: list[bytes] = []
        for period in self.plan.chain:
            level = levels.levels[period]
            lo, hi = bounds[period] if bounds else _slice(level.codes, code)
            chunks.append(_U32.pack(hi - lo))
            chunks.append(level.index[lo:hi].astype(np.int64).tobytes())
            for key, pos, dtype in self.arrays:
                arr = level.states[key][pos][lo:hi]
                if dtype.kind == "O":
                    objects[f"{period}|{key[0]}|{key[1]}|{pos}"] = [_jsonable(v) for v in arr.tolist()]
                else:
                    chunks.append(np.ascontiguousarray(arr, dtype=dtype).tobytes())
        if objects:
            body["obj"] = objects
        meta_bytes = json.dumps(body, separators=(",", ":")).encode()
        return MAGIC + _U32.pack(len(meta_bytes)) + meta_bytes + b"".join(chunks)

    def encode_all(self, levels: Levels, codes: Sequence[int], metas: Sequence[dict]) -> list[bytes]:
        """Encode many entities at once (levels sorted by code)."""
        out = []
        edges = {}
        for period, level in levels.levels.items():
            edges[period] = (
                np.searchsorted(level.codes, codes, side="left"),
                np.searchsorted(level.codes, codes, side="right"),
            )
        for i, (code, meta) in enumerate(zip(codes, metas, strict=True)):
            bounds = {p: (int(e[0][i]), int(e[1][i])) for p, e in edges.items()}
            out.append(self.encode(levels, code, meta, bounds))
        return out

    def decode_meta(self, blob: bytes) -> tuple[dict, int]:
        if blob[:3] != MAGIC:
            raise StateMismatch("state is not featurestream tile state (bad magic)")
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
        parts: dict[int, list] = {p: [] for p in self.plan.chain}
        metas = []
        for code, blob in enumerate(blobs):
            if blob is None:
                metas.append({})
                continue
            meta, offset = self.decode_meta(blob)
            objects = meta.pop("obj", {})
            metas.append(meta)
            for period in self.plan.chain:
                (n,) = _U32.unpack_from(blob, offset)
                offset += 4
                index = np.frombuffer(blob, np.int64, n, offset)
                offset += 8 * n
                arrays = {}
                for key, pos, dtype in self.arrays:
                    if dtype.kind == "O":
                        arr = np.empty(n, dtype=object)
                        values = objects.get(f"{period}|{key[0]}|{key[1]}|{pos}", [None] * n)
                        arr[:] = [frozenset(v) if key[1] == "distinct" else v for v in values]
                    else:
                        arr = np.frombuffer(blob, dtype, n, offset)
                        offset += dtype.itemsize * n
                    arrays[(key, pos)] = arr
                parts[period].append((np.full(n, code, np.int64), index, arrays))
        return self._assemble(parts), metas

    def _assemble(self, parts) -> Levels:
        levels = {}
        for period in self.plan.chain:
            chunks = parts[period]
            states = {}
            for key in self.keys:
                zeros = FIELDS[key[1]].zeros(0, self.value_dtype[key[0]])
                states[key] = tuple(
                    np.concatenate([z] + [c[2][(key, pos)] for c in chunks]) if chunks else z
                    for pos, z in enumerate(zeros)
                )
            codes = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, np.int64)
            index = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros(0, np.int64)
            levels[period] = Level(period, codes, index, states)
        return Levels(levels)


def _slice(codes: np.ndarray, code: int) -> tuple[int, int]:
    return int(np.searchsorted(codes, code, "left")), int(np.searchsorted(codes, code, "right"))


def _jsonable(value):
    if isinstance(value, frozenset | set):
        return sorted(value, key=repr)
    if isinstance(value, float) and value != value:
        return None
    return value
