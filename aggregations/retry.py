"""Bounded retries of client calls that fail for a passing reason (a broker still starting, a group
coordinator not elected yet). Pure Python: it knows Kafka's errors only by their ``retriable`` flag, so
the worker, the sink, bootstrap, plan and verify share it without importing each other."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_DEADLINE_S = 60.0
#: Errors of Kafka clients that mean "not yet", though their classes are not flagged retriable.
TRANSIENT_NAMES = frozenset({"NoBrokersAvailable", "KafkaTimeoutError", "NodeNotReadyError"})


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may pass if the call is tried again: flagged retriable, or a known "not yet"."""
    return bool(getattr(exc, "retriable", False)) or type(exc).__name__ in TRANSIENT_NAMES


def retrying(
    call: Callable[[], T],
    what: str,
    *,
    deadline_s: float = DEFAULT_DEADLINE_S,
    transient: Callable[[BaseException], bool] = is_transient,
    sleep: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``call()``, tried again with backoff (0.2 s doubling to 5 s) while it fails with a transient error,
    until ``deadline_s`` has passed; then the last error is raised. Other errors are raised at once."""
    deadline = clock() + deadline_s
    delay = 0.2
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:
            if not transient(exc) or clock() + delay > deadline:
                raise
            if attempt == 1 or attempt % 5 == 0:
                log.warning("%s: %s: %s; trying again for up to %.0f s", what, type(exc).__name__, exc, deadline_s)
            sleep(delay)
            delay = min(delay * 2, 5.0)


class Retrying:
    """A client whose method calls are ``retrying``: ``Retrying(admin).list_group_offsets(...)``."""

    def __init__(self, client, deadline_s: float = DEFAULT_DEADLINE_S, **options):
        self._client = client
        self._deadline_s = deadline_s
        self._options = options

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            return retrying(
                lambda: attr(*args, **kwargs), f"Kafka {name}", deadline_s=self._deadline_s, **self._options
            )

        return call
