"""The hand-drawn SVG charts: round ticks, bars to scale, points where they belong, text escaped."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from planner.report.charts import Point, Series, bar_chart, line_chart, number, ticks, usd

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (0, 6000, [0, 2000, 4000, 6000]),
        (0, 187, [0, 50, 100, 150, 200]),
        (0.883, 1.012, [0.85, 0.9, 0.95, 1.0, 1.05]),
        (0, 0, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (-3, 7, [-4, -2, 0, 2, 4, 6, 8]),
    ],
)
def test_ticks_are_round_and_cover_the_range(lo: float, hi: float, expected: list[float]) -> None:
    assert ticks(lo, hi) == pytest.approx(expected)


def test_tick_labels() -> None:
    assert [number(v) for v in (0, 2000.0, 0.25, 1234.5)] == ["0", "2,000", "0.25", "1,234.5"]
    assert [usd(v) for v in (0, 150.0, -2.5)] == ["$0", "$150", "-$2.5"]


def _rects(svg: str) -> list[ET.Element]:
    return [r for r in ET.fromstring(svg).iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]


def test_bars_are_drawn_to_scale_and_labels_escaped() -> None:
    names = ["classification", "<script>alert(1)</script> & a very long task type name"]
    svg = bar_chart(names, [Series("requests", "#4a6fa5", [6000, 1500])], x_label="requests")
    assert svg is not None
    root = ET.fromstring(svg)  # well-formed XML: every label escaped
    bars = _rects(svg)
    widths = [float(b.get("width") or 0) for b in bars]
    assert widths[0] == pytest.approx(4 * widths[1], rel=1e-3)
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert any(t.endswith("…") and len(t) < len(names[1]) for t in texts)  # shortened row label
    assert bars[1].find(f"{SVG}title").text.startswith(names[1])  # type: ignore[union-attr]
    assert not re.search(r"(href|src)=", svg)  # nothing fetched


def test_paired_bars_have_a_legend_and_no_data_draws_nothing() -> None:
    svg = bar_chart(
        ["a", "b"],
        [Series("today", "#999", [10, 20]), Series("after", "#2e8b57", [5, 0])],
        x_label="USD",
        fmt=usd,
    )
    assert svg is not None and len(_rects(svg)) == 4
    texts = [t.text for t in ET.fromstring(svg).iter(f"{SVG}text")]
    assert "today" in texts and "after" in texts and "$20" in texts
    assert bar_chart([], [], x_label="x") is None
    assert bar_chart(["a"], [Series("s", "#000", [0])], x_label="x") is None


def test_line_chart_places_points_on_their_coordinates() -> None:
    points = [Point(10, 0.9), Point(50, 0.95), Point(200, 1.0)]
    svg = line_chart(
        points,
        ["floor 0.5", "floor 0.9", "floor 1.0"],
        chosen=(points[1], "chosen"),
        reference=(Point(200, 1.0), "production today"),
        x_label="monthly cost (USD)",
        y_label="quality",
        x_fmt=usd,
    )
    assert svg is not None
    root = ET.fromstring(svg)
    circles = [
        (float(c.get("cx") or 0), float(c.get("cy") or 0)) for c in root.iter(f"{SVG}circle")
    ]
    plotted = circles[: len(points)]
    # x grows with cost, y (SVG grows downwards) shrinks as quality rises, linearly
    (x0, y0), (x1, y1), (x2, y2) = plotted
    assert x0 < x1 < x2 and y0 > y1 > y2
    assert (x1 - x0) / (x2 - x0) == pytest.approx(40 / 190, rel=1e-2)
    assert (y0 - y1) / (y0 - y2) == pytest.approx(0.5, rel=1e-2)
    assert len(list(root.iter(f"{SVG}polygon"))) == 2  # the chosen star, and its legend entry
    assert line_chart([], [], chosen=None, reference=None, x_label="x", y_label="y") is None
