"""Line charts as SVG text, made on the server: the page needs no chart library.

Each chart carries ``data-chart`` (its title) and ``data-points`` (how many points it draws),
so a test or a script can tell that a chart grew without reading its pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
"""Line colours, in the order series are drawn; an emphasised series is drawn in black."""

_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 52, 12, 24, 34


@dataclass(frozen=True)
class Series:
    """One line: its label and its points ``(x, y)``; an emphasised line is drawn thicker and
    black; ``colour`` (a CSS colour) keeps a line's colour the same from chart to chart."""

    label: str
    points: list[tuple[float, float]] = field(default_factory=list)
    emphasis: bool = False
    colour: str | None = None


def line_chart(
    title: str, series: list[Series], *, x_label: str, width: int = 380, height: int = 200
) -> str:
    """An SVG line chart of ``series`` with its axes, three ticks on each and a legend.

    Points that are not finite numbers are left out; a chart with no point says so.
    """
    clean = [
        Series(s.label, [(x, y) for x, y in s.points if math.isfinite(x) and math.isfinite(y)],
               s.emphasis, s.colour)
        for s in series
    ]  # fmt: skip
    count = sum(len(s.points) for s in clean)
    legend_rows = math.ceil(len(clean) / 3) if clean else 0
    full_height = height + 16 * legend_rows
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{full_height}" viewBox="0 0 {width} {full_height}" role="img" '
        f'data-chart="{escape(title)}" data-points="{count}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{width / 2:.0f}" y="15" text-anchor="middle" font-size="12" '
        f'font-weight="bold">{escape(title)}</text>',
    ]
    left, right = _MARGIN_LEFT, width - _MARGIN_RIGHT
    top, bottom = _MARGIN_TOP, height - _MARGIN_BOTTOM
    parts.append(
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'fill="#fff" stroke="#bbb"/>'
    )
    if count == 0:
        parts.append(
            f'<text x="{(left + right) / 2:.0f}" y="{(top + bottom) / 2:.0f}" '
            'text-anchor="middle" font-size="11" fill="#888">no data yet</text></svg>'
        )
        return "".join(parts)
    xs = [x for s in clean for x, _ in s.points]
    ys = [y for s in clean for _, y in s.points]
    whole = all(float(x).is_integer() for x in xs)
    x0, x1 = _span(min(xs), max(xs), whole=whole)
    y0, y1 = _span(min(ys), max(ys))

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y0) / (y1 - y0) * (bottom - top)

    for value in (y0, (y0 + y1) / 2, y1):
        parts.append(
            f'<line x1="{left}" x2="{right}" y1="{py(value):.1f}" y2="{py(value):.1f}" '
            'stroke="#eee"/>'
            f'<text x="{left - 4}" y="{py(value) + 4:.1f}" text-anchor="end" '
            f'font-size="10">{_tick(value)}</text>'
        )
    middle = (x0 + x1) / 2
    if whole:  # rounds: whole ticks only
        middle = float(round(middle))
    for value in dict.fromkeys((x0, middle, x1)):
        parts.append(
            f'<text x="{px(value):.1f}" y="{bottom + 13}" text-anchor="middle" '
            f'font-size="10">{_tick(value)}</text>'
        )
    parts.append(
        f'<text x="{(left + right) / 2:.0f}" y="{bottom + 27}" text-anchor="middle" '
        f'font-size="10" fill="#555">{escape(x_label)}</text>'
    )
    for index, s in enumerate(clean):
        colour = s.colour or ("#000" if s.emphasis else PALETTE[index % len(PALETTE)])
        thickness = 2.5 if s.emphasis else 1.5
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        if len(s.points) > 1:
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="{thickness}" '
                f'points="{coords}"/>'
            )
        if len(s.points) <= 40:
            parts.extend(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>'
                for x, y in s.points
            )
        row, column = divmod(index, 3)
        lx, ly = left + column * ((right - left) / 3), height + 16 * row + 4
        parts.append(
            f'<rect x="{lx:.0f}" y="{ly:.0f}" width="10" height="3" fill="{colour}"/>'
            f'<text x="{lx + 14:.0f}" y="{ly + 5:.0f}" font-size="10">'
            f"{escape(_short(s.label))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _span(low: float, high: float, *, whole: bool = False) -> tuple[float, float]:
    """An axis range around ``low``..``high`` that is never empty."""
    if high > low:
        return low, high
    pad = 1.0 if whole else abs(low) * 0.05 or 1.0
    return low - pad, high + pad


def _tick(value: float) -> str:
    if value != 0 and (abs(value) >= 10_000 or abs(value) < 0.01):
        return f"{value:.2g}"
    return f"{value:.3g}"


def _short(label: str, limit: int = 18) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"
