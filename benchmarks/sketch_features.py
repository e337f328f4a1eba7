"""The example ``transactions`` set plus the sketch ops on ``amount``, for ``benchmarks/online.py --definitions``.

Same source and columns as examples/transactions/features.py, so the same sample events feed both; 36
features: the example's 18 and, per window (1h, 1d, 90d), p50/p90/p99, an approximate distinct count, the
5 most frequent amounts and the 5 latest.
"""

from aggregations import Aggregation, Entity, FeatureSet, FeatureVector, Registry

OPS = ["count", "sum", "avg", "min", "max", "last"]
SKETCHES = ["approx_percentile(0.5, 0.9, 0.99)", "approx_count_distinct", "top_k(5)", "last_k(5)"]

transactions = FeatureSet(
    name="transactions",
    entities=[Entity("user_id")],
    timestamp_key="ts",
    source="transactions",
    schema={"user_id": "string", "ts": "timestamp", "amount": "float64"},
    aggregations=[Aggregation("amount", [*OPS, *SKETCHES], windows=["1h", "1d", "90d"])],
)

# The example's vector, which the benchmark's freshness phase polls (it needs amount_count_1h).
fraud = FeatureVector(
    "fraud", ["transactions.amount_avg_90d", "transactions.amount_count_1h", "transactions.amount_sum_1d"]
)

registry = Registry([transactions], [fraud])
