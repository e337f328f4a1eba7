"""What changed between two versions of a feature set's definition, in words a user can act on.

A definition (``FeatureSet.definition()``) is plain JSON data and its fingerprint versions the online
state. The worker refuses to start a changed set on empty state, and ``featurestream plan`` shows
these changes before they are deployed.
"""

from __future__ import annotations

from collections.abc import Mapping


def _windows(aggregation: Mapping) -> list[str]:
    return [w[0] for w in aggregation.get("windows", [])]


def _by_name(aggregations) -> dict[str, Mapping]:
    return {a.get("name") or a.get("column"): a for a in aggregations or []}


def definition_changes(old: Mapping, new: Mapping) -> list[str]:
    """Human-readable differences from ``old`` to ``new`` (empty when they are the same definition)."""
    out: list[str] = []
    for field, label in (("entities", "entities"), ("timestamp_key", "timestamp column")):
        if old.get(field) != new.get(field):
            out.append(f"{label}: {old.get(field)} -> {new.get(field)}")
    old_schema, new_schema = dict(map(tuple, old.get("schema", []))), dict(map(tuple, new.get("schema", [])))
    for column in sorted(old_schema.keys() | new_schema.keys()):
        before, after = old_schema.get(column), new_schema.get(column)
        if before != after:
            if before is None:
                out.append(f"schema: column {column!r} added ({after})")
            elif after is None:
                out.append(f"schema: column {column!r} removed")
            else:
                out.append(f"schema: column {column!r} {before} -> {after}")
    old_aggs, new_aggs = _by_name(old.get("aggregations")), _by_name(new.get("aggregations"))
    for name in sorted(old_aggs.keys() | new_aggs.keys()):
        before, after = old_aggs.get(name), new_aggs.get(name)
        if before is None:
            out.append(f"aggregation {name!r} added: {after['ops']} over {_windows(after)}")
        elif after is None:
            out.append(f"aggregation {name!r} removed")
        else:
            if before.get("column") != after.get("column"):
                out.append(f"aggregation {name!r}: column {before.get('column')} -> {after.get('column')}")
            if list(before.get("ops", [])) != list(after.get("ops", [])):
                out.append(f"aggregation {name!r}: ops {before.get('ops')} -> {after.get('ops')}")
            if before.get("windows") != after.get("windows"):
                out.append(f"aggregation {name!r}: windows {_windows(before)} -> {_windows(after)}")
    if old.get("transforms") != new.get("transforms"):
        out.append("transforms: code changed")
    return out
