"""Declarations: Entity, Aggregation, FeatureSet, FeatureVector, OnRead and Registry.

Declarations are plain data validated at construction; every error names the offending value.
Nothing here touches Kafka, files or time: ``compile`` turns a FeatureSet into a ``Plan`` that the
kernel executes, identically online and offline.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import pandas as pd

from .durations import parse_duration
from .ops import get_op, parse_op
from .tiles import Window, level_chain

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
SCHEMA_TYPES = ("string", "int64", "float64", "bool", "timestamp")
NUMERIC_TYPES = ("int64", "float64", "bool")

Transform = Callable[[pd.DataFrame], pd.DataFrame]


def check_name(kind: str, name: str) -> str:
    """Names become Kafka topics, table keys and directory names: letters, digits and '_' only."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):  # fullmatch: "$" would accept a final newline
        raise ValueError(f"invalid {kind} name {name!r}: use letters, digits and '_', starting with a letter")
    return name


@dataclass(frozen=True)
class Entity:
    """The key features are computed per, e.g. ``Entity("user_id")``."""

    name: str
    dtype: str = "string"

    def __post_init__(self):
        check_name("entity", self.name)
        if self.dtype not in ("string", "int64"):
            raise ValueError(f"entity {self.name!r}: dtype must be 'string' or 'int64', got {self.dtype!r}")


@dataclass(frozen=True)
class WindowedFeature:
    """One aggregated output feature: ``{name}_{label}_{window}``; the label is the op's name or, for a parametrized
    op, derived from its parameters (``p50``, ``top5``, ``last3``; see ``ops.parse_op``)."""

    name: str
    column: str
    op: str
    window: Window
    params: tuple = ()

    @property
    def fields(self) -> tuple[str, ...]:
        """The state fields this feature is read from."""
        return get_op(self.op).fields_for(self.params)

    def finalize(self, states):
        """Values of this feature from its fields' states (``{field name: state}``)."""
        return get_op(self.op).finalize_for(states, self.params)


class Feature:
    """A plain feature: the value of the entity's latest event, e.g. ``Feature("country", ttl="30d")``.

    At time t it is the ``column`` of the entity's latest event with timestamp in ``[t - ttl, t)`` (no ttl:
    unbounded), ties by arrival order; null when there is none. A null in that latest event is the value
    (served as null, not skipped as aggregations skip nulls). The column's own dtype is kept. ``dtype`` is
    needed only for a column a transform makes; ``name`` (default the column) names the feature.
    """

    op = "latest"

    def __init__(
        self, column: str, dtype: str | None = None, ttl: str | None = None, name: str | None = None
    ):
        self.column = check_name("column", column)
        self.name = check_name("feature", name or column)
        if dtype is not None and dtype not in SCHEMA_TYPES:
            raise ValueError(
                f"feature {self.name!r}: unknown dtype {dtype!r}; valid types: {', '.join(SCHEMA_TYPES)}"
            )
        self.dtype = dtype
        self.ttl = ttl
        self.ttl_ms: int | None = None
        if ttl is not None:
            try:
                self.ttl_ms = parse_duration(ttl)
            except ValueError as exc:
                raise ValueError(f"feature {self.name!r}: ttl {exc}") from None
            if self.ttl_ms <= 0:
                raise ValueError(f"feature {self.name!r}: ttl must be positive, got {ttl!r}")

    def describe(self) -> dict:
        return {"column": self.column, "name": self.name, "dtype": self.dtype, "ttl_ms": self.ttl_ms}

    def __repr__(self) -> str:
        ttl = f", ttl={self.ttl!r}" if self.ttl else ""
        return f"Feature({self.column!r}, dtype={self.dtype!r}{ttl})"


