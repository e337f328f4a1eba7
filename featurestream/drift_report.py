"""The HTML drift report: when it was made and from what (the reference file, the workers or file of the
current rows), how to read it, a table of PSI and Hellinger per feature and, per feature, an inline SVG
histogram overlaying the reference (training) and current (served) distributions over the same bins, with a
y-axis of shares and every bin label in full. No plotting library: the SVG is written here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime

from aggregations.drift import FeatureDrift, format_number, proportions

WIDTH, PLOT_HEIGHT = 680, 180
MARGIN_LEFT, MARGIN_TOP, MARGIN_RIGHT = 56, 12, 12
LABEL_ANGLE = 40  # degrees: bin labels are rotated, never cut
CHAR_WIDTH = 6.2  # px of one character at the labels' font size
REFERENCE_COLOR, CURRENT_COLOR = "#4c78a8", "#f58518"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 60em; }
table { border-collapse: collapse; } td, th { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
td:first-child, th:first-child { text-align: left; } .drift { color: #c0392b; font-weight: bold; }
section { margin-top: 2em; } .legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; }
.meta { color: #555; } svg text { font-size: 10px; fill: #444; } svg .axis-title { font-size: 11px; }
"""


def share(x: float) -> str:
    """A share of rows, the one way the report writes it."""
    return f"{100 * x:.1f}%"


def _tick_step(top: float) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) giving 3 to 6 ticks up to ``top``."""
    raw = top / 4
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def svg_histogram(d: FeatureDrift) -> str:
    """Overlaid bars per bin: reference (wide, translucent) and current (narrower, on top), on a y-axis of
    shares of rows with grid lines; bin labels rotated and whole."""
    ref, cur = proportions(d.reference_counts), proportions(d.current_counts)
    highest = max(float(ref.max(initial=0)), float(cur.max(initial=0))) or 1.0
    step = _tick_step(highest)
    top = step * math.ceil(highest / step - 1e-9)
    longest = max((len(label) for label in d.labels), default=1) * CHAR_WIDTH
    bottom = 16 + longest * math.sin(math.radians(LABEL_ANGLE))
    height = MARGIN_TOP + PLOT_HEIGHT + bottom
    n = len(d.labels)
    # The first bin's label runs down-left from under its bar: leave it room on the left too.
    reach = longest * math.cos(math.radians(LABEL_ANGLE))
    left = max(MARGIN_LEFT, min(WIDTH / 2, reach - (WIDTH - MARGIN_LEFT - MARGIN_RIGHT) / (2 * n) + 4))
    plot_w = WIDTH - left - MARGIN_RIGHT
    bin_w = plot_w / n
    base = MARGIN_TOP + PLOT_HEIGHT
    name = html.escape(d.feature)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="histogram" data-feature="{name}" width="{WIDTH}" '
        f'height="{height:.0f}" viewBox="0 0 {WIDTH} {height:.0f}" role="img" aria-label="histogram of {name}">',
        f'<text class="axis-title" x="12" y="{MARGIN_TOP + PLOT_HEIGHT / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 12 {MARGIN_TOP + PLOT_HEIGHT / 2:.0f})">share of rows</text>',
    ]
    for i in range(round(top / step) + 1):
        value = i * step
        y = base - PLOT_HEIGHT * value / top
        parts.append(
            f'<line class="grid" x1="{left:.1f}" y1="{y:.1f}" x2="{WIDTH - MARGIN_RIGHT}" y2="{y:.1f}" '
            f'stroke="{"#888" if i == 0 else "#e4e4e4"}"/>'
            f'<text class="tick" x="{left - 4:.1f}" y="{y + 3:.1f}" text-anchor="end">{share(value)}</text>'
        )
    for i, label in enumerate(d.labels):
        x = left + i * bin_w
        for cls, part, color, inset, opacity in (
            ("reference", ref[i], REFERENCE_COLOR, 0.08, 0.55),
            ("current", cur[i], CURRENT_COLOR, 0.28, 0.75),
        ):
            h = PLOT_HEIGHT * float(part) / top
            parts.append(
                f'<rect class="bar {cls}" x="{x + bin_w * inset:.1f}" y="{base - h:.1f}" '
                f'width="{bin_w * (1 - 2 * inset):.1f}" height="{h:.1f}" fill="{color}" fill-opacity="{opacity}">'
                f"<title>{html.escape(label)}: {cls} {share(float(part))}</title></rect>"
            )
        cx, ly = x + bin_w / 2, base + 12
        parts.append(
            f'<text class="bin" x="{cx:.1f}" y="{ly}" text-anchor="end" '
            f'transform="rotate(-{LABEL_ANGLE} {cx:.1f} {ly})">{html.escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(
    title: str,
    results: Sequence[FeatureDrift],
    reference_rows: int,
    current_rows: int,
    *,
    reference: str = "",
    current: str = "",
    made_at: datetime | None = None,
) -> str:
    """The whole report as one self-contained HTML document. ``reference``: where the reference rows come
    from (a file); ``current``: where the current rows come from (the workers and their ids, or a file)."""
    made_at = made_at or datetime.now(UTC)
    drifted = [d.feature for d in results if d.drifted]
    thresholds = results[0].thresholds if results else {}
    psi_t, hel_t = thresholds.get("psi"), thresholds.get("hellinger")
    summary_rows = "".join(
        f'<tr><td><a href="#f-{i}">{html.escape(d.feature)}</a></td><td>{d.psi:.4f}</td><td>{d.hellinger:.4f}</td>'
        f'<td class="{"drift" if d.drifted else ""}">{"drift" if d.drifted else "ok"}</td></tr>'
        for i, d in enumerate(results)
    )
    sections = "".join(
        f'<section id="f-{i}"><h2>{html.escape(d.feature)}</h2>'
        f"<p>PSI {d.psi:.4f} · Hellinger {d.hellinger:.4f} · "
        f'<span class="{"drift" if d.drifted else ""}">{"drift" if d.drifted else "no drift"}</span></p>'
        f"{svg_histogram(d)}</section>"
        for i, d in enumerate(results)
    )
    verdict = f"drift in {len(drifted)} of {len(results)} features" if drifted else "no drift"
    esc = html.escape
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1>"
        f'<p class="meta">Made {made_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC.<br>'
        f"Reference: {reference_rows} rows from {esc(reference or 'the reference file')}.<br>"
        f"Current: {current_rows} rows {esc(current or '')}.</p>"
        f"<p><strong>{verdict}</strong> (a feature drifts when PSI &gt; {esc(format_number(psi_t)) if psi_t is not None else ''}"
        f" or Hellinger &gt; {esc(format_number(hel_t)) if hel_t is not None else ''}).</p>"
        "<p>How to read it: each chart splits the feature's values into the reference's bins (deciles, or its "
        "values when they are few; missing values last) and shows which share of the reference rows (blue, "
        "wide) and of the current rows (orange, narrow) fall in each. Bars of equal height mean the same "
        "distribution; weight moving to bins further right means the current values are larger, further left "
        "smaller, and a growing last bin means more missing values.</p>"
        f'<p class="legend"><span style="background:{REFERENCE_COLOR}"></span>reference (training)'
        f'<span style="background:{CURRENT_COLOR}"></span>current (served)</p>'
        f"<table><tr><th>feature</th><th>PSI</th><th>Hellinger</th><th></th></tr>{summary_rows}</table>"
        f"{sections}</body></html>\n"
    )
