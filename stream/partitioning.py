"""Which partition an entity's events belong in: Kafka's default partitioner (murmur2 of the key).

A worker keeps an entity's state in one partition and routes reads with the same hash (Faust's
router asks the producer's default partitioner), so an event belongs in ``murmur2(key) % n``. Events
that a producer placed elsewhere (no key, another key, another partitioner such as librdkafka's
CRC32 default) are forwarded to the set's ``.by-entity`` topic, keyed by entity.
"""

from __future__ import annotations

from functools import lru_cache

from aggregations.bookkeeping import home_partition


@lru_cache(maxsize=1 << 18)
def entity_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions`` (cached)."""
    return home_partition(key, partitions)