class Aggregation:
    """Ops over one column and several windows: ``Aggregation("amount", ["sum", "avg"], windows=["1h", "90d"])``.

    ``ops`` are names or, for parametrized ops, calls with literal arguments: ``"approx_percentile(0.5, 0.99)"``
    (features ``amount_p50_1h``, ``amount_p99_1h``), ``"top_k(5)"`` (``merchant_top5_1h``), ``"last_k(3)"``.
    ``periods`` overrides the tile period: one string for every window, a list aligned with
    ``windows``, or a mapping window -> period. ``name`` replaces the column in feature names.
    """

    def __init__(
        self,
        column: str,
        ops: Sequence[str],
        windows: Sequence[str],
        periods: str | Sequence[str] | Mapping[str, str] | None = None,
        name: str | None = None,
    ):
        self.column = check_name("column", column)
        self.name = check_name("aggregation", name or column)
        if isinstance(ops, str) or not ops:
            raise ValueError(f"aggregation {self.name!r}: ops must be a non-empty list, got {ops!r}")
        if isinstance(windows, str) or not windows:
            raise ValueError(f"aggregation {self.name!r}: windows must be a non-empty list, got {windows!r}")
        try:
            self.specs = tuple(parse_op(op) for op in ops)
        except ValueError as exc:
            raise ValueError(f"aggregation {self.name!r}: {exc}") from None
        self.ops = tuple(spec.canonical for spec in self.specs)
        self.windows = tuple(self._windows(windows, periods))
        if len(set(self.ops)) != len(self.ops):
            raise ValueError(f"aggregation {self.name!r}: duplicate op in {list(ops)!r}")

    def _windows(self, windows, periods) -> Iterable[Window]:
        if periods is None or isinstance(periods, str):
            per = {w: periods for w in windows}
        elif isinstance(periods, Mapping):
            unknown = set(periods) - set(windows)
            if unknown:
                raise ValueError(
                    f"aggregation {self.name!r}: periods given for unknown windows {sorted(unknown)}"
                )
            per = {w: periods.get(w) for w in windows}
        else:
            if len(periods) != len(windows):
                raise ValueError(
                    f"aggregation {self.name!r}: {len(periods)} periods for {len(windows)} windows"
                )
            per = dict(zip(windows, periods, strict=True))
        for w in windows:
            try:
                yield Window.parse(w, per[w])
            except ValueError as exc:
                raise ValueError(f"aggregation {self.name!r}: {exc}") from None

    def features(self) -> list[WindowedFeature]:
        return [
            WindowedFeature(f"{self.name}_{label}_{w.label}", self.column, spec.op.name, w, params)
            for w in self.windows
            for spec in self.specs
            for label, params in spec.outputs()
        ]

    def describe(self) -> dict:
        return {
            "column": self.column,
            "name": self.name,
            "ops": list(self.ops),
            "windows": [[w.label, w.length, w.period] for w in self.windows],
        }


@dataclass(frozen=True)
class OnRead:
    """A feature derived at read time from request columns and aggregated features.

    ``fn`` takes a DataFrame holding ``inputs`` (request columns) and the set's features and
    returns a Series; the same function runs online (per request) and offline (per query row).
    """

    name: str
    fn: Callable[[pd.DataFrame], pd.Series]
    inputs: tuple[str, ...] = ()

    def __post_init__(self):
        check_name("on-read feature", self.name)
        object.__setattr__(self, "inputs", tuple(self.inputs))


@dataclass
class Plan:
    """A compiled FeatureSet: what state to keep and how to read it."""

    features: list[WindowedFeature]
    fields_by_column: dict[str, tuple[str, ...]]
    windows: tuple[Window, ...]
    chain: tuple[int, ...]
    latest: tuple[Feature, ...] = ()  # plain features (aggregations.latest)

    @property
    def longest(self) -> Window | None:
        """The window reaching furthest back (None: no aggregations)."""
        if not self.windows:
            return None
        return max(self.windows, key=lambda w: (w.length + w.period, w.length))

    @property
    def columns(self) -> tuple[str, ...]:
        """The event columns the features read: aggregated ones, then plain features' (no duplicates)."""
        return tuple(dict.fromkeys([*self.fields_by_column, *(f.column for f in self.latest)]))

    @property
    def reach_ms(self) -> int | None:
        """How far before a read time t any feature can look (None: unbounded, a plain feature without ttl)."""
        reach = [w.length + w.period for w in self.windows]
        for feature in self.latest:
            if feature.ttl_ms is None:
                return None
            reach.append(feature.ttl_ms)
        return max(reach, default=0)


