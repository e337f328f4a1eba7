"""Tile math for the window contract.

A window W with period P covers, for a read at time t, the events with timestamp in
``[floor((t - W) / P) * P, t)``. State is kept in *levels* of tiles, one level per distinct period
plus a 1 ms level (exact events), and the periods of a feature set must divide one another. A read
covers its window with P-tiles up to ``floor(t / P) * P``, then with tiles of each smaller level,
and finally with exact 1 ms tiles up to t: full tiles plus an exact head, with no overlap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

from .durations import format_duration, parse_duration

MS = 1
SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# Default period candidates, largest first; each divides the one before it, so defaults always chain.
_CANDIDATES = (DAY, HOUR, 5 * MINUTE, MINUTE, SECOND, MS)


def default_period(window_ms: int) -> int:
    """Chronon-style rule: 5m tiles below 12h windows, 1h below 12d, 1d beyond.

    If that period does not divide the window (or exceeds it), the largest smaller candidate
    (1m, 1s, 1ms) that divides it is used.
    """
    if window_ms < 12 * HOUR:
        preferred = 5 * MINUTE
    elif window_ms < 12 * DAY:
        preferred = HOUR
    else:
        preferred = DAY
    for period in _CANDIDATES:
        if period <= preferred and period <= window_ms and window_ms % period == 0:
            return period
    return MS


@dataclass(frozen=True)
class Window:
    """A window length and its tile period, both in milliseconds; ``label`` is used in feature names."""

    label: str
    length: int
    period: int

    @classmethod
    def parse(cls, spec: str, period: str | None = None) -> Window:
        length = parse_duration(spec)
        if period is None:
            period_ms = default_period(length)
        else:
            period_ms = parse_duration(period)
            if period_ms > length or length % period_ms != 0:
                raise ValueError(f"period {period!r} does not divide window {spec!r}")
        return cls(spec.strip(), length, period_ms)

    def start(self, t):
        """Inclusive start of the window read at t (works on ints and numpy arrays)."""
        return ((t - self.length) // self.period) * self.period


def level_chain(periods: Iterable[int]) -> tuple[int, ...]:
    """Distinct periods, largest first, ending with the exact 1 ms level; they must divide one another."""
    chain = sorted(set(periods) | {MS}, reverse=True)
    for larger, smaller in pairwise(chain):
        if larger % smaller != 0:
            raise ValueError(
                f"tile periods must divide one another, but {format_duration(smaller)} does not divide "
                f"{format_duration(larger)}; choose periods such as 1d, 1h, 5m"
            )
    return tuple(chain)


def window_levels(window: Window, chain: tuple[int, ...]) -> tuple[int, ...]:
    """The levels a read of this window walks: its own period, then every smaller level."""
    return tuple(p for p in chain if p <= window.period)


def keep_from(level: int, chain: tuple[int, ...], windows: Iterable[Window], now: int) -> int:
    """Oldest tile start of ``level`` that a read at any time >= now can still reach."""
    starts = []
    for window in windows:
        if window.period == level:
            starts.append(window.start(now))
    larger = [p for p in chain if p > level]
    if larger:
        parent = min(larger)
        starts.append((now // parent) * parent)
    return min(starts) if starts else now
