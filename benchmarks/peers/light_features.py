"""The light ingest workload of benchmarks/peers: one 1h window with count, sum and avg of amount per user.

Same feature set name, source and schema as examples/transactions/features.py, so the same events and the
same ``featurestream_*{feature_set="transactions"}`` metrics apply; Quix Streams runs the same aggregation
(``peer_quix.py ... light``).
"""

from aggregations import Aggregation, Entity, FeatureSet, Registry

transactions = FeatureSet(
    name="transactions",
    entities=[Entity("user_id")],
    timestamp_key="ts",
    source="transactions",
    schema={"user_id": "string", "ts": "timestamp", "amount": "float64"},
    aggregations=[Aggregation("amount", ["count", "sum", "avg"], windows=["1h"])],
)

registry = Registry([transactions], [])