class FeatureSet:
    """Features of one entity kind computed from one Kafka topic (see DESIGN.md, public surface)."""

    def __init__(
        self,
        name: str,
        entities: Sequence[Entity],
        timestamp_key: str,
        source: str,
        schema: Mapping[str, str],
        aggregations: Sequence[Aggregation] = (),
        transforms: Sequence[Transform] = (),
        on_read: Sequence[OnRead] = (),
        description: str = "",
        features: Sequence[Feature] = (),
    ):
        self.name = check_name("feature set", name)
        if not entities or not all(isinstance(e, Entity) for e in entities):
            raise ValueError(f"feature set {name!r}: entities must be a non-empty list of Entity")
        self.entities = tuple(entities)
        self.timestamp_key = timestamp_key
        self.source = source
        if not isinstance(source, str) or not re.match(r"^[A-Za-z0-9._-]{1,200}$", source):
            raise ValueError(f"feature set {name!r}: invalid source topic {source!r}")
        self.schema = dict(schema)
        self.aggregations = tuple(aggregations)
        self.features = tuple(features)
        self.transforms = tuple(transforms)
        self.on_read = tuple(on_read)
        self.description = description
        self._validate()
        self.plan = self._compile()

    @cached_property
    def entity_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entities)

    def _validate(self) -> None:
        for column, dtype in self.schema.items():
            check_name("column", column)
            if dtype not in SCHEMA_TYPES:
                raise ValueError(
                    f"feature set {self.name!r}: column {column!r} has unknown type {dtype!r}; "
                    f"valid types: {', '.join(SCHEMA_TYPES)}"
                )
        for entity in self.entities:
            if self.schema.get(entity.name) not in (entity.dtype, None):
                raise ValueError(
                    f"feature set {self.name!r}: entity {entity.name!r} must be {entity.dtype} in schema"
                )
            self.schema.setdefault(entity.name, entity.dtype)
        if self.schema.get(self.timestamp_key) != "timestamp":
            raise ValueError(
                f"feature set {self.name!r}: timestamp_key {self.timestamp_key!r} must be in the schema as 'timestamp'"
            )
        if not self.aggregations and not self.features:
            raise ValueError(f"feature set {self.name!r}: needs at least one Aggregation or Feature")
        derived_ok = bool(self.transforms)  # transforms may add columns not in the schema
        self._validate_features(derived_ok)
        for agg in self.aggregations:
            dtype = self.schema.get(agg.column)
            if dtype is None and not derived_ok:
                raise ValueError(
                    f"feature set {self.name!r}: aggregated column {agg.column!r} is not in the schema"
                )
            for spec in agg.specs:
                if spec.op.numeric_only and dtype is not None and dtype not in NUMERIC_TYPES:
                    raise ValueError(
                        f"feature set {self.name!r}: op {spec.canonical!r} needs a numeric column, "
                        f"but {agg.column!r} is {dtype}"
                    )
        seen: dict[str, str] = {}
        for feature in self.feature_names():
            if feature in seen:
                raise ValueError(f"feature set {self.name!r}: duplicate feature name {feature!r}")
            seen[feature] = feature

    def _validate_features(self, derived_ok: bool) -> None:
        for feature in self.features:
            if not isinstance(feature, Feature):
                raise ValueError(
                    f"feature set {self.name!r}: features must be Feature objects, got {feature!r}"
                )
            declared = self.schema.get(feature.column)
            if declared is None and not derived_ok:
                raise ValueError(
                    f"feature set {self.name!r}: feature column {feature.column!r} is not in the schema"
                )
            if declared is None and feature.dtype is None:
                raise ValueError(
                    f"feature set {self.name!r}: feature {feature.name!r} reads column {feature.column!r}, "
                    "which a transform makes: give its dtype"
                )
            if declared is not None and feature.dtype not in (None, declared):
                raise ValueError(
                    f"feature set {self.name!r}: feature {feature.name!r} is declared {feature.dtype}, but "
                    f"column {feature.column!r} is {declared} in the schema"
                )

    def feature_dtype(self, feature: Feature) -> str:
        """The dtype a plain feature is served with: its column's."""
        return feature.dtype or self.schema[feature.column]

    def feature_names(self) -> list[str]:
        """Aggregated feature names in declaration order, then plain features, then on-read ones."""
        names = [f.name for agg in self.aggregations for f in agg.features()]
        return names + [f.name for f in self.features] + [o.name for o in self.on_read]

    def _compile(self) -> Plan:
        features = [f for agg in self.aggregations for f in agg.features()]
        fields: dict[str, list[str]] = {}
        for f in features:
            bucket = fields.setdefault(f.column, [])
            for name in f.fields:
                if name not in bucket:
                    bucket.append(name)
        windows = tuple(sorted({f.window for f in features}, key=lambda w: (w.period, w.length)))
        try:
            chain = level_chain(w.period for w in windows)
        except ValueError as exc:
            raise ValueError(f"feature set {self.name!r}: {exc}") from None
        return Plan(features, {c: tuple(v) for c, v in fields.items()}, windows, chain, self.features)

    def definition(self) -> dict:
        """Everything that changes the state or the values computed, as plain JSON data."""
        out = {
            "name": self.name,
            "entities": [[e.name, e.dtype] for e in self.entities],
            "timestamp_key": self.timestamp_key,
            "schema": sorted(self.schema.items()),
            "aggregations": [a.describe() for a in self.aggregations],
            "transforms": [_callable_identity(t) for t in self.transforms],
        }
        if self.features:  # only then: sets without plain features keep their fingerprint
            out["features"] = [f.describe() for f in self.features]
        return out

    def fingerprint(self) -> str:
        """A stable hash of ``definition()``: the version of the set's online state."""
        return hashlib.sha256(json.dumps(self.definition(), sort_keys=True).encode()).hexdigest()[:16]

    def ingest(self, data, **options):
        """Batch ingestion of a DataFrame or Parquet/CSV file(s): ``featurestream.ingest(self, data, **options)``.

        The writing (Kafka, files) lives in the ``featurestream`` package, loaded by name here so that
        declarations stay free of I/O imports.
        """
        from importlib import import_module

        return import_module("featurestream.ingest").ingest(self, data, **options)

    def preview(self, events: pd.DataFrame, at: pd.DataFrame | None = None) -> pd.DataFrame:
        """Features computed in memory: per event as of its own timestamp, or at the given rows."""
        from .preview import preview

        return preview(self, events, at)

    def __repr__(self) -> str:
        return f"FeatureSet({self.name!r}, source={self.source!r}, features={len(self.feature_names())})"


