"""Events forwarded to their entity's home partition through ``<topic>.by-entity``: the origin header and
how forwarded messages become records of the processor, grouped by applied-offset slot."""

from __future__ import annotations

from collections.abc import Sequence

from aggregations.bookkeeping import by_entity_slot, forwarded_slot

from .processor import SourceRecord

ORIGIN_HEADER = "featurestream-origin"


def origin_header(partition: int, offset: int) -> tuple[str, bytes]:
    """The header a forwarded event carries: its source partition and offset."""
    return ORIGIN_HEADER, f"{partition}:{offset}".encode()


def origin_of(message) -> tuple[int, int] | None:
    """(source partition, offset) from a forwarded message's header, or None if it has none."""
    for name, value in message.headers or ():
        if name == ORIGIN_HEADER:
            try:
                partition, offset = value.decode().split(":")
                return int(partition), int(offset)
            except (ValueError, UnicodeDecodeError):
                return None
    return None


def forwarded_groups(messages: Sequence) -> list[tuple[str, list[SourceRecord]]]:
    """Messages of the ``.by-entity`` topic as records per dedupe slot, in order of first appearance.

    A forwarded event's offset is its origin offset, deduplicated in its origin partition's slot, so
    a forward repeated after a crash is skipped. A record without the header (produced there by
    hand) keeps its own offset, in a slot of its own partition.
    """
    groups: dict[str, list[SourceRecord]] = {}
    for m in messages:
        origin = origin_of(m)
        if origin is None:
            record = SourceRecord(m.partition, m.offset, m.key, m.value)
            slot = by_entity_slot(m.partition)
        else:
            record = SourceRecord(m.partition, origin[1], m.key, m.value, origin_partition=origin[0])
            slot = forwarded_slot(origin[0])
        groups.setdefault(slot, []).append(record)
    return list(groups.items())
