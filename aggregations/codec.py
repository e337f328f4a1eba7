"""Bytes for one entity's online state (its tiles at every level plus metadata), and back.

Layout (``FS3``), little-endian throughout::

    b"FS3" | fingerprint (8 bytes) | u8 slots, per slot: u8 name length, name, i64 applied offset
          | u32 extra length, extra JSON | u32 tile count per level of the chain
          | rows: every tile as (1 + k) 8-byte words, level by level (largest period first), each by tile index
          | per level, per array of a binary field: the level's u32 lengths (0 = empty), then the elements' bytes

A row holds the tile index, then each numeric field array of the plan in plan order (floats stored by
their bit pattern). The rows of an entity are contiguous, so a read takes them with one ``frombuffer`` and
a batch of entities is encoded with one gather (no per-level, per-entity loops). Binary fields are the
sketches and last-k values (``binary = True``). Other object arrays (string first/last values, distinct
sets), plain features' candidate events (``latest``: times, sequence numbers and Python values, so ints
stay ints) and any meta entry other than the applied offsets travel in the extra JSON, which is empty for
purely numeric sets. The fingerprint is the definition's, so state of a changed definition is never read
by accident. Deliberately not pickle: the changelog topic must not be able to run code.

The previous layout (``FS2``: a JSON meta, then per level a u32 count, rows and binary chunks) is still
decoded, so state written by an earlier release is read and rewritten as FS3 when its entity next changes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import latest as plain
from .bookkeeping import OFFSETS_META
from .definitions import FeatureSet
from .fields import FIELDS
from .kernel import Level, Levels

MAGIC = b"FS3"
MAGIC_FS2 = b"FS2"
LATEST_META = "latest"  # extra entry: plain features' candidate events (aggregations.latest.encode)
OBJECTS_META = "obj"  # extra entry: object arrays (string first/last values, distinct sets) per level
FINGERPRINT_META = "fp"  # decoded meta entry: the definition fingerprint the state was written by
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_WORD = np.dtype("<i8")
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_NOT_EXTRA = frozenset({OFFSETS_META, FINGERPRINT_META})  # stored in the header, not in the extra JSON
_NO_EXTRA = b"\x00\x00\x00\x00"  # an extra JSON length of 0


class StateMismatch(ValueError):
    """Stored state was written by a different feature set definition (or is not tile state)."""


@dataclass
class EntityRows:
    """Decoded tiles of n entities in the codec's row layout: ``matrix`` rows ordered by (entity, level of
    the chain, tile index); ``counts[i, l]`` tiles of entity i at level l. ``objects`` and ``binary`` hold the
    object and binary arrays row-aligned with ``matrix``; ``latest`` each entity's plain candidates."""

    matrix: np.ndarray
    counts: np.ndarray
    metas: list[dict]
    objects: dict = field(default_factory=dict)
    binary: dict = field(default_factory=dict)
    latest: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.counts)


