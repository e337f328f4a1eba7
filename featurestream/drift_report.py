"""The HTML drift report: a table of PSI and Hellinger per feature and, per feature, an inline SVG histogram
overlaying the reference (training) and current (served) distributions over the same bins. No plotting
library: the SVG is written here.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from aggregations.drift import FeatureDrift, proportions

WIDTH, HEIGHT = 640, 220
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 44, 58, 12
REFERENCE_COLOR, CURRENT_COLOR = "#4c78a8", "#f58518"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; } td, th { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
td:first-child, th:first-child { text-align: left; } .drift { color: #c0392b; font-weight: bold; }
section { margin-top: 2em; } .legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; }
svg text { font-size: 10px; fill: #444; }
"""


def svg_histogram(d: FeatureDrift) -> str:
    """Overlaid bars per bin: reference (wide, translucent) and current (narrower, on top)."""
    ref, cur = proportions(d.reference_counts), proportions(d.current_counts)
    top = max(float(ref.max(initial=0)), float(cur.max(initial=0))) or 1.0
    n = len(d.labels)
    plot_w, plot_h = WIDTH - MARGIN_LEFT - 8, HEIGHT - MARGIN_BOTTOM - MARGIN_TOP
    step = plot_w / n
    base = MARGIN_TOP + plot_h
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="histogram" data-feature="{html.escape(d.feature)}" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="histogram of {html.escape(d.feature)}">',
        f'<line x1="{MARGIN_LEFT}" y1="{base}" x2="{WIDTH - 8}" y2="{base}" stroke="#888"/>',
        f'<text x="{MARGIN_LEFT - 4}" y="{MARGIN_TOP + 8}" text-anchor="end">{top:.0%}</text>',
        f'<text x="{MARGIN_LEFT - 4}" y="{base}" text-anchor="end">0%</text>',
    ]
    for i, label in enumerate(d.labels):
        x = MARGIN_LEFT + i * step
        for cls, share, color, inset, opacity in (
            ("reference", ref[i], REFERENCE_COLOR, 0.08, 0.55),
            ("current", cur[i], CURRENT_COLOR, 0.28, 0.75),
        ):
            h = plot_h * float(share) / top
            parts.append(
                f'<rect class="bar {cls}" x="{x + step * inset:.1f}" y="{base - h:.1f}" '
                f'width="{step * (1 - 2 * inset):.1f}" height="{h:.1f}" fill="{color}" fill-opacity="{opacity}">'
                f"<title>{html.escape(label)}: {cls} {float(share):.1%}</title></rect>"
            )
        cx, ly = x + step / 2, base + 10
        parts.append(
            f'<text x="{cx:.1f}" y="{ly}" text-anchor="end" transform="rotate(-35 {cx:.1f} {ly})">'
            f"{html.escape(_short(label))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _short(label: str, width: int = 18) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def render_html(title: str, results: Sequence[FeatureDrift], reference_rows: int, current_rows: int) -> str:
    """The whole report as one self-contained HTML document."""
    drifted = [d.feature for d in results if d.drifted]
    thresholds = results[0].thresholds if results else {}
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
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{current_rows} current rows vs {reference_rows} reference rows: <strong>{verdict}</strong> "
        f"(thresholds: PSI &gt; {thresholds.get('psi', '')}, Hellinger &gt; {thresholds.get('hellinger', '')})</p>"
        f'<p class="legend"><span style="background:{REFERENCE_COLOR}"></span>reference (training)'
        f'<span style="background:{CURRENT_COLOR}"></span>current (served)</p>'
        f"<table><tr><th>feature</th><th>PSI</th><th>Hellinger</th><th></th></tr>{summary_rows}</table>"
        f"{sections}</body></html>\n"
    )
