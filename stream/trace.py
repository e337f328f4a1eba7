"""``FEATURESTREAM_TRACE=1``: the worker logs one line per batch it applies, per offset commit and per changelog
batch its table recovery applies, to follow a partition across workers when a fault test or a user finds a
discrepancy. Off by default: these lines come at every batch."""

from __future__ import annotations

import os

TRACE = os.environ.get("FEATURESTREAM_TRACE", "") not in ("", "0")
