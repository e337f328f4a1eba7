"""Sketch ops example: per-card amount percentiles, merchant diversity, favourite and latest merchants.

Events on topic ``payments``: {"card_id": str, "ts": epoch-ms or ISO-8601, "amount": float, "merchant": str},
Kafka key = card_id. Every op here keeps bounded state per card, however busy the card is.
"""

from aggregations import Aggregation, Entity, FeatureSet, FeatureVector, Registry

payments = FeatureSet(
    name="payments",
    entities=[Entity("card_id")],
    timestamp_key="ts",
    source="payments",
    schema={"card_id": "string", "ts": "timestamp", "amount": "float64", "merchant": "string"},
    aggregations=[
        # amount_count_1h, amount_p50_1h, amount_p90_1h, amount_p99_1h, ... and the same for 1d and 30d
        Aggregation("amount", ["count", "approx_percentile(0.5, 0.9, 0.99)"], windows=["1h", "1d", "30d"]),
        # merchant_approx_count_distinct_1d, merchant_top3_1d, merchant_last5_1d, ...
        Aggregation("merchant", ["approx_count_distinct", "top_k(3)", "last_k(5)"], windows=["1h", "1d", "30d"]),
    ],
    description="Payments per card: amount percentiles and merchant diversity over 1 hour, 1 day and 30 days.",
)

card_risk = FeatureVector(
    "card_risk",
    [
        "payments.amount_p99_30d",
        "payments.merchant_approx_count_distinct_1d",
        "payments.merchant_top3_30d",
        "payments.merchant_last5_1d",
    ],
)

registry = Registry([payments], [card_risk])
