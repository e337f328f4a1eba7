"""featurestream.stream: the online path.

A Faust worker consumes each FeatureSet's source topic in micro-batches, folds them into per-entity
tile state through the ``aggregations`` kernel (stored in a RocksDB-backed Faust table with a Kafka
changelog), and serves features over HTTP. Imports ``aggregations`` only, never ``sinks``.
"""
