"""Progress of long offline work: a tqdm bar on a terminal, a plain line every ``LINE_EVERY_S`` otherwise.

Log files and CI output get readable lines ("backfill transactions: 120k of 500k events (24%), 41k events/s")
instead of a bar's carriage returns. ``progress_bar(total, unit, desc, enabled)`` has tqdm's ``update`` and
``close``.
"""

from __future__ import annotations

import sys
import time

LINE_EVERY_S = 10.0


def _count(n: float) -> str:
    """3 significant digits with a k/M/G suffix: 950, 12.3k, 4.5M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


class LineProgress:
    """tqdm's ``update``/``close`` as a line on stderr at most every ``every_s`` seconds, and one at the end."""

    def __init__(self, total: int | None, unit: str, desc: str, every_s: float = LINE_EVERY_S, stream=None,
                 clock=time.monotonic):  # fmt: skip
        self.total, self.unit, self.desc, self.every_s = total, unit, desc, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.n = 0
        self.started = self.last = clock()
        self.closed = False

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        done = f"{_count(self.n)} of {_count(self.total)} {self.unit}s" if self.total else f"{_count(self.n)} {self.unit}s"
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        return f"{self.desc}: {done}{share}, {_count(self.n / elapsed)} {self.unit}s/s, {elapsed:.0f} s"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed and self.n:
            print(self.line(), file=self.stream, flush=True)
        self.closed = True


class _Off:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, unit: str, desc: str, enabled: bool = True, stream=None):
    """A tqdm bar if ``enabled`` and stderr is a terminal, periodic lines if ``enabled`` otherwise, else nothing."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return _Off()
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, unit_scale=True, desc=desc, file=stream, leave=False)
    return LineProgress(total, unit, desc, stream=stream)
