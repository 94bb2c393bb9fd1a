"""Inline SVG charts, drawn on the server: no chart library, no JavaScript, nothing to fetch.

Pure functions: data in, an SVG string out (labels escaped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

W, H = 360, 170  # viewBox size in px; the page scales the SVG to its column
PAD_L, PAD_R, PAD_T, PAD_B = 56, 10, 22, 26


def _ticks(lo: float, hi: float) -> list[float]:
    """Three round-ish values spanning [lo, hi] for the y axis."""
    if hi == lo:
        return [lo]
    return [lo, (lo + hi) / 2, hi]


def _num(v: float) -> str:
    return f"{v:.3g}"


def line_chart(title: str, points: Sequence[tuple[float, float]]) -> Markup:
    """One metric against step: a polyline with its first/last step on x and min/mid/max on y.

    ``points``: (step, value) pairs, sorted by step. Non-finite values are left out."""
    pts = [(x, y) for x, y in points if math.isfinite(y)]
    head = f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">'
    parts = [head, f'<text class="title" x="{PAD_L}" y="14">{escape(title)}</text>']
    if not pts:
        parts.append(f'<text class="empty" x="{W / 2}" y="{H / 2}">no values</text></svg>')
        return Markup("".join(parts))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if y1 == y0:  # a flat line still gets a visible band
        y0, y1 = y0 - 0.5 * (abs(y0) or 1), y1 + 0.5 * (abs(y1) or 1)

    def sx(x: float) -> float:
        return PAD_L + (W - PAD_L - PAD_R) * ((x - x0) / (x1 - x0) if x1 > x0 else 0.5)

    def sy(y: float) -> float:
        return H - PAD_B - (H - PAD_T - PAD_B) * (y - y0) / (y1 - y0)

    for t in _ticks(y0, y1):
        y = sy(t)
        parts.append(
            f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(f'<text class="tick" x="{PAD_L - 4}" y="{y + 4:.1f}">{_num(t)}</text>')
    parts.append(f'<text class="xtick" x="{PAD_L}" y="{H - 8}">{_num(x0)}</text>')
    parts.append(f'<text class="xtick end" x="{W - PAD_R}" y="{H - 8}">step {_num(x1)}</text>')
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    parts.append(f'<polyline class="series" points="{path}"/>')
    if len(pts) == 1:
        parts.append(f'<circle class="dot" cx="{sx(xs[0]):.1f}" cy="{sy(ys[0]):.1f}" r="3"/>')
    parts.append(f'<text class="last" x="{W - PAD_R}" y="14">last {_num(ys[-1])}</text></svg>')
    return Markup("".join(parts))


def histogram(title: str, values: Sequence[float], bins: int = 10) -> Markup:
    """Counts of ``values`` in ``bins`` equal bins over [0, 1] (region scores are
    probabilities); values outside are clipped into the end bins."""
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    top = max(counts) or 1
    head = f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">'
    parts = [head, f'<text class="title" x="{PAD_L}" y="14">{escape(title)}</text>']
    span = (W - PAD_L - PAD_R) / bins
    inner = H - PAD_T - PAD_B
    for i, n in enumerate(counts):
        h = inner * n / top
        x, y = PAD_L + i * span, H - PAD_B - h
        parts.append(
            f'<rect class="hbar" x="{x + 1:.1f}" y="{y:.1f}" width="{span - 2:.1f}" '
            f'height="{h:.1f}"><title>{i / bins:.1f}-{(i + 1) / bins:.1f}: {n}</title></rect>'
        )
    parts.append(f'<text class="tick" x="{PAD_L - 4}" y="{PAD_T + 4}">{top}</text>')
    parts.append(f'<text class="xtick" x="{PAD_L}" y="{H - 8}">0</text>')
    parts.append(f'<text class="xtick end" x="{W - PAD_R}" y="{H - 8}">score 1</text>')
    parts.append(f'<text class="last" x="{W - PAD_R}" y="14">{len(values)} regions</text></svg>')
    return Markup("".join(parts))