class EntityStateCodec:
    """Encodes and decodes per-entity tile state for one FeatureSet."""

    def __init__(self, feature_set: FeatureSet):
        self.feature_set = feature_set
        self.plan = feature_set.plan
        self.fingerprint = feature_set.fingerprint()
        self._fp_bytes = bytes.fromhex(self.fingerprint)
        self._prefix = MAGIC + self._fp_bytes
        self.levels = len(self.plan.chain)
        self._counts_format = struct.Struct(f"<{self.levels}I")
        self.keys = [(c, f) for c, fs in self.plan.fields_by_column.items() for f in fs]
        kinds = {
            c: ("O" if feature_set.schema.get(c) == "string" else "f") for c in self.plan.fields_by_column
        }
        self.value_dtype = {c: (object if k == "O" else np.float64) for c, k in kinds.items()}
        # (key, array position, dtype) of every array; numeric ones are 8-byte words, object ones go to JSON.
        self.arrays = []
        self.binary = []  # (key, array position) of the arrays of binary fields, stored as length-prefixed bytes
        self.array_count = {}
        for column, name in self.keys:
            binary = getattr(FIELDS[name], "binary", False)
            zeros = FIELDS[name].zeros(0, self.value_dtype[column])
            self.array_count[(column, name)] = len(zeros)
            for pos, arr in enumerate(zeros):
                if binary:
                    self.binary.append(((column, name), pos))
                    continue
                if arr.dtype.kind != "O" and arr.dtype.itemsize != 8:
                    raise TypeError(f"codec stores 8-byte words, field {name} has {arr.dtype}")
                self.arrays.append(((column, name), pos, arr.dtype))
        self.numeric = [a for a in self.arrays if a[2].kind != "O"]
        self.objects = [a for a in self.arrays if a[2].kind == "O"]
        self.width = 1 + len(self.numeric)
        self.column_of = {(key, pos): (j, dtype) for j, (key, pos, dtype) in enumerate(self.numeric, start=1)}
        self.identity = self._identity_row()

    def _identity_row(self) -> np.ndarray:
        """The row of an empty tile (every field's ``zeros``): what a range without tiles reduces to."""
        row = np.zeros(self.width, dtype=np.int64)
        for (key, pos, dtype), j in zip(self.numeric, range(1, self.width), strict=True):
            row[j] = FIELDS[key[1]].zeros(1, self.value_dtype[key[0]])[pos].astype(dtype).view(np.int64)[0]
        return row

    def empty_element(self, key, pos):
        """The element of an empty tile in an object or binary array."""
        return FIELDS[key[1]].zeros(1, self.value_dtype[key[0]])[pos][0]

    # -- encoding ---------------------------------------------------------------------------------------

    def _matrix(self, level: Level) -> np.ndarray:
        """Tiles of a level as an (n, width) matrix of 8-byte words, row per tile."""
        out = np.empty((len(level), self.width), dtype=np.int64)
        out[:, 0] = level.index
        for j, (key, pos, dtype) in enumerate(self.numeric, start=1):
            out[:, j] = level.states[key][pos].astype(dtype, copy=False).view(np.int64)
        return out

    def encode(self, levels: Levels, code: int, meta: dict | None = None) -> bytes:
        """One entity's tiles (the rows of ``code`` in ``levels``) as bytes."""
        return self.encode_all(levels, [code], [meta or {}])[0]

    def encode_all(self, levels: Levels, codes: Sequence[int], metas: Sequence[dict]) -> list[bytes]:
        """Encode many entities at once (``levels`` sorted by code, as the kernel keeps them)."""
        codes = np.asarray(codes, dtype=np.int64)
        n = len(codes)
        if n == 0:
            return []
        matrices, los, his = [], [], []
        for period in self.plan.chain:
            level = levels.levels[period]
            los.append(np.searchsorted(level.codes, codes, side="left"))
            his.append(np.searchsorted(level.codes, codes, side="right"))
            matrices.append(self._matrix(level))
        lo = np.stack(los, axis=1)  # (n, levels)
        counts = np.stack(his, axis=1) - lo
        sizes = np.fromiter((len(m) for m in matrices), np.int64, self.levels)
        level_base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rows = _gather(np.concatenate(matrices), (lo + level_base).ravel(), counts.ravel())
        raw = memoryview(rows.astype(_WORD, copy=False).tobytes())
        row_bytes = 8 * self.width
        ends = np.cumsum(counts.sum(axis=1)) * row_bytes
        starts = (ends - counts.sum(axis=1) * row_bytes).tolist()
        ends = ends.tolist()
        count_bytes = memoryview(counts.astype("<u4").tobytes())
        step = 4 * self.levels
        extras = self._extras(levels, codes, lo, counts)
        binary = self._binary_chunks(levels, lo, counts) if self.binary else None
        prefix = self._prefix
        out = []
        for i, meta in enumerate(metas):
            head = _meta_bytes(meta, extras[i] if extras is not None else None)
            parts = [prefix, head, count_bytes[i * step : (i + 1) * step], raw[starts[i] : ends[i]]]
            if binary is not None:
                parts.extend(binary[i])
            out.append(b"".join(parts))
        return out

    def _extras(self, levels: Levels, codes: np.ndarray, lo: np.ndarray, counts: np.ndarray) -> list | None:
        """Per entity the codec's own extra entries (object arrays, plain candidates), or None if none."""
        has_latest = bool(self.plan.latest) and levels.latest is not None
        if not self.objects and not has_latest:
            return None
        out = []
        for i in range(len(codes)):
            extra: dict = {}
            objects: dict[str, list] = {}
            for l_pos, period in enumerate(self.plan.chain):
                a = int(lo[i, l_pos])
                b = a + int(counts[i, l_pos])
                if a == b:
                    continue
                level = levels.levels[period]
                for key, pos, _ in self.objects:
                    objects[f"{period}|{key[0]}|{key[1]}|{pos}"] = [
                        _jsonable(v) for v in level.states[key][pos][a:b].tolist()
                    ]
            if objects:
                extra[OBJECTS_META] = objects
            if has_latest:
                candidates = plain.encode(levels.latest, int(codes[i]))
                if candidates:
                    extra[LATEST_META] = candidates
            out.append(extra)
        return out

    def _binary_chunks(self, levels: Levels, lo: np.ndarray, counts: np.ndarray) -> list[list[bytes]]:
        """Per entity, its binary chunks: per level, per binary array, the u32 lengths then the bytes."""
        per_level = []
        for period in self.plan.chain:
            level = levels.levels[period]
            per_level.append([
                _binary_elements(level.states[key][pos], 0, len(level)) for key, pos in self.binary
            ])
        out = []
        for i in range(len(lo)):
            chunks: list[bytes] = []
            for l_pos, arrays in enumerate(per_level):
                a = int(lo[i, l_pos])
                b = a + int(counts[i, l_pos])
                for _first, lengths, raw in arrays:
                    chunks.append(lengths[a:b].tobytes())
                    chunks.extend(raw[a:b])
            out.append(chunks)
        return out

    # -- decoding ---------------------------------------------------------------------------------------

    def decode_meta(self, blob: bytes) -> tuple[dict, int]:
        """The meta of one state blob (applied offsets and any extra entries) and the offset where its tile
        counts (FS3) or tiles (FS2) begin; checks the fingerprint."""
        magic = blob[:3]
        if magic == MAGIC:
            if blob[3:11] != self._fp_bytes:
                raise StateMismatch(
                    f"state of feature set {self.feature_set.name!r} was written by definition "
                    f"{bytes(blob[3:11]).hex()}, current definition is {self.fingerprint}"
                )
            return _read_meta(blob, 11)
        if magic != MAGIC_FS2:
            raise StateMismatch("state is not featurestream tile state of this format (bad magic)")
        (n,) = _U32.unpack_from(blob, 3)
        meta = json.loads(blob[7 : 7 + n])
        if meta.pop(FINGERPRINT_META, None) != self.fingerprint:
            raise StateMismatch(
                f"state of feature set {self.feature_set.name!r} was written by definition {json.loads(blob[7 : 7 + n]).get('fp')}, "
                f"current definition is {self.fingerprint}"
            )
        return meta, 7 + n

    def decode_rows(self, blobs: Sequence[bytes | None]) -> EntityRows:
        """Entities' states (None = no state yet) in the row layout, entity i from blobs[i]."""
        n = len(blobs)
        levels = self.levels
        row_bytes = 8 * self.width
        counts = np.zeros((n, levels), dtype=np.int64)
        slices: list = []
        metas: list[dict] = []
        extras: list = [None] * n
        binary_at: list = [None] * n  # (blob, offset of its binary chunks) of entities that have them
        unpack_counts = self._counts_format.unpack_from
        one_slot, binary = self._prefix + b"\x01", bool(self.binary)
        count_rows: list = [None] * n
        for i, blob in enumerate(blobs):
            if blob is None:
                metas.append({})
                continue
            if blob[:12] == one_slot and blob[21 + blob[12] : 25 + blob[12]] == _NO_EXTRA:
                # the usual entity: one applied-offset slot, no extra JSON; read without a generic parse
                head = 13 + blob[12]
                name = _SLOT_NAMES.get(blob[13:head]) or _slot_name(blob[13:head])
                metas.append({OFFSETS_META: {name: _I64.unpack_from(blob, head)[0]}})
                offset = head + 12
                entity_counts = count_rows[i] = unpack_counts(blob, offset)
                offset += 4 * levels
                total = sum(entity_counts)
                slices.append(blob[offset : offset + total * row_bytes])
                if binary:
                    binary_at[i] = (blob, offset + total * row_bytes, False)
                continue
            meta, offset = self.decode_meta(blob)
            if blob[:3] == MAGIC:
                entity_counts = count_rows[i] = unpack_counts(blob, offset)
                offset += 4 * levels
                total = sum(entity_counts)
                slices.append(blob[offset : offset + total * row_bytes])
                if binary:
                    binary_at[i] = (blob, offset + total * row_bytes, False)
            else:  # FS2: per level a count, the rows, then that level's binary chunks
                binary_at[i] = (blob, offset, True)
                for l_pos in range(levels):
                    (k,) = _U32.unpack_from(blob, offset)
                    offset += 4
                    slices.append(blob[offset : offset + k * row_bytes])
                    offset += k * row_bytes
                    counts[i, l_pos] = k
                    for _ in self.binary:
                        offset = _skip_binary(blob, offset, k)
            if OBJECTS_META in meta or LATEST_META in meta:
                extras[i] = {k: meta.pop(k) for k in (OBJECTS_META, LATEST_META) if k in meta}
            metas.append(meta)
        present = [i for i, c in enumerate(count_rows) if c is not None]
        if present:
            counts[present] = count_rows if len(present) == n else [count_rows[i] for i in present]
        matrix = np.frombuffer(b"".join(slices), dtype=_WORD).reshape(-1, self.width)
        rows = EntityRows(matrix, counts, metas)
        if self.objects:
            rows.objects = self._decode_objects(extras, counts)
        if self.binary:
            rows.binary = self._decode_binary(binary_at, counts)
        if self.plan.latest:
            rows.latest = [None if e is None else e.get(LATEST_META) for e in extras]
        return rows

    def _decode_objects(self, extras: list, counts: np.ndarray) -> dict:
        out = {}
        for key, pos, _ in self.objects:
            values: list = []
            for i, extra in enumerate(extras):
                objects = (extra or {}).get(OBJECTS_META) or {}
                for l_pos, period in enumerate(self.plan.chain):
                    k = int(counts[i, l_pos])
                    if k:
                        got = objects.get(f"{period}|{key[0]}|{key[1]}|{pos}")
                        values.extend(got if got is not None else [None] * k)
            arr = np.empty(len(values), dtype=object)
            arr[:] = [frozenset(v) if key[1] == "distinct" and v is not None else v for v in values]
            out[(key, pos)] = arr
        return out

    def _decode_binary(self, binary_at: list, counts: np.ndarray) -> dict:
        collected: dict = {k: [] for k in self.binary}
        for i, where in enumerate(binary_at):
            if where is None:
                continue
            blob, offset, fs2 = where
            for l_pos in range(self.levels):
                k = int(counts[i, l_pos])
                if fs2:
                    offset += 4 + k * 8 * self.width
                for key_pos in self.binary:
                    offset = _read_binary(blob, offset, k, collected[key_pos])
        out = {}
        for key_pos, values in collected.items():
            arr = np.empty(len(values), dtype=object)
            for i, value in enumerate(values):
                arr[i] = value
            out[key_pos] = arr
        return out

    def decode_many(self, blobs: Sequence[bytes | None]) -> tuple[Levels, list[dict]]:
        """Decode entities' states into one ``Levels`` with code i for blobs[i] (None = no state yet)."""
        rows = self.decode_rows(blobs)
        n, levels = rows.counts.shape
        flat = rows.counts.ravel()
        level_of_row = np.repeat(np.tile(np.arange(levels), n), flat)
        code_of_row = np.repeat(np.repeat(np.arange(n, dtype=np.int64), levels), flat)
        order = np.argsort(level_of_row, kind="stable")  # by level, each still by (code, index)
        bounds = np.concatenate([[0], np.cumsum(rows.counts.sum(axis=0))])
        out = {}
        for l_pos, period in enumerate(self.plan.chain):
            take = order[bounds[l_pos] : bounds[l_pos + 1]]
            matrix = rows.matrix[take]
            arrays = {}
            for j, (key, pos, dtype) in enumerate(self.numeric, start=1):
                arrays[(key, pos)] = matrix[:, j].copy().view(dtype)
            for key, pos, _ in self.objects:
                arrays[(key, pos)] = rows.objects[(key, pos)][take]
            for key, pos in self.binary:
                arrays[(key, pos)] = rows.binary[(key, pos)][take]
            states = {
                key: tuple(arrays[(key, pos)] for pos in range(self.array_count[key])) for key in self.keys
            }
            out[period] = Level(period, code_of_row[take], matrix[:, 0].copy(), states)
        return Levels(out, plain.decode(self.plan, rows.latest or [None] * n)), rows.metas


