"""The example feature set: per-user payment features, and the fraud vector of the README.

Events on topic ``transactions``: {"user_id": str, "ts": epoch-ms or ISO-8601, "amount": float},
Kafka key = user_id.
"""

from aggregations import Aggregation, Entity, FeatureSet, FeatureVector, OnRead, Registry


def amount_vs_avg_90d(frame):
    """The payment being scored divided by the user's 90-day average before it (the seed's example)."""
    return frame["amount"] / frame["amount_avg_90d"]


transactions = FeatureSet(
    name="transactions",
    entities=[Entity("user_id")],
    timestamp_key="ts",
    source="transactions",
    schema={"user_id": "string", "ts": "timestamp", "amount": "float64"},
    aggregations=[
        Aggregation("amount", ["count", "sum", "avg", "min", "max", "last"], windows=["1h", "1d", "90d"]),
    ],
    on_read=[OnRead("amount_vs_avg_90d", amount_vs_avg_90d, inputs=["amount"])],
    description="Payments per user: counts, sums and averages over 1 hour, 1 day and 90 days.",
)

fraud = FeatureVector(
    "fraud",
    [
        "transactions.amount_avg_90d",
        "transactions.amount_count_1h",
        "transactions.amount_sum_1d",
        "transactions.amount_vs_avg_90d",
    ],
)

registry = Registry([transactions], [fraud])
