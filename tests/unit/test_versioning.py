"""Definition versions: what changed between two definitions, and when a worker must refuse to start."""

from __future__ import annotations

import pytest

from aggregations import Aggregation, Entity, FeatureSet
from aggregations.naming import changelog_topic, changelog_versions
from aggregations.versioning import definition_changes
from stream.versions import DefinitionChanged, SetVersion, check_versions


def pay(windows=("1h", "1d"), ops=("count", "sum"), schema_extra=None, transforms=()):
    schema = {"user": "string", "ts": "timestamp", "amount": "float64", **(schema_extra or {})}
    return FeatureSet("pay", [Entity("user")], "ts", "pay", schema, [Aggregation("amount", list(ops), windows=list(windows))],
                      transforms=list(transforms))  # fmt: skip


def test_same_definition_has_no_changes_and_the_same_fingerprint():
    assert definition_changes(pay().definition(), pay().definition()) == []
    assert pay().fingerprint() == pay().fingerprint()


def test_window_op_column_and_transform_changes_are_named():
    def add_fee(frame):
        return frame.assign(fee=frame["amount"] * 0.01)

    changes = definition_changes(
        pay().definition(),
        pay(
            windows=("1h", "7d"),
            ops=("count", "max"),
            schema_extra={"country": "string"},
            transforms=[add_fee],
        ).definition(),
    )
    assert "aggregation 'amount': windows ['1h', '1d'] -> ['1h', '7d']" in changes
    assert "aggregation 'amount': ops ['count', 'sum'] -> ['count', 'max']" in changes
    assert "schema: column 'country' added (string)" in changes
    assert "transforms: code changed" in changes
    assert pay().fingerprint() != pay(windows=("1h", "7d")).fingerprint()


def test_changelog_versions_are_found_by_name():
    topics = [
        changelog_topic(pay(), "app"),
        changelog_topic(pay(windows=("2h",)), "app"),
        "app-other-tiles-x-changelog",
    ]
    assert set(changelog_versions(topics, "pay", "app")) == {
        pay().fingerprint(),
        pay(windows=("2h",)).fingerprint(),
    }


@pytest.mark.parametrize(
    ("has_state", "others", "committed", "blocked"),
    [
        (True, ["old"], True, False),
        (False, [], False, False),
        (False, ["old"], False, False),
        (False, ["old"], True, True),
    ],
)
def test_a_worker_refuses_only_empty_state_behind_committed_offsets(has_state, others, committed, blocked):
    status = SetVersion("pay", "new", has_state, others, committed, ["aggregation 'amount': windows ..."])
    assert status.blocked is blocked
    if blocked:
        with pytest.raises(DefinitionChanged, match="featurestream bootstrap --feature-set pay"):
            check_versions([status])
        check_versions([status], allow_partial=True)  # warns, starts
    else:
        check_versions([status])
