"""Reads of online state: entity state blobs -> JSON-ready feature values at a time t.

The values come from ``aggregations.entity_read`` (the window contract, read for a few entities at one
time) and on-read features from ``aggregations.compute.apply_on_read``; this module only picks names and
makes the result JSON-safe (NaN and ±Infinity -> null, numpy scalars -> Python). No Faust here, so it is
unit-testable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from aggregations.codec import EntityStateCodec
from aggregations.compute import apply_on_read
from aggregations.definitions import FeatureSet, FeatureVector, Registry
from aggregations.entity_read import EntityReader
from aggregations.schema import MAX_ENTITY_BYTES, entity_keys  # one limit: ingest refuses longer keys too

from . import http_json

MAX_VECTOR_ENTITIES = 1000


class BadRequest(ValueError):
    """The client asked for something malformed (HTTP 400)."""


class NotFound(LookupError):
    """The client named a feature set or vector that does not exist (HTTP 404)."""


class FeatureReader:
    """Feature values of one FeatureSet from entity state blobs."""

    def __init__(self, feature_set: FeatureSet):
        self.feature_set = feature_set
        self.plan = feature_set.plan
        self.codec = EntityStateCodec(feature_set)
        self.entities = EntityReader(self.codec)
        self.names = feature_set.feature_names()
        self._known = frozenset(self.names)
        self.aggregated = [f.name for f in self.plan.features] + [f.name for f in self.plan.latest]
        self.on_read = [o.name for o in feature_set.on_read]
        self.inputs = frozenset(c for o in feature_set.on_read for c in o.inputs)

    def check_features(self, wanted: Sequence[str] | None) -> list[str]:
        """The requested feature names (all when None); unknown names raise ``BadRequest``."""
        if wanted is None:
            return list(self.names)
        unknown = [f for f in wanted if f not in self._known]
        if unknown:
            raise BadRequest(
                f"feature set {self.feature_set.name!r} has no feature(s) {unknown}; "
                f"known: {', '.join(self.names)}"
            )
        return list(dict.fromkeys(wanted))

    def read(
        self,
        blobs: Sequence[bytes | None],
        at_ms: int,
        features: Sequence[str] | None = None,
        request: pd.DataFrame | Sequence[Mapping] | None = None,
    ) -> list[dict]:
        """Features of each entity (blob None = no state: empty windows) at ``at_ms``, one dict per blob.

        ``request`` holds per-entity request columns (e.g. the amount being scored) for on-read features, as
        a frame or one mapping per entity; an on-read feature whose inputs are absent is null.
        """
        names = self.check_features(features)
        n = len(blobs)
        derived = [name for name in names if name in self.on_read]
        request = _request_frame(request, self.inputs) if derived else None
        computed = derived and request is not None and any(
            set(o.inputs) <= set(request.columns) for o in self.feature_set.on_read if o.name in derived
        )
        wanted = None if computed or features is None else [name for name in names if name not in self.on_read]
        if n and all(b is None for b in blobs):
            values = self._empty_values(n)  # unknown entities: no read per request
        else:
            values = self.entities.read(blobs, at_ms, wanted)
        columns = {name: json_values(values[name]) for name in names if name in values}
        if derived:
            columns.update(self._on_read_columns(derived, values, request if computed else None, n))
        if n == 1:
            return [{name: columns[name][0] for name in names}]
        return [{name: columns[name][i] for name in names} for i in range(n)]

    def _empty_values(self, n: int) -> dict:
        """Aggregated features of n entities without state (empty windows: the same at any time)."""
        empty = self.__dict__.get("_empty")
        if empty is None:
            empty = self._empty = self.entities.read([None], 0)
        return {name: np.repeat(column, n) for name, column in empty.items()}

    def _on_read_columns(
        self, derived: list[str], values: dict, request: pd.DataFrame | None, n: int
    ) -> dict:
        """On-read features; one whose request inputs are absent is null without building any frame."""
        provided = set(request.columns) if request is not None else set()
        by_name = {o.name: o for o in self.feature_set.on_read}
        if all(not set(by_name[name].inputs) <= provided for name in derived):
            return {name: [None] * n for name in derived}
        frame = pd.DataFrame({name: values[name] for name in self.aggregated})
        req = request if request is not None else pd.DataFrame(index=range(n))
        frame = apply_on_read(self.feature_set, req.reset_index(drop=True), frame)
        return {name: json_values(frame[name].to_numpy()) for name in derived}


def _request_frame(request, inputs: frozenset) -> pd.DataFrame | None:
    """Request rows as a frame, or None when they carry none of the on-read inputs (no frame to build)."""
    if request is None or isinstance(request, pd.DataFrame):
        return request
    if not any(column in row for row in request for column in inputs):
        return None
    return pd.DataFrame.from_records(list(request)) if request else None


def json_values(values: np.ndarray) -> list:
    """A column as strict-JSON Python values: NaN/±Infinity/None/NA -> None, numpy scalars -> Python."""
    kind = values.dtype.kind
    if kind == "f":
        return [v if math.isfinite(v) else None for v in values.tolist()]
    if kind in "iub":
        return values.tolist()
    return [_json_scalar(v) for v in values.tolist()]


def _json_scalar(value):
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, frozenset | set):
        return sorted(value, key=repr)
    return value


def parse_feature_list(raw: str | None) -> list[str] | None:
    """``?features=a,b`` -> ["a", "b"]; absent or blank -> None (all features)."""
    if raw is None:
        return None
    names = [n.strip() for n in raw.split(",") if n.strip()]
    return names or None


def request_columns(feature_set: FeatureSet, query: Mapping[str, str]) -> pd.DataFrame | None:
    """Query-string inputs of a single GET (e.g. ``?amount=12.5``) typed by the schema, for on-read features;
    None when the query holds none of them."""
    inputs = {c for o in feature_set.on_read for c in o.inputs}
    if not any(column in query for column in inputs):
        return None
    row = {}
    for column in sorted(inputs):
        if column not in query:
            continue
        text = query[column]
        dtype = feature_set.schema.get(column)
        if dtype not in (None, "float64", "int64"):
            row[column] = text
            continue
        try:
            number = float(text)
        except ValueError:
            raise BadRequest(f"query parameter {column!r} must be a number, got {text[:40]!r}") from None
        if not math.isfinite(number):
            raise BadRequest(f"query parameter {column!r} must be a finite number, got {text[:40]!r}")
        row[column] = number
    return pd.DataFrame([row]) if row else pd.DataFrame(index=range(1))


def parse_vector_request(body: bytes, limit: int = MAX_VECTOR_ENTITIES) -> list[dict]:
    """The ``{"entities": [{...}, ...]}`` body of ``POST /vectors/{vector}``; malformed -> ``BadRequest``."""
    try:
        doc = http_json.loads(body or b"null")
    except http_json.NotStrictJSON as exc:
        raise BadRequest(str(exc)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entities"), list):
        raise BadRequest('request body must be a JSON object {"entities": [{...}, ...]}')
    entities = doc["entities"]
    if len(entities) > limit:
        raise BadRequest(f"too many entities: {len(entities)} > {limit} per request")
    for i, entity in enumerate(entities):
        if not isinstance(entity, dict):
            raise BadRequest(f"entities[{i}] must be a JSON object, got {type(entity).__name__}")
    return entities


_INPUT_TYPES = {
    "float64": ((int, float), "a number"),
    "int64": ((int,), "an integer"),
    "string": ((str,), "a string"),
    "bool": ((bool,), "true or false"),
    "timestamp": ((int, str), "epoch ms or an ISO-8601 string"),
}


def check_request_inputs(feature_set: FeatureSet, entities: list[dict]) -> None:
    """On-read inputs given in request rows (e.g. ``amount``) must fit the schema's type; else ``BadRequest``."""
    columns = sorted({c for o in feature_set.on_read for c in o.inputs})
    for i, entity in enumerate(entities):
        for column in columns:
            value = entity.get(column)
            if value is None:
                continue
            types, what = _INPUT_TYPES.get(feature_set.schema.get(column, "float64"), ((object,), "a value"))
            numeric = int in types or float in types
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                shown = str(value)[:40] if not isinstance(value, dict | list) else type(value).__name__
                raise BadRequest(f"entities[{i}].{column} must be {what}, got {shown!r}")
            if numeric and isinstance(value, int) and not isinstance(value, bool):
                try:
                    float(value)
                except OverflowError:
                    raise BadRequest(f"entities[{i}].{column} is out of float64 range") from None


