"""Online reads: every feature of a few entities at one time t, straight from their state rows.

``kernel.read`` answers many queries at many times (offline retrieval) and walks each window level by
level. An online read asks one time for a handful of entities, and there the kernel's per-level,
per-window calls on arrays of a few tiles cost more than the arithmetic. Here the work is arranged for
that case, with the same window contract and the same field and op definitions:

* the rows of every (entity, window) are gathered in time order, the window's own tiles first, then each
  finer level's, then the exact 1 ms tiles up to t, then one empty tile (so no group is empty), exactly
  the tiles ``kernel.read`` merges for that window;
* each field reduces all (entity, window) groups at once with its own ``reduce_groups`` (ordered: the
  rows are in time order), or its ``read_groups`` where a read differs from a merge (sketches: a read unites
  the tiles' items, as ``reduce_ranges`` does), and each op finalizes all of them at once with its own
  ``finalize``.

The number of numpy calls is fixed by the plan, not by the entities, windows or tiles; a read of one entity
(a GET) finds its rows by bisection instead. Values equal the
kernel's: exactly for counts, min, max, first, last and the sketches; sums and moments may differ in the
last bits, as the tiles are added in one sequence instead of level by level.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import latest as plain
from .codec import EntityRows, EntityStateCodec
from .definitions import Plan
from .fields import FIELDS
from .tiles import window_levels


@dataclass(frozen=True)
class _Program:
    """What a read of some features walks: windows, the (window, level) parts, field keys and op groups."""

    windows: tuple  # Window per group column
    parts: tuple  # per window: ((level position in the chain, period), ...) in chain order
    keys: tuple  # (column, field) states to reduce
    groups: tuple  # (a WindowedFeature of the op, ((window position, feature name), ...)), ...
    latest: frozenset  # plain feature names to read
    column_level: np.ndarray  # per layout column (each window's parts, then its empty tile): the level
    empty_column: np.ndarray  # per layout column: True for a window's empty tile
    window_last: np.ndarray  # per window: its empty tile's column (the group's last)


class EntityReader:
    """Reads features of a FeatureSet's entities from their state blobs, at one time per call."""

    def __init__(self, codec: EntityStateCodec):
        self.codec = codec
        self.plan: Plan = codec.plan
        self._program = lru_cache(maxsize=256)(self._compile)

    def _compile(self, wanted: frozenset | None) -> _Program:
        plan = self.plan
        chain = plan.chain
        features = [f for f in plan.features if wanted is None or f.name in wanted]
        windows = tuple(w for w in plan.windows if any(f.window == w for f in features))
        parts = tuple(
            tuple((chain.index(p), p) for p in window_levels(w, chain)) for w in windows
        )
        keys = tuple(dict.fromkeys((f.column, name) for f in features for name in f.fields))
        grouped: dict = {}
        for f in features:  # features of one op on one column share a finalize call over all windows
            _, members = grouped.setdefault((f.column, f.op, f.params), (f, []))
            members.append((windows.index(f.window), f.name))
        groups = tuple((f, tuple(members)) for f, members in grouped.values())
        latest = frozenset(f.name for f in plan.latest if wanted is None or f.name in wanted)
        column_level, window_last = [], []
        for window_parts in parts:
            column_level.extend(l_pos for l_pos, _ in window_parts)
            window_last.append(len(column_level))
            column_level.append(-1)
        column_level = np.asarray(column_level, dtype=np.int64)
        return _Program(
            windows, parts, keys, groups, latest, column_level, column_level < 0, np.asarray(window_last)
        )

    def read(self, blobs: Sequence[bytes | None], at_ms: int, features=None) -> dict[str, np.ndarray]:
        """Every (or the named) aggregated and plain feature of each blob's entity at ``at_ms``."""
        rows = self.codec.decode_rows(blobs)
        return self.read_rows(rows, at_ms, features)

    def read_rows(self, rows: EntityRows, at_ms: int, features=None) -> dict[str, np.ndarray]:
        """``read`` on decoded rows."""
        program = self._program(None if features is None else frozenset(features))
        n = len(rows)
        out: dict[str, np.ndarray] = {}
        if program.latest:
            latest = plain.decode(self.plan, rows.latest or [None] * n)
            q = np.arange(n, dtype=np.int64)
            out.update(plain.read(self.plan, latest, q, np.full(n, at_ms, dtype=np.int64), program.latest))
        if not program.windows or n == 0:
            return out
        gather = self._gather_index_one if n == 1 else self._gather_index
        extended, index, starts = gather(rows, program, int(at_ms))
        states = self._reduce(rows, program, extended[index], index, starts)
        width = len(program.windows)
        for feature, members in program.groups:
            values = feature.finalize({name: states[(feature.column, name)] for name in feature.fields})
            values = values.reshape(n, width)
            for w_pos, name in members:
                out[name] = values[:, w_pos]
        return out

    def _gather_index(self, rows: EntityRows, program: _Program, at: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The extended row matrix (the rows, then one empty tile), the positions of every (entity, window)
        group's rows in time order, each group ending with the empty tile, and the groups' starts."""
        matrix, counts = rows.matrix, rows.counts
        n, levels = counts.shape
        # Per column of the layout (each window's parts in chain order, then the empty tile): the part's
        # tile index bounds [lo, hi) at ``at``, as kernel.read walks them; the empty tile is [0, 1).
        lo_values, hi_values = [], []
        for window_bounds in _part_bounds(program, at):
            for _l_pos, lo, hi in window_bounds:
                lo_values.append(lo)
                hi_values.append(hi)
            lo_values.append(0)  # the empty tile's own index (the identity row's is 0)
            hi_values.append(1)
        # Rows sort by (segment = entity * levels + level, tile index); the empty tile is segment n * levels.
        extended = np.concatenate([matrix, self.codec.identity[None, :]])
        index_column = extended[:, 0]
        low = min(int(index_column.min()), min(lo_values))  # tile indices are shifted to start at 0
        big = max(int(index_column.max()), max(hi_values)) - low + 2
        if (n * levels + 1) * big >= 2**62:
            raise OverflowError("too many entities in one read for this time span")
        segment = np.repeat(np.arange(n * levels + 1, dtype=np.int64), np.append(counts.ravel(), 1))
        row_key = segment * big + (index_column - low)
        column_segment = np.where(
            program.empty_column, n * levels, np.arange(n, dtype=np.int64)[:, None] * levels + program.column_level
        ) * big
        lo = np.searchsorted(row_key, column_segment + (np.asarray(lo_values, dtype=np.int64) - low))
        hi = np.searchsorted(row_key, column_segment + (np.asarray(hi_values, dtype=np.int64) - low))
        lengths = (hi - lo).ravel()
        ends = np.cumsum(lengths)
        index = np.repeat(lo.ravel() - (ends - lengths), lengths) + np.arange(int(ends[-1]))
        group_ends = ends.reshape(n, -1)[:, program.window_last].ravel()
        group_starts = np.concatenate([[0], group_ends[:-1]])
        return extended, index, group_starts

    def _gather_index_one(self, rows: EntityRows, program: _Program, at: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``_gather_index`` of one entity: the same rows, found by bisection in each level's tile indices
        (a read of one entity is what a GET asks; here a dozen numpy calls would cost more than the search)."""
        tiles = rows.matrix[:, 0].tolist()  # per level, in ascending tile index
        level_start = [0]
        for count in rows.counts[0].tolist():
            level_start.append(level_start[-1] + count)
        empty_row = len(tiles)
        index: list[int] = []
        starts: list[int] = []
        for window_bounds in _part_bounds(program, at):
            starts.append(len(index))
            for l_pos, lo, hi in window_bounds:
                first, end = level_start[l_pos], level_start[l_pos + 1]
                index.extend(range(bisect_left(tiles, lo, first, end), bisect_left(tiles, hi, first, end)))
            index.append(empty_row)
        extended = np.concatenate([rows.matrix, self.codec.identity[None, :]])
        return extended, np.asarray(index, dtype=np.int64), np.asarray(starts, dtype=np.int64)

    def _reduce(
        self, rows: EntityRows, program: _Program, taken: np.ndarray, index: np.ndarray, starts: np.ndarray
    ) -> dict:
        """Per field key, its state over every (entity, window) group (``taken``: the groups' rows)."""
        codec = self.codec
        states = {}
        for key in program.keys:
            arrays = []
            for pos in range(codec.array_count[key]):
                numeric = codec.column_of.get((key, pos))
                if numeric is not None:
                    column, dtype = numeric
                    arrays.append(taken[:, column].view(dtype))
                else:
                    source = rows.binary.get((key, pos))
                    if source is None:
                        source = rows.objects[(key, pos)]
                    arrays.append(_append(source, codec.empty_element(key, pos))[index])
            states[key] = _read_groups(FIELDS[key[1]], tuple(arrays), starts)
        return states


def _part_bounds(program: _Program, at: int) -> list[list[tuple[int, int, int]]]:
    """Per window, its parts' ``(level position, first tile index, end tile index)`` at ``at``: the tiles
    ``kernel.read`` merges for it, level by level from the window's start up to the exact tiles."""
    out = []
    for window, window_parts in zip(program.windows, program.parts, strict=True):
        bound, bounds = window.start(at), []
        for l_pos, period in window_parts:
            upper = (at // period) * period
            bounds.append((l_pos, bound // period, upper // period))
            bound = upper
        out.append(bounds)
    return out


def _read_groups(field, state, starts: np.ndarray):
    """A field's state over each contiguous, time-ordered group of tiles, as a read sees it: the field's own
    ``read_groups`` when its reads differ from its merges (sketches), else its ``reduce_groups``."""
    read = getattr(field, "read_groups", None)
    if read is not None:
        return read(state, starts)
    return field.reduce_groups(state, starts, ordered=True)


def _append(values: np.ndarray, element) -> np.ndarray:
    out = np.empty(len(values) + 1, dtype=object)
    out[:-1] = values
    out[-1] = element
    return out
