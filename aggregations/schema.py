"""Decoding and validation of events, shared by the worker and the sink (same rules both sides).

Kafka payloads are JSON objects. Timestamps are epoch milliseconds (int) or ISO-8601 strings and
become int64 UTC milliseconds. An event that cannot be decoded or validated is returned as a
``Rejected`` with a one-line reason, never raised: callers dead-letter it and go on.

``EventValidator.decode`` is the reference: one record at a time, ``json`` and ``validate``.
``EventValidator.decode_frame`` gives the same frame, positions and rejections for a batch, faster: it
parses with orjson and checks whole columns at once, and sends every record it cannot vouch for (orjson
refuses it, or any check of a column fails for it) through the reference path, so every rejection and
its reason come from the reference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson
import pandas as pd

from .definitions import FeatureSet
from .durations import parse_duration

DEFAULT_MAX_FUTURE = "1h"

#: The longest entity key (UTF-8 bytes, composite keys joined) accepted anywhere: an event with a longer
#: key is dead-lettered at ingest, and HTTP refuses it, so every stored entity can be read back.
MAX_ENTITY_BYTES = 1024

# Epoch-ms values in [1e9, 1e11) fall in 1970-01-12 .. 1973-03-03: real events of that time are unlikely,
# while epoch *seconds* of 2001 .. 5138 look exactly like that. Such a value is rejected with a hint.
_SECONDS_LOW, _SECONDS_HIGH = 1_000_000_000, 100_000_000_000


@dataclass(frozen=True)
class Rejected:
    """An event that failed decoding or validation: its position in the batch, the reason, the raw bytes."""

    index: int
    reason: str
    raw: bytes | None = None


class InvalidValue(ValueError):
    """A field's value does not fit its declared type."""