def vector_entity_keys(feature_set: FeatureSet, entities: list[dict]) -> list[str]:
    """Entity key strings of request rows for one set (same encoding as ingestion); missing key -> 400."""
    for i, entity in enumerate(entities):
        for name in feature_set.entity_names:
            value = entity.get(name)
            if value is None or value == "" or isinstance(value, dict | list | bool):
                raise BadRequest(
                    f"entities[{i}] lacks a valid entity key {name!r} for feature set {feature_set.name!r}"
                )
    frame = pd.DataFrame({name: [e[name] for e in entities] for name in feature_set.entity_names})
    if not entities:
        return []
    keys = entity_keys(feature_set, frame).tolist()
    for i, key in enumerate(keys):
        if len(key.encode("utf-8", "surrogatepass")) > MAX_ENTITY_BYTES:
            raise BadRequest(f"entities[{i}]: entity key longer than {MAX_ENTITY_BYTES} bytes")
    return keys


def output_names(vector: FeatureVector, resolved: Mapping[str, list[str]]) -> dict[tuple[str, str], str]:
    """Output name of each (set, feature): the bare feature name, or ``set.feature`` where names collide."""
    counts: dict[str, int] = {}
    for features in resolved.values():
        for f in features:
            counts[f] = counts.get(f, 0) + 1
    return {
        (s, f): (f if counts[f] == 1 else f"{s}.{f}") for s, features in resolved.items() for f in features
    }


def resolve_vector(
    registry: Registry, vector_name: str, entities: list[dict]
) -> tuple[dict[str, list[str]], dict[tuple[str, str], str]]:
    """A vector request's features per set and their output names (``output_names``); ``NotFound`` for an unknown
    vector, ``BadRequest`` for request inputs of the wrong type."""
    vector = registry.vectors.get(vector_name)
    if vector is None:
        known = ", ".join(sorted(registry.vectors)) or "none"
        raise NotFound(f"unknown feature vector {vector_name!r}; known: {known}")
    resolved = vector.resolve(registry.feature_sets)
    for set_name in resolved:
        check_request_inputs(registry.feature_sets[set_name], entities)
    return resolved, output_names(vector, resolved)


def put_vector_values(
    results: list[dict], set_name: str, features: Sequence[str], names: Mapping[tuple[str, str], str],
    values: Sequence[Mapping],
) -> None:  # fmt: skip
    """Each entity's values of one set's ``features`` into its result row, under their output names."""
    for row, value in zip(results, values, strict=True):
        out = row["features"]
        for f in features:
            out[names[(set_name, f)]] = value.get(f)
