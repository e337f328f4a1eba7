"""Durations such as "90d", "15m", "30s", "1h", "250ms" as integer milliseconds, and back."""

from __future__ import annotations

import re

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
_PATTERN = re.compile(r"^([1-9][0-9]*)(ms|s|m|h|d|w)$")


def parse_duration(text: str) -> int:
    """Parse a positive duration like ``"90d"`` into milliseconds; raise ValueError naming the value."""
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string like '90d', '1h', '15m' or '30s', got {text!r}")
    match = _PATTERN.match(text.strip())
    if not match:
        raise ValueError(
            f"malformed duration {text!r}: expected a positive integer and a unit "
            f"(ms, s, m, h, d, w), e.g. '90d', '1h', '15m', '30s'"
        )
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def format_duration(ms: int) -> str:
    """Render milliseconds with the largest unit that divides them exactly (86400000 -> "1d")."""
    if ms <= 0:
        raise ValueError(f"duration must be positive, got {ms} ms")
    for unit in ("d", "h", "m", "s"):
        if ms % _UNITS_MS[unit] == 0:
            return f"{ms // _UNITS_MS[unit]}{unit}"
    return f"{ms}ms"