def _gather(matrix: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The rows ``starts[k] .. starts[k] + lengths[k]`` of ``matrix`` for every k, in order."""
    total = int(lengths.sum())
    if total == 0:
        return matrix[:0]
    ends = np.cumsum(lengths)
    index = np.repeat(starts - (ends - lengths), lengths) + np.arange(total)
    return matrix[index]


_SLOT_HEADS: dict[str, bytes] = {}  # "0" -> b"\x01\x010": one slot, its name's length and name


def _meta_bytes(meta: dict, codec_extra: dict | None) -> bytes:
    """The slots, extra length and extra JSON of one entity's meta (``fp`` is the codec's own)."""
    offsets = meta.get(OFFSETS_META)
    if codec_extra is None and offsets is not None and len(offsets) == 1 and (
        len(meta) == 1 or (len(meta) == 2 and FINGERPRINT_META in meta)
    ):  # the usual entity: one slot, nothing else
        ((slot, offset),) = offsets.items()
        head = _SLOT_HEADS.get(slot)
        if head is None and type(slot) is str and len(slot.encode()) <= 255:
            head = bytes((1, len(slot.encode()))) + slot.encode()
            if len(_SLOT_HEADS) < 4096:
                _SLOT_HEADS[slot] = head
        if head is not None and type(offset) is int and _I64_MIN <= offset <= _I64_MAX:
            return head + _I64.pack(offset) + _NO_EXTRA
    slots = _pack_slots(offsets) if offsets else b"\x00"
    extra = {k: v for k, v in meta.items() if k not in _NOT_EXTRA}
    if slots is None:  # not representable as slots: kept as JSON
        extra[OFFSETS_META] = offsets
        slots = b"\x00"
    if codec_extra:
        extra.update(codec_extra)
    if not extra:
        return slots + _NO_EXTRA
    text = json.dumps(extra, separators=(",", ":")).encode()
    return slots + _U32.pack(len(text)) + text


_SLOT_NAMES: dict[bytes, str] = {}  # b"0" -> "0": decoded slot names


def _slot_name(raw: bytes) -> str:
    name = bytes(raw).decode("utf-8")
    if len(_SLOT_NAMES) < 4096:
        _SLOT_NAMES[bytes(raw)] = name
    return name


def _pack_slots(offsets: dict) -> bytes | None:
    if len(offsets) > 255:
        return None
    parts = [bytes((len(offsets),))]
    for slot, offset in offsets.items():
        if not isinstance(slot, str) or type(offset) is not int or not _I64_MIN <= offset <= _I64_MAX:
            return None
        name = slot.encode("utf-8")
        if len(name) > 255:
            return None
        parts.append(bytes((len(name),)) + name + _I64.pack(offset))
    return b"".join(parts)


def _read_meta(blob: bytes, offset: int) -> tuple[dict, int]:
    """FS3 slots and extra JSON at ``offset`` -> (meta, offset of the tile counts)."""
    slots = blob[offset]
    offset += 1
    meta: dict = {}
    if slots:
        offsets = meta[OFFSETS_META] = {}
        for _ in range(slots):
            length = blob[offset]
            name = bytes(blob[offset + 1 : offset + 1 + length]).decode("utf-8")
            offset += 1 + length
            offsets[name] = _I64.unpack_from(blob, offset)[0]
            offset += 8
    (n,) = _U32.unpack_from(blob, offset)
    offset += 4
    if n:
        meta.update(json.loads(blob[offset : offset + n]))
        offset += n
    return meta, offset


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
        into.append(None if length == 0 else bytes(blob[offset : offset + length]))
        offset += length
    return offset


def _skip_binary(blob: bytes, offset: int, n: int) -> int:
    if n == 0:
        return offset
    return offset + 4 * n + sum(struct.unpack_from(f"<{n}I", blob, offset))


def _jsonable(value):
    if isinstance(value, frozenset | set):
        return sorted(value, key=repr)
    if isinstance(value, float) and value != value:
        return None
    return value
