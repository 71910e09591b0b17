"""The dashboard's SVG charts (presence/console/charts.py): pure functions, no database."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import pytest

from presence.console import charts

SVG = "{http://www.w3.org/2000/svg}"
START = dt.datetime(2026, 11, 24, 18, 0, tzinfo=dt.UTC)


def axis(n: int = 24) -> charts.TimeAxis:
    return charts.TimeAxis(
        times=[START + dt.timedelta(hours=i) for i in range(n)],
        step=dt.timedelta(hours=1),
        tick_every=dt.timedelta(hours=6),
        tick_format="%H:%M",
        hover_format="%Y-%m-%d %H:%M",
    )


def svg_of(figure: str) -> ET.Element:
    start = figure.index("<svg")
    return ET.fromstring(figure[start : figure.index("</svg>") + 6])


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [(0, 1), (0.3, 0.5), (1, 1), (3, 5), (7, 10), (11, 20), (240, 250), (260, 500)],
)
def test_nice_ceiling(value: float, ceiling: float) -> None:
    assert charts.nice_ceiling(value) == pytest.approx(ceiling)


def test_a_chart_has_axes_with_units_ticks_and_hover_values() -> None:
    values = [float(i) for i in range(24)]
    figure = charts.line_chart(
        title="Online",
        unit="users",
        axis=axis(),
        series=[charts.Series("users", values, "series-1")],
    )
    svg = svg_of(figure)  # well-formed XML
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert "users" in texts and "time (UTC)" in texts
    assert {"00:00", "06:00", "12:00", "18:00"} <= set(texts)  # x ticks every 6 h, UTC
    assert {"0", "10", "20", "30"} <= set(texts)  # round y ticks, just above the maximum
    hovers = [r.find(f"{SVG}title") for r in svg.iter(f"{SVG}rect")]
    assert len(hovers) == 24
    assert hovers[5] is not None and hovers[5].text == "2026-11-24 23:00 UTC\nusers: 5"
    assert len(list(svg.iter(f"{SVG}path"))) == 1
    assert "series-1" in figure and "swatch" in figure  # legend


def test_missing_bins_are_gaps_and_lone_points_are_dots() -> None:
    values: list[float | None] = [None] * 24
    values[2:5] = [1.0, 2.0, 3.0]
    values[10] = 4.0
    svg = svg_of(
        charts.line_chart(
            title="t", unit="u", axis=axis(), series=[charts.Series("s", values, "series-1")]
        )
    )
    (path,) = svg.iter(f"{SVG}path")
    assert path.get("d", "").count("M") == 2  # two runs: 2-4 and the lone 10
    assert len(list(svg.iter(f"{SVG}circle"))) == 1
    assert len([r for r in svg.iter(f"{SVG}rect")]) == 4  # hover only where there is data


def test_no_data_renders_a_note_not_an_empty_chart() -> None:
    figure = charts.line_chart(
        title="Online", unit="users", axis=axis(), series=[charts.Series("u", [None] * 24, "s")]
    )
    assert "<svg" not in figure and "No data yet" in figure


def test_text_is_escaped() -> None:
    figure = charts.line_chart(
        title="<b>x</b>",
        unit="a & b",
        axis=axis(2),
        series=[charts.Series("<i>", [1.0, 2.0], "series-1")],
    )
    assert "<b>" not in figure and "<i>" not in figure
    svg_of(figure)


def test_large_values_are_shortened() -> None:
    assert charts.format_value(1_250_000) == "1.25M"
    assert charts.format_value(25_000) == "25k"
    assert charts.format_value(1500) == "1,500"
    assert charts.format_value(0.25) == "0.25"
