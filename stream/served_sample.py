"""The last N feature rows a worker served, per feature vector and per feature set, for drift monitoring.

Every answered ``GET /features/{set}/{entity}`` records its feature values under the set's name, every
``POST /vectors/{vector}`` records one row per entity under the vector's name. Each name keeps a ring
buffer of the newest ``capacity`` rows (env ``FEATURESTREAM_SERVED_SAMPLE``, default 1000; 0 turns
recording off), so memory is bounded and the sample follows what is served now.

``GET /sample/{name}[?kind=vector|feature_set][&limit=n]`` answers
``{"name", "kind", "capacity", "served", "rows": [{feature: value}, ...]}`` (``served`` counts every row
ever recorded under the name). A name that is both a vector and a set means the vector unless
``kind=feature_set``; an unknown name is a 404, a malformed parameter a 400. Rows are this worker's
own: with several workers, ask each (``featurestream drift --url`` accepts several).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping, Sequence

from aggregations.definitions import Registry

from .strict_view import StrictJSONView as View

DEFAULT_CAPACITY = 1000
KINDS = ("vector", "feature_set")


def capacity_from_env() -> int:
    raw = os.environ.get("FEATURESTREAM_SERVED_SAMPLE", str(DEFAULT_CAPACITY))
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"FEATURESTREAM_SERVED_SAMPLE={raw!r} is not an integer (rows per name, e.g. 1000)") from None
    if value < 0:
        raise ValueError(f"FEATURESTREAM_SERVED_SAMPLE={raw!r} must be >= 0")
    return value


class ServedSample:
    """Ring buffers of served rows keyed by (kind, name)."""

    def __init__(self, capacity: int | None = None):
        self.capacity = capacity_from_env() if capacity is None else int(capacity)
        self._rows: dict[tuple[str, str], deque] = {}
        self._served: dict[tuple[str, str], int] = {}

    def record(self, kind: str, name: str, rows: Sequence[Mapping]) -> None:
        """Keep ``rows`` (feature name -> value), newest last. The dicts are stored, not copied."""
        if self.capacity <= 0 or not rows:
            return
        key = (kind, name)
        buffer = self._rows.get(key)
        if buffer is None:
            buffer = self._rows[key] = deque(maxlen=self.capacity)
        buffer.extend(rows)
        self._served[key] = self._served.get(key, 0) + len(rows)

    def rows(self, kind: str, name: str, limit: int | None = None) -> list[dict]:
        buffer = self._rows.get((kind, name), ())
        rows = list(buffer)
        return rows[-limit:] if limit else rows

    def served(self, kind: str, name: str) -> int:
        return self._served.get((kind, name), 0)


def resolve(registry: Registry, name: str, kind: str | None) -> str:
    """The kind of ``name`` (``vector`` first), or LookupError / ValueError with a hint."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind in (None, "vector") and name in registry.vectors:
        return "vector"
    if kind in (None, "feature_set") and name in registry.feature_sets:
        return "feature_set"
    known = sorted(registry.vectors) + sorted(registry.feature_sets)
    raise LookupError(f"no feature vector or feature set named {name!r}; known: {', '.join(known) or 'none'}")


def register_sample_view(app, registry: Registry, sample: ServedSample, worker_id: str = "") -> None:
    """Add ``GET /sample/{name}`` to a Faust app."""

    @app.page("/sample/{name}", name="featurestream-sample")
    class Sample(View):
        async def get(self, request, name: str):
            try:
                kind = resolve(registry, name, request.query.get("kind"))
                limit = int(request.query.get("limit", "0") or 0)
                if limit < 0:
                    raise ValueError("limit must be >= 0")
            except LookupError as exc:
                return self.json({"error": str(exc)}, status=404)
            except ValueError as exc:
                return self.json({"error": str(exc)}, status=400)
            rows = sample.rows(kind, name, limit or None)
            return self.json(
                {"name": name, "kind": kind, "worker": worker_id, "capacity": sample.capacity,
                 "served": sample.served(kind, name), "rows": rows}
            )
