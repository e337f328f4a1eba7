"""featurestream.aggregations: declarations and the one aggregation kernel shared online and offline.

Pure: numpy, pandas, pyarrow and datasketches (sketch ops) only. No Kafka, no Faust, no files.
"""

from .definitions import Aggregation, Entity, Feature, FeatureSet, FeatureVector, OnRead, Plan, Registry
from .durations import format_duration, parse_duration
from .ops import OPS
from .schema import EventValidator, Rejected
from .stats import feature_statistics

__all__ = [
    "OPS",
    "Aggregation",
    "Entity",
    "EventValidator",
    "Feature",
    "FeatureSet",
    "FeatureVector",
    "OnRead",
    "Plan",
    "Registry",
    "Rejected",
    "feature_statistics",
    "format_duration",
    "parse_duration",
]
