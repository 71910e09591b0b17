"""Server-rendered SVG line charts for the dashboard: our own small module, no JavaScript.

A chart is a row of equal time bins on the x axis and one or more series of values (None:
no data in that bin, drawn as a gap). It has axes with units and ticks, and each bin carries
an SVG ``<title>`` with its time and values, which the browser shows on hover. Colours come
from CSS classes (``presence/console/console.css``) built on the admin's CSS variables, so
the light and dark admin themes both apply.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 14, 14, 40
Y_TICKS = 4


@dataclass(frozen=True)
class Series:
    """One line: a label for the legend and hover text, one value per bin, a CSS class."""

    label: str
    values: Sequence[float | None]
    css_class: str


@dataclass(frozen=True)
class TimeAxis:
    """The bins' start times (UTC, equally spaced by ``step``) and how to label them."""

    times: Sequence[dt.datetime]
    step: dt.timedelta
    tick_every: dt.timedelta
    tick_format: str
    hover_format: str


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= ``value`` (1 for nothing to show)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= value * (1 - 1e-9):
            return factor * power
    return 10 * power


def format_value(value: float) -> str:
    """A number for an axis label or hover text: 12, 1.5, 0.25, 1.2k, 3.4M."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:.3g}M"
    if value >= 10_000:
        return f"{value / 1000:.3g}k"
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:.3g}"


def _y_ticks(series: Sequence[Series]) -> list[float]:
    """Round tick values from 0 to just above the largest value (at most Y_TICKS steps)."""
    values = [v for s in series for v in s.values if v is not None]
    top = max(values, default=0.0)
    if top <= 0:
        return [0.0, 1.0]
    step = nice_ceiling(top / Y_TICKS)
    return [step * k for k in range(math.ceil(top / step - 1e-9) + 1)]


def _path(
    values: Sequence[float | None], x: list[float], y_of: Callable[[float], float]
) -> tuple[str, list[int]]:
    """The line's path data (a gap at each None) and the indexes of isolated points."""
    parts, isolated = [], []
    for i, value in enumerate(values):
        if value is None:
            continue
        before = i > 0 and values[i - 1] is not None
        after = i + 1 < len(values) and values[i + 1] is not None
        parts.append(f"{'L' if before else 'M'}{x[i]:.1f} {y_of(value):.1f}")
        if not before and not after:
            isolated.append(i)
    return " ".join(parts), isolated


def line_chart(
    *,
    title: str,
    unit: str,
    axis: TimeAxis,
    series: Sequence[Series],
    empty_text: str = "No data yet",
) -> str:
    """A ``<figure>`` with a legend and the SVG chart, or a "no data yet" note."""
    legend = format_html(
        '<ul class="console-legend">{}</ul>',
        mark_safe(  # noqa: S308 - built from format_html parts only
            "".join(
                format_html('<li><span class="swatch {}"></span>{}</li>', s.css_class, s.label)
                for s in series
            )
        ),
    )
    if all(v is None for s in series for v in s.values) or not axis.times:
        return format_html(
            '<figure class="console-chart"><figcaption>{}</figcaption>'
            '<p class="console-empty">{}</p></figure>',
            title,
            empty_text,
        )
    svg = _svg(title, unit, axis, series)
    return format_html(
        '<figure class="console-chart"><figcaption>{} {}</figcaption>{}</figure>',
        title,
        legend,
        svg,
    )


def _svg(title: str, unit: str, axis: TimeAxis, series: Sequence[Series]) -> SafeString:
    n = len(axis.times)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bin_w = plot_w / n
    x = [LEFT + (i + 0.5) * bin_w for i in range(n)]
    ticks = _y_ticks(series)
    y_max = ticks[-1]

    def y_of(value: float) -> float:
        return TOP + plot_h - (value / y_max) * plot_h

    out = [
        f'<svg class="console-svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        '<g class="grid">',
    ]
    # Y: gridlines and labels at round values; the unit along the axis.
    for value in ticks:
        yy = y_of(value)
        out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        out.append(
            f'<text class="tick" x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">'
            f"{escape(format_value(value))}</text>"
        )
    # X: a tick at each bin starting a tick period (every 3 h, every day ...), in UTC.
    every = int(axis.tick_every.total_seconds())
    for i, at in enumerate(axis.times):
        if int(at.timestamp()) % every == 0:
            xx = LEFT + i * bin_w
            out.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{TOP}" y2="{TOP + plot_h + 4}"/>')
            out.append(
                f'<text class="tick" x="{xx:.1f}" y="{TOP + plot_h + 17}" text-anchor="middle">'
                f"{escape(at.strftime(axis.tick_format))}</text>"
            )
    out.append("</g>")
    out.append(
        f'<g class="axis"><line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}"/>'
        f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/></g>'
    )
    out.append(
        f'<text class="unit" transform="translate(13 {TOP + plot_h / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(unit)}</text>'
    )
    out.append(
        f'<text class="unit" x="{LEFT + plot_w}" y="{HEIGHT - 4}" text-anchor="end">time (UTC)'
        "</text>"
    )
    for s in series:
        d, isolated = _path(s.values, x, y_of)
        if d:
            out.append(f'<path class="line {escape(s.css_class)}" d="{d}"/>')
        for i in isolated:
            point = s.values[i]
            assert point is not None
            out.append(
                f'<circle class="dot {escape(s.css_class)}" cx="{x[i]:.1f}" '
                f'cy="{y_of(point):.1f}" r="2.5"/>'
            )
    # Hover targets: one full-height strip per bin with data, titled with its values.
    out.append('<g class="hover">')
    for i, at in enumerate(axis.times):
        values = [(s.label, s.values[i]) for s in series if s.values[i] is not None]
        if not values:
            continue
        text = f"{at.strftime(axis.hover_format)} UTC\n" + "\n".join(
            f"{label}: {format_value(round(v, 2))}" for label, v in values if v is not None
        )
        out.append(
            f'<rect x="{LEFT + i * bin_w:.1f}" y="{TOP}" width="{bin_w:.2f}" height="{plot_h}">'
            f"<title>{escape(text)}</title></rect>"
        )
    out.append("</g></svg>")
    return mark_safe("".join(out))  # noqa: S308 - every interpolated text is escaped above
