"""A fix for kafka-python 3.0.12's group consumer that the sink needs: a rebalance must always finish.

Bug (reproduced against a real broker: ``tests/integration/test_sink.py`` adds partitions under a running
consumer that polls with a short timeout): a group leader rejoins when the topic metadata it assigned
from changes (partitions added, or the first metadata update after ``subscribe``), or when its
subscription changes. ``ConsumerCoordinator.need_rejoin`` reports those conditions without setting
``rejoin_needed``, and the leader's own assignment step (``_perform_assignment``, which records the new
metadata snapshot) and JoinGroup (which records the joined subscription) make them false again while
the JoinGroup/SyncGroup round trip is still in flight. When ``poll(timeout_ms)`` gives up before that
round trip ends, the next polls find nothing to rejoin for and never take up the finished result: the
member stays "rebalancing" for good, with its partitions revoked, no fetches and no heartbeats, until
the broker expires it. A sink in that state consumes nothing, forever (a ``--once`` run never ends).

Fix: when either condition holds, also ``request_rejoin()``, as the Java client does (KAFKA-9815), so
the rejoin is retried until a JoinGroup/SyncGroup result is actually applied.
"""

from __future__ import annotations

_APPLIED = False


def apply() -> None:
    """Install the fix (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    from kafka.coordinator.consumer import ConsumerCoordinator

    unfixed = ConsumerCoordinator.need_rejoin

    def need_rejoin(self) -> bool:
        needed = unfixed(self)
        if needed and not self.rejoin_needed:
            self.request_rejoin()  # kept until a join result is applied, whatever the snapshots say by then
        return needed

    ConsumerCoordinator.need_rejoin = need_rejoin
    _APPLIED = True