def _callable_identity(fn) -> str:
    """A transform's identity for the fingerprint: its qualified name and a hash of its source text.

    Stable across processes and runs: no module name (a definitions file loaded by path gets a fresh
    module name per load) and no ``hash()`` (salted per process). Editing the code changes it.
    """
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        source = ""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{name}:" + hashlib.sha256(source.encode()).hexdigest()[:12]


@dataclass
class FeatureVector:
    """A named list of features across sets: ``"set.feature"`` or ``"set.*"``."""

    name: str
    features: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_name("feature vector", self.name)
        if isinstance(self.features, str) or not self.features:
            raise ValueError(
                f"feature vector {self.name!r}: features must be a non-empty list of 'set.feature'"
            )
        for ref in self.features:
            if not isinstance(ref, str) or ref.count(".") != 1 or not all(ref.split(".")):
                raise ValueError(
                    f"feature vector {self.name!r}: malformed feature {ref!r}, expected 'set.feature'"
                )

    def resolve(self, sets: Mapping[str, FeatureSet]) -> dict[str, list[str]]:
        """Feature names grouped by set, in the vector's order; unknown sets/features raise naming them."""
        out: dict[str, list[str]] = {}
        for ref in self.features:
            set_name, feature = ref.split(".")
            if set_name not in sets:
                raise KeyError(f"feature vector {self.name!r}: unknown feature set {set_name!r} in {ref!r}")
            available = sets[set_name].feature_names()
            chosen = available if feature == "*" else [feature]
            if feature != "*" and feature not in available:
                raise KeyError(
                    f"feature vector {self.name!r}: feature set {set_name!r} has no feature {feature!r}"
                )
            bucket = out.setdefault(set_name, [])
            bucket.extend(f for f in chosen if f not in bucket)
        return out


class Registry:
    """The feature sets and vectors of a project, cross-checked: every vector must resolve."""

    def __init__(self, feature_sets: Sequence[FeatureSet], vectors: Sequence[FeatureVector] = ()):
        self.feature_sets: dict[str, FeatureSet] = {}
        for fs in feature_sets:
            if fs.name in self.feature_sets:
                raise ValueError(f"duplicate feature set name {fs.name!r}")
            self.feature_sets[fs.name] = fs
        self.vectors: dict[str, FeatureVector] = {}
        for vector in vectors:
            if vector.name in self.vectors:
                raise ValueError(f"duplicate feature vector name {vector.name!r}")
            vector.resolve(self.feature_sets)
            self.vectors[vector.name] = vector

    def feature_set(self, name: str) -> FeatureSet:
        try:
            return self.feature_sets[name]
        except KeyError:
            raise KeyError(
                f"unknown feature set {name!r}; known: {', '.join(sorted(self.feature_sets)) or 'none'}"
            ) from None

    def vector(self, name: str) -> FeatureVector:
        try:
            return self.vectors[name]
        except KeyError:
            raise KeyError(
                f"unknown feature vector {name!r}; known: {', '.join(sorted(self.vectors)) or 'none'}"
            ) from None
