"""Names the online store and its rebuilders must agree on: tile table, changelog topic, state meta keys.

The worker (stream/) writes each set's tile state to a Faust table whose changelog topic is the
durable copy; ``featurestream bootstrap`` (sinks/) writes that same changelog from Parquet history so a
fresh worker recovers full windows from it. stream/ and sinks/ may not import each other, so the names
both rely on live here, once. The table name carries the definition fingerprint: a changed definition
gets a new table (and changelog) and never reads old state.
"""

from __future__ import annotations

from .bookkeeping import OFFSETS_META
from .definitions import FeatureSet

__all__ = ["BY_ENTITY_SUFFIX", "DEFAULT_APP_ID", "OFFSETS_META", "changelog_topic", "changelog_versions", "definitions_topic", "table_name"]

DEFAULT_APP_ID = "featurestream"

#: Suffix of the topic where events outside their entity's home partition are forwarded (<source>.by-entity).
BY_ENTITY_SUFFIX = ".by-entity"


def table_name(feature_set: FeatureSet) -> str:
    """Name of a set's tile table: ``<set>-tiles-<definition fingerprint>``."""
    return f"{feature_set.name}-tiles-{feature_set.fingerprint()}"


def changelog_topic(feature_set: FeatureSet, app_id: str = DEFAULT_APP_ID) -> str:
    """The Kafka changelog topic of a set's tile table (Faust's ``<app id>-<table>-changelog``)."""
    return f"{app_id}-{table_name(feature_set)}-changelog"


def changelog_versions(topics, set_name: str, app_id: str = DEFAULT_APP_ID) -> dict[str, str]:
    """Definition fingerprint -> changelog topic, for every version of ``set_name`` among ``topics``."""
    prefix, suffix = f"{app_id}-{set_name}-tiles-", "-changelog"
    return {
        t[len(prefix) : -len(suffix)]: t
        for t in topics
        if t.startswith(prefix) and t.endswith(suffix) and len(t) > len(prefix) + len(suffix)
    }


def definitions_topic(app_id: str = DEFAULT_APP_ID) -> str:
    """Compacted topic where workers record each definition they ran (``featurestream plan`` reads it)."""
    return f"{app_id}-featurestream-definitions"
