"""Online/offline comparison of feature values, pure: deterministic entity sampling by key hash, and per
feature the match / missing / extra / mismatch classification with the window contract's tolerances.

"Empty" means null/NaN/±Infinity (served as null: strict JSON), or 0 for count, count_distinct,
approx_count_distinct, sum and sqr (their empty-window values): both empty or equal -> match; online empty,
offline not -> ``missing``; online not empty, offline empty -> ``extra``; count, count_distinct, min, max,
first, last, approx_count_distinct and last_k exact; other floats within ``rel_tol`` / ``abs_tol``; a
difference of a sketch that is not deterministic under merge (approx_percentile, top_k) is ``approx_differ``,
reported but not an inconsistency.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from aggregations.ops import OPS

EXACT_OPS = frozenset({"count", "count_distinct", "min", "max", "first", "last", "approx_count_distinct", "last_k", "latest"})
ZERO_WHEN_EMPTY = frozenset({"count", "count_distinct", "approx_count_distinct", "sum", "sqr"})
#: Sketch ops whose value depends on merge order: differences within their error bound are expected.
APPROX_OPS = frozenset(name for name, op in OPS.items() if not op.deterministic)
TOP_DELTAS = 5


def key_hash(key: str) -> int:
    """A stable 64-bit hash of an entity key (the same on every machine and run)."""
    return int.from_bytes(
        hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"
    )


def sample_keys(keys, sample_rate: float = 1.0, max_entities: int | None = None) -> list[str]:
    """Keys whose hash falls under ``sample_rate``; at most ``max_entities``, those of smallest hash."""
    scored = sorted((key_hash(k), k) for k in set(keys))
    limit = int(sample_rate * 2**64)
    chosen = [k for h, k in scored if sample_rate >= 1.0 or h < limit]
    return chosen if max_entities is None else chosen[:max_entities]


def is_empty(op: str, value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return True
    return op in ZERO_WHEN_EMPTY and isinstance(value, int | float) and value == 0


def _plain(value):
    """numpy/pandas scalars -> Python; NaN/NA -> None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.ndarray):  # a list-valued feature (top_k, last_k) read back through Arrow
        value = value.tolist()
    return value


def compare_value(op: str, online, offline, rel_tol: float, abs_tol: float) -> tuple[str, float | None]:
    """('match' | 'missing' | 'extra' | 'mismatch' | 'approx_differ', |delta| when both numeric)."""
    online, offline = _plain(online), _plain(offline)
    e_on, e_off = is_empty(op, online), is_empty(op, offline)
    if e_on and e_off:
        return "match", None
    numeric = isinstance(online, int | float) and isinstance(offline, int | float)
    delta = abs(float(online) - float(offline)) if numeric and not (e_on or e_off) else None
    if e_on:
        return "missing", (abs(float(offline)) if isinstance(offline, int | float) else None)
    if e_off:
        return "extra", (abs(float(online)) if isinstance(online, int | float) else None)
    if op in EXACT_OPS or not numeric:
        same = (float(online) == float(offline)) if numeric else online == offline
    else:
        same = math.isclose(float(online), float(offline), rel_tol=rel_tol, abs_tol=abs_tol)
    if not same and op in APPROX_OPS:
        return "approx_differ", delta
    return ("match" if same else "mismatch"), delta


@dataclass
class FeatureStats:
    op: str
    compared: int = 0
    mismatch: int = 0
    missing: int = 0
    extra: int = 0
    approx_differ: int = 0  # approximate sketch values that differ (not an inconsistency; see the docstring)
    worst: list = field(default_factory=list)  # (delta, entity, online, offline, kind)

    def add(self, entity: str, online, offline, rel_tol: float, abs_tol: float) -> None:
        kind, delta = compare_value(self.op, online, offline, rel_tol, abs_tol)
        self.compared += 1
        if kind == "match":
            return
        setattr(self, kind, getattr(self, kind) + 1)
        self.worst.append(
            (math.inf if delta is None else delta, entity, _plain(online), _plain(offline), kind)
        )
        self.worst.sort(key=lambda w: -w[0])
        del self.worst[TOP_DELTAS:]

    @property
    def bad(self) -> int:
        return self.mismatch + self.missing + self.extra

    def ratio(self, n: int) -> float:
        return n / self.compared if self.compared else 0.0

    def as_dict(self) -> dict:
        return {
            "op": self.op,
            "compared": self.compared,
            "mismatch": self.mismatch,
            "missing": self.missing,
            "extra": self.extra,
            "approx_differ": self.approx_differ,
            "mismatch_rate": self.ratio(self.mismatch),
            "missing_rate": self.ratio(self.missing),
            "extra_rate": self.ratio(self.extra),
            "inconsistent_ratio": self.ratio(self.bad),
            "largest_deltas": [
                {"entity": e, "online": on, "offline": off, "kind": k, "delta": None if math.isinf(d) else d}
                for d, e, on, off, k in self.worst
            ],
        }


def compare_frames(
    ops: dict[str, str], online: dict[str, dict], offline: dict[str, dict], rel_tol: float, abs_tol: float
) -> dict[str, FeatureStats]:
    """Per feature stats over the entities of ``online`` (entity -> {feature: value}); ``offline`` likewise."""
    stats = {name: FeatureStats(op) for name, op in ops.items()}
    for entity, values in online.items():
        other = offline.get(entity, {})
        for name, st in stats.items():
            st.add(entity, values.get(name), other.get(name), rel_tol, abs_tol)
    return stats