def parse_timestamp(value) -> int:
    """Epoch milliseconds (int) or an ISO-8601 string -> int epoch ms (UTC; naive strings are UTC)."""
    if isinstance(value, bool):
        raise InvalidValue(f"timestamp must be epoch ms or ISO-8601, got boolean {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise InvalidValue(f"timestamp must be whole epoch milliseconds, got {value!r}")
        return int(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidValue(f"timestamp {value[:64]!r} is not ISO-8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    raise InvalidValue(f"timestamp must be epoch ms or ISO-8601, got {type(value).__name__}")


_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _check(dtype: str, name: str, value):
    if value is None:
        return None
    if dtype == "float64":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidValue(f"{name} must be a number, got {type(value).__name__} {str(value)[:40]!r}")
        try:
            return float(value)
        except OverflowError:
            raise InvalidValue(f"{name} is out of the float64 range") from None
    if dtype == "int64":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValue(f"{name} must be an integer, got {type(value).__name__} {str(value)[:40]!r}")
        if not _I64_MIN <= value <= _I64_MAX:
            raise InvalidValue(f"{name} does not fit a 64-bit integer")
        return value
    if dtype == "string":
        if not isinstance(value, str):
            raise InvalidValue(f"{name} must be a string, got {type(value).__name__}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidValue(f"{name} is not valid Unicode (unpaired surrogate at {exc.start})") from None
        return value
    if dtype == "bool":
        if not isinstance(value, bool):
            raise InvalidValue(f"{name} must be true or false, got {type(value).__name__}")
        return value
    if dtype == "timestamp":
        return parse_timestamp(value)
    raise InvalidValue(f"{name}: unsupported type {dtype}")


class EventValidator:
    """Turns JSON payloads into typed rows for one FeatureSet, rejecting bad ones with a reason."""

    def __init__(self, feature_set: FeatureSet, max_future: str = DEFAULT_MAX_FUTURE):
        self.feature_set = feature_set
        self.max_future_ms = parse_duration(max_future)
        self.columns = list(feature_set.schema)
        # Resolved once: validate runs per event on the worker's hot path.
        self._checks = [(column, feature_set.schema[column]) for column in self.columns]
        self._floats = [c for c, dtype in self._checks if dtype == "float64"]
        self._entities = feature_set.entity_names
        self._ts_key = feature_set.timestamp_key

    def validate(self, obj, now_ms: int) -> dict:
        """One decoded JSON value -> a typed row dict; raises InvalidValue with the reason."""
        if not isinstance(obj, dict):
            raise InvalidValue(f"event must be a JSON object, got {type(obj).__name__}")
        get = obj.get
        row = {column: _check(dtype, column, get(column)) for column, dtype in self._checks}
        size = len(self._entities) - 1  # separators of a composite key
        for entity in self._entities:
            key = row.get(entity)
            if key is None or key == "":
                raise InvalidValue(f"missing entity key {entity!r}")
            size += len(key.encode("utf-8")) if isinstance(key, str) else len(str(key))
        if size > MAX_ENTITY_BYTES:
            raise InvalidValue(
                f"entity key of {size} bytes is longer than {MAX_ENTITY_BYTES}: it could never be read back"
            )
        ts = row.get(self._ts_key)
        if ts is None:
            raise InvalidValue(f"missing timestamp {self._ts_key!r}")
        if ts < 0:
            raise InvalidValue(f"timestamp {ts} is before 1970")
        if _SECONDS_LOW <= ts < _SECONDS_HIGH:
            raise InvalidValue(
                f"timestamp {ts} looks like epoch seconds ({_iso(ts * 1000)} in seconds, {_iso(ts)} in "
                "milliseconds): send epoch milliseconds or an ISO-8601 string"
            )
        if ts > now_ms + self.max_future_ms:
            raise InvalidValue(f"timestamp {ts} is more than {self.max_future_ms} ms in the future")
        for column in self._floats:
            value = row[column]
            if value is not None and not math.isfinite(value):
                raise InvalidValue(f"{column} must be finite, got {value!r}")
        return row

    def decode(
        self, payloads: Sequence[bytes | str | None], now_ms: int
    ) -> tuple[list[dict], list[int], list[Rejected]]:
        """Payloads -> (valid rows, their batch positions, rejects). Never raises: every payload ends up
        as a row or as a ``Rejected`` with a one-line reason. Every consumer (worker, sink, backfill,
        ingest, verify) decodes through here, so they all accept and refuse the same records."""
        rows, positions, rejected = [], [], []
        for i, raw in enumerate(payloads):
            try:
                rows.append(self.validate(parse_payload(raw), now_ms))
                positions.append(i)
            except InvalidValue as exc:
                rejected.append(Rejected(i, str(exc), _as_bytes(raw)))
            except Exception as exc:
                reason = f"cannot decode: {type(exc).__name__}: {str(exc)[:120]}"
                rejected.append(Rejected(i, reason, _as_bytes(raw)))
        return rows, positions, rejected

    def to_frame(self, rows: list[dict]) -> pd.DataFrame:
        """Typed rows -> a DataFrame with schema dtypes (timestamps as int64 epoch ms)."""
        return rows_to_frame(self.feature_set, rows)

    def decode_frame(
        self, payloads: Sequence[bytes | str | None], now_ms: int
    ) -> tuple[pd.DataFrame, list[int], list[Rejected]]:
        """``decode`` then ``to_frame``, for a batch: the same frame, positions and rejections, faster.

        Payloads are parsed with orjson and the schema is checked column by column. A record that orjson
        refuses (orjson is stricter than ``json``: NaN literals, lone surrogates, numbers beyond float64) or
        that fails any column check (a wrong type, a timestamp as text, a key too long, ...) is decoded by the
        reference path (``json`` and ``validate``), which accepts it or gives the reason it is refused.
        """
        n = len(payloads)
        if n == 0:
            return self.to_frame([]), [], []
        try:
            loads = orjson.loads
            objects = [loads(p) for p in payloads]  # a Python loop: other threads get their turns meanwhile
        except Exception:  # some record orjson refuses: parse one by one, marking those
            objects = [_loads_or_slow(p) for p in payloads]
        slow = np.zeros(n, dtype=bool)
        if not all(type(o) is dict for o in objects):
            slow |= np.fromiter((type(o) is not dict for o in objects), bool, n)
            objects = [o if type(o) is dict else _EMPTY for o in objects]
        columns = {}
        for column, dtype in self._checks:
            values = [o.get(column) for o in objects]
            columns[column] = values
            slow |= _column_mismatch(dtype, values, column == self._ts_key)
        ts = np.fromiter((0 if bad else v for v, bad in zip(columns[self._ts_key], slow.tolist(), strict=True)),
                         np.int64, n)  # fmt: skip
        slow |= (ts < 0) | ((ts >= _SECONDS_LOW) & (ts < _SECONDS_HIGH)) | (ts > now_ms + self.max_future_ms)
        slow |= self._key_mismatch(columns)
        if not slow.any():
            return self._frame(columns, n), list(range(n)), []
        rejected = []
        keep = ~slow
        for i in np.flatnonzero(slow).tolist():
            raw = payloads[i]
            try:
                row = self.validate(parse_payload(raw), now_ms)
            except InvalidValue as exc:
                rejected.append(Rejected(i, str(exc), _as_bytes(raw)))
                continue
            except Exception as exc:
                rejected.append(Rejected(i, f"cannot decode: {type(exc).__name__}: {str(exc)[:120]}", _as_bytes(raw)))
                continue
            keep[i] = True
            for column, values in columns.items():
                values[i] = row[column]
        positions = np.flatnonzero(keep).tolist()
        picked = {c: [values[i] for i in positions] for c, values in columns.items()}
        return self._frame(picked, len(positions)), positions, rejected

    def _key_mismatch(self, columns: dict) -> np.ndarray:
        """Rows whose entity key is missing, empty or possibly longer than ``MAX_ENTITY_BYTES``."""
        keys = [columns[e] for e in self._entities]
        n = len(keys[0])
        bad = np.zeros(n, dtype=bool)
        chars = np.zeros(n, dtype=np.int64)
        for values in keys:
            if None in values or "" in values:
                bad |= np.fromiter((v is None or v == "" for v in values), bool, n)
            chars += np.fromiter((len(v) if type(v) is str else 21 for v in values), np.int64, n)
        # UTF-8 takes at most 4 bytes per character: only a long key is measured exactly (by the reference).
        bad |= 4 * chars + (len(keys) - 1) > MAX_ENTITY_BYTES
        return bad

    def _frame(self, columns: dict, n: int) -> pd.DataFrame:
        """Checked column values -> the frame ``rows_to_frame`` makes of the same rows."""
        out = {}
        for column, dtype in self._checks:
            values = columns[column]
            if dtype == "float64":
                if None in values:
                    values = [np.nan if v is None else v for v in values]
                out[column] = np.array(values, dtype=np.float64).reshape(n)
            elif column == self._ts_key:
                out[column] = np.array(values, dtype=np.int64).reshape(n)
            elif dtype == "string":
                arr = np.empty(n, dtype=object)
                arr[:] = values
                out[column] = pd.Series(arr, dtype=object, copy=False)  # not inferred as pandas strings
            else:
                out[column] = pd.array(values, dtype=_PANDAS_DTYPES[dtype])
        return pd.DataFrame(out, index=pd.RangeIndex(n))


def parse_payload(raw: bytes | str | None):
    """A record's payload -> the decoded JSON value; ``InvalidValue`` with a one-line reason otherwise.

    Bytes must be UTF-8 (``json.loads`` would guess UTF-16/32 from the first bytes and give a misleading
    reason); nesting too deep for the parser is refused like any other malformed JSON.
    """
    if raw is None:
        raise InvalidValue("empty record (null payload)")
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidValue(f"not valid UTF-8 (byte {exc.start}: {bytes(raw)[exc.start : exc.start + 4]!r})") from None
    elif isinstance(raw, str):
        text = raw
    else:
        raise InvalidValue(f"payload must be bytes or text, got {type(raw).__name__}")
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidValue("not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise InvalidValue(f"not valid JSON: {str(exc)[:120]}") from None


_EMPTY: dict = {}
_SLOW = object()  # a record orjson refuses: decoded by the reference path
_FLOAT_EXACT = 2**53  # ints up to this convert to float64 exactly whichever parser read them
_ALLOWED = {
    "float64": frozenset({float, int, type(None)}),
    "int64": frozenset({int, type(None)}),
    "string": frozenset({str, type(None)}),
    "bool": frozenset({bool, type(None)}),
    "timestamp": frozenset({int, type(None)}),  # epoch ms; ISO strings and whole floats: the reference path
    "event time": frozenset({int}),  # the timestamp key: never null
}


def _loads_or_slow(raw):
    try:
        return orjson.loads(raw)
    except Exception:
        return _SLOW


def _column_mismatch(dtype: str, values: list, timestamp: bool) -> np.ndarray | bool:
    """Rows whose value the column check cannot vouch for (False when there is none)."""
    allowed = _ALLOWED["event time" if timestamp else dtype]
    types = set(map(type, values))
    mismatch: np.ndarray | bool = False
    if not types <= allowed:
        mismatch = np.fromiter((type(v) not in allowed for v in values), bool, len(values))
    if int in types and dtype in ("float64", "int64", "timestamp"):
        limit = _FLOAT_EXACT if dtype == "float64" else _I64_MAX
        far = [type(v) is int and not -limit <= v <= limit for v in values]
        if any(far):
            mismatch = mismatch | np.asarray(far, dtype=bool)
    return mismatch


def _iso(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "out of range"


def _as_bytes(raw) -> bytes | None:
    if raw is None:
        return None
    return raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "replace")


_PANDAS_DTYPES = {
    "float64": "float64",
    "int64": "Int64",
    "bool": "boolean",
    "string": object,
    "timestamp": "Int64",
}


def rows_to_frame(feature_set: FeatureSet, rows: list[dict]) -> pd.DataFrame:
    """Typed rows -> DataFrame: float64 (NaN null), nullable Int64/boolean, object strings, int64 ms timestamps."""
    frame = pd.DataFrame.from_records(rows, columns=list(feature_set.schema))
    for column, dtype in feature_set.schema.items():
        if dtype == "int64" and frame[column].dtype.kind == "f":  # nulls made it float: ints above 2**53 lost
            frame[column] = pd.array([row.get(column) for row in rows], dtype="Int64")
            continue
        frame[column] = frame[column].astype(_PANDAS_DTYPES[dtype])
    frame[feature_set.timestamp_key] = frame[feature_set.timestamp_key].astype("int64")
    return frame


def to_epoch_ms(values) -> np.ndarray:
    """A column of datetimes (any unit/zone), ISO strings or epoch-ms numbers -> int64 epoch ms."""
    series = pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(series):
        if getattr(series.dt, "tz", None) is not None:
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        return series.astype("datetime64[ms]").astype("int64").to_numpy()
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        if series.isna().any():
            raise ValueError("timestamp column has nulls")
        return series.astype("int64").to_numpy()
    parsed = pd.to_datetime(series, utc=True, format="ISO8601")
    return parsed.dt.tz_localize(None).astype("datetime64[ms]").astype("int64").to_numpy()


def entity_keys(feature_set: FeatureSet, frame: pd.DataFrame) -> np.ndarray:
    """The entity key of each row as one string (composite keys joined by U+001F)."""
    names = feature_set.entity_names
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise KeyError(f"feature set {feature_set.name!r} needs entity column(s) {missing}")
    if len(names) == 1:
        return frame[names[0]].astype(str).to_numpy(dtype=object)
    parts = [frame[n].astype(str) for n in names]
    joined = parts[0]
    for p in parts[1:]:
        joined = joined + "\x1f" + p
    return joined.to_numpy(dtype=object)
