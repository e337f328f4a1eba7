"""Table recovery that never moves an entity's state backwards.

Faust restores a table (on a new owner, a restarted worker, a standby) by applying its changelog records
in order, the newest record of a key winning. A worker expelled from its group while a batch was in flight
(it stopped heartbeating; the transaction's fence then stops it from storing and acking) may still have
that batch's records land in the changelog after the new owner has written newer states of the same
entities. Applied blindly, such a late record would replace the newer state on the next recovery. Here
each record is compared with the state it would replace, by the applied offsets both carry
(``aggregations.bookkeeping.moves_back``): one that is older is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from aggregations.bookkeeping import (
    CHECKPOINT_KEY,
    OFFSETS_META,
    Checkpoint,
    checkpoint_moves_back,
    moves_back,
)
from aggregations.codec import EntityStateCodec, StateMismatch

from .state_cache import StateCache
from .trace import TRACE

log = logging.getLogger(__name__)


def _offsets(codec: EntityStateCodec, blob: bytes | None) -> dict | None:
    if not blob:
        return None
    try:
        return codec.decode_meta(blob)[0].get(OFFSETS_META)
    except (StateMismatch, ValueError):
        return None


def is_stale(codec: EntityStateCodec, key: bytes, stored: bytes | None, incoming: bytes | None) -> bool:
    """Whether the changelog record ``incoming`` for ``key`` is older than the ``stored`` value."""
    if stored is None or incoming is None:
        return False
    if key == CHECKPOINT_KEY:
        return checkpoint_moves_back(Checkpoint.decode(stored), Checkpoint.decode(incoming))
    return moves_back(_offsets(codec, stored), _offsets(codec, incoming))


def forward_only(store, codec: EntityStateCodec, events: list) -> Iterator:
    """The changelog events of a recovery batch that do not move their key's state backwards."""
    latest: dict[tuple[int, bytes], bytes | None] = {}
    skipped = 0
    for event in events:
        message = event.message
        where = (message.partition, message.key)
        stored = latest[where] if where in latest else store._db_for_partition(message.partition).get(message.key)
        if is_stale(codec, message.key, stored, message.value):
            skipped += 1
            continue
        latest[where] = message.value
        yield event
    if TRACE:
        spans: dict[int, list[int]] = {}
        for event in events:
            m = event.message
            span = spans.setdefault(m.partition, [m.offset, m.offset])
            span[0], span[1] = min(span[0], m.offset), max(span[1], m.offset)
        log.info("trace recovery applied %s, skipped %d", spans, skipped)
    if skipped:
        log.warning("recovery skipped %d changelog record(s) older than the state they would replace", skipped)


def install(table, codec: EntityStateCodec) -> None:
    """Make ``table``'s changelog recovery (active and standby) skip records that move state backwards, and
    drop the keys it writes from the table's ``StateCache``."""
    cache = StateCache.of(table)

    def apply_changelog_batch(batch: Iterable) -> None:
        events = list(batch)
        keys: dict[int, list[bytes]] = {}
        for event in events:
            keys.setdefault(event.message.partition, []).append(event.message.key)
        for partition, written in keys.items():
            cache.invalidate(partition, written)
        table.data.apply_changelog_batch(
            forward_only(table.data, codec, events), to_key=table._to_key, to_value=table._to_value
        )
        for partition, written in keys.items():  # again: a fill read off the loop before the write is dropped
            cache.invalidate(partition, written)

    table.apply_changelog_batch = apply_changelog_batch
