"""Definitions for tests/integration/test_surface.py: the example's transactions set, plus a set keyed by a
compound entity (user_id, merchant) whose aggregated column is made by a transform (cents from amount)."""

from aggregations import Aggregation, Entity, FeatureSet, FeatureVector, Registry
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

pair = FeatureVector("pair", ["transactions.amount_count_1h", "user_merchant.*"])

registry = Registry([transactions, user_merchant], [fraud, pair])
