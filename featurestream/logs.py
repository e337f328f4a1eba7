"""Quiet logs: the Kafka clients' retry chatter is said once per interval, not dozens of times a second.

While a broker is down, aiokafka (the worker) and kafka-python (sink, backfill, bootstrap) log each failed
connect, metadata and fetch attempt: about 60 ERROR lines a second. ``RepeatFilter``, installed on the log
handlers, lets the first record of each kind through, drops repeats for ``interval_s`` and then says how
many it dropped. Records of the Kafka clients' retriable group-coordinator errors (``NotCoordinatorError``
and friends, normal while a fresh broker creates its offsets topic) become DEBUG. The CLI hands a filter to
each command as ``args.log_filter`` (``stream/`` and ``sinks/`` never import this module); its ``install()``
adds it to the root logger's handlers once the command has configured logging.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import warnings

CLIENT_LOGGERS = ("aiokafka", "kafka")
RETRIABLE_COORDINATOR = re.compile(
    r"NotCoordinator|CoordinatorNotAvailable|CoordinatorLoadInProgress|GroupCoordinatorNotAvailable"
)
_DIGITS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Pass the first of similar Kafka-client records per ``interval_s``; count the rest and say so."""

    def __init__(self, interval_s: float = 30.0, loggers: tuple[str, ...] = CLIENT_LOGGERS, clock=time.monotonic):
        super().__init__()
        self.interval_s = interval_s
        self.loggers = loggers
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], list] = {}  # kind -> [window start, dropped count]

    def _ours(self, record: logging.LogRecord) -> bool:
        return any(record.name == n or record.name.startswith(n + ".") for n in self.loggers)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._ours(record) or record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        if RETRIABLE_COORDINATOR.search(message):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        kind = (record.name, _DIGITS.sub("#", message)[:200])
        now = self.clock()
        with self._lock:
            seen = self._seen.get(kind)
            if seen is None or now - seen[0] >= self.interval_s:
                dropped = seen[1] if seen else 0
                self._seen[kind] = [now, 0]
                if dropped:
                    record.msg = f"{message} (and {dropped} similar in the last {self.interval_s:g} s)"
                    record.args = ()
                return True
            seen[1] += 1
            return False

    def install(self) -> None:
        """Add this filter to every handler of the root logger (where Faust and basicConfig put theirs)."""
        for handler in logging.getLogger().handlers:
            if self not in handler.filters:
                handler.addFilter(self)


# A float sum beyond float64 is inf (served as null) and inf - inf is NaN: expected, documented results,
# which NumPy would also print as RuntimeWarnings in the middle of a command's output.
NUMPY_OVERFLOW = ("overflow encountered", "invalid value encountered")


def quiet_numpy_overflow(environ=os.environ) -> None:
    """Hide NumPy's overflow warnings in this process and (``PYTHONWARNINGS``) in the processes it starts."""
    for message in NUMPY_OVERFLOW:
        warnings.filterwarnings("ignore", message=message, category=RuntimeWarning)
    current = [w for w in (environ.get("PYTHONWARNINGS") or "").split(",") if w]
    wanted = [f"ignore:{message}:RuntimeWarning" for message in NUMPY_OVERFLOW]
    environ["PYTHONWARNINGS"] = ",".join(current + [w for w in wanted if w not in current])
