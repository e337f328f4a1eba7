"""Statistics (``aggregations.stats`` dicts) as a readable text table, histograms as one-line sparklines."""

from __future__ import annotations

import math
from typing import Any

from aggregations.stats import QUANTILES, quantile_name

SPARKS = "▁▂▃▄▅▆▇█"
COLUMNS = ["feature", "type", "count", "nulls", "mean", "std", "min", *map(quantile_name, QUANTILES), "max", "histogram"]


def number(value: Any) -> str:
    """Compact number: integers as such, others to 4 significant digits; None as empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return f"{int(value)}"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def short_time(value: Any) -> str:
    """An ISO-8601 timestamp to seconds, without the UTC offset: ``2026-11-27 14:57:58``."""
    return "" if not value else str(value).replace("T", " ")[:19]


def sparkline(counts: list[int]) -> str:
    """One character per bin, height relative to the fullest bin; empty bins are blank."""
    top = max(counts, default=0)
    if top <= 0:
        return ""
    return "".join(" " if c == 0 else SPARKS[min(len(SPARKS) - 1, (c * len(SPARKS) - 1) // top)] for c in counts)


def rows(statistics: dict[str, Any]) -> list[list[str]]:
    """One list of cells per feature, in ``COLUMNS`` order."""
    out = []
    for name, s in statistics["features"].items():
        if s.get("type") == "timestamp":
            s = {**s, "min": short_time(s.get("min")), "max": short_time(s.get("max"))}
        q = s.get("quantiles") or {}
        hist = s.get("histogram") or {}
        out.append(
            [
                name,
                s.get("type", ""),
                number(s.get("count")),
                number(s.get("nulls")),
                number(s.get("mean")),
                number(s.get("std")),
                number(s.get("min")),
                *(number(q.get(quantile_name(p))) for p in QUANTILES),
                number(s.get("max")),
                sparkline(hist.get("counts") or []),
            ]
        )
    return out


def format_statistics(statistics: dict[str, Any], title: str | None = None) -> str:
    """The statistics as an aligned text table (numbers right-aligned), preceded by ``title``."""
    table = [COLUMNS, *rows(statistics)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    left = {0, 1, len(COLUMNS) - 1}
    lines = [title] if title else []
    for r in table:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def headline(statistics: dict[str, Any]) -> str:
    """``transactions: 20000 rows in 12 files, computed at ... (exact)``."""
    parts = [f"{statistics.get('feature_set') or statistics.get('file', 'statistics')}: {statistics['rows']} rows"]
    if "files" in statistics:
        parts.append(f"in {statistics['files']} files,")
    if "computed_at" in statistics:
        parts.append(f"computed {statistics['computed_at']}")
    exact = statistics.get("exact", True)
    parts.append("(exact)" if exact else f"(quantiles from a sample of {statistics.get('sample_size')})")
    return " ".join(parts)
