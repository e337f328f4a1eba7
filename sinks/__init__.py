"""featurestream.sinks: the offline side. Kafka -> Parquet sink, dataset layout, point-in-time retrieval.

Imports only ``aggregations`` from the project (never ``stream``): the features are computed by the
same kernel as online.
"""

from .dataset import entity_partitions, read_events
from .offline import get_offline_features
from .parquet_sink import ParquetSink, SinkStats

__all__ = ["ParquetSink", "SinkStats", "entity_partitions", "get_offline_features", "read_events"]
