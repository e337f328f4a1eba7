"""Definitions for tests/integration/test_surface.py: the example's transactions set, a set keyed by a
compound entity (user_id, merchant) whose aggregated column is made by a transform (cents from amount), and a
set of plain features only (profiles)."""

from aggregations import Aggregation, Entity, Feature, FeatureSet, FeatureVector, Registry
from examples.transactions.features import fraud, transactions


def amount_in_cents(frame):
    """A row-level transform: a new column, as a batch function over the frame."""
    frame = frame.copy()
    frame["cents"] = (frame["amount"] * 100).round()
    return frame


user_merchant = FeatureSet(
    name="user_merchant",
    entities=[Entity("user_id"), Entity("merchant")],
    timestamp_key="ts",
    source="payments",
    schema={"user_id": "string", "merchant": "string", "ts": "timestamp", "amount": "float64"},
    transforms=[amount_in_cents],
    aggregations=[Aggregation("cents", ["count", "sum", "max"], windows=["1h", "1d"])],
)

profiles = FeatureSet(
    name="profiles",
    entities=[Entity("user_id")],
    timestamp_key="ts",
    source="profiles",
    schema={"user_id": "string", "ts": "timestamp", "country": "string", "age": "int64", "vip": "bool"},
    features=[Feature("country", ttl="30d"), Feature("age"), Feature("vip", ttl="2h")],
)

pair = FeatureVector("pair", ["transactions.amount_count_1h", "user_merchant.*"])
scoring = FeatureVector("scoring", ["transactions.amount_avg_90d", "profiles.country", "profiles.age"])

registry = Registry([transactions, user_merchant, profiles], [fraud, pair, scoring])
