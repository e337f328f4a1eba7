"""``stream.topics.ensure_changelogs`` against a real broker: the worker's table changelogs exist, compacted and
visible in the broker's metadata, before Faust's consumer subscribes to them."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from stream.topics import ensure_changelogs

pytestmark = pytest.mark.integration


def _described(bootstrap: str, topics: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    """(partitions, cleanup.policy set on the topic) of each topic."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="featurestream-tests")
    try:
        partitions = {t.get("topic", t.get("name")): len(t["partitions"]) for t in admin.describe_topics(topics)}
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        admin.close()
    modified = configs["topic"]  # only the settings that differ from the broker's defaults
    return partitions, {t: modified[t].get("cleanup.policy", {}).get("value", "(broker default)") for t in topics}


def test_missing_changelogs_are_created_compacted_and_visible(kafka_bootstrap):
    stem = f"it-changelogs-{uuid.uuid4().hex[:8]}"
    wanted = {f"{stem}-a-changelog": 3, f"{stem}-b-changelog": 5}
    ensure_changelogs(kafka_bootstrap, wanted)
    partitions, policies = _described(kafka_bootstrap, list(wanted))
    assert partitions == wanted
    assert set(policies.values()) == {"compact"}


def test_an_existing_changelog_is_left_as_it_is(kafka_bootstrap, new_topic):
    existing = new_topic(partitions=2)  # a plain topic, as an operator may have created it
    before = _described(kafka_bootstrap, [existing])
    ensure_changelogs(kafka_bootstrap, {existing: 2})
    assert _described(kafka_bootstrap, [existing]) == before
