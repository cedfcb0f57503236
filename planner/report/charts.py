"""The plan's charts, drawn as inline SVG text.

Three plain shapes — bars per task type, paired bars (before / after), and the cost-quality line
of the floor sweep — need no plotting library: drawing them here keeps a plotting library's
import (about half a second, every nightly run) out of the run, and the output is small,
deterministic and scales with the page. Every label is escaped: task types come from the logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH = 640
FONT = 11
ROW = 22  # px per task type in the bar charts
CHAR_W = 6.4  # a sans-serif character at FONT px, roughly: sizes the label margin
GRID = "#e3e3e3"
AXIS = "#666"
MUTED = "#555"
LABEL_MAX = 220  # px of row labels; a longer name is shortened (whole in its tooltip)

Format = Callable[[float], str]


@dataclass(frozen=True)
class Series:
    """One set of bars: a legend label, a colour, one value per row."""

    label: str
    color: str
    values: Sequence[float]


@dataclass(frozen=True)
class Point:
    x: float
    y: float


def ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"chart range must be finite, got {lo}..{hi}")
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first = math.floor(lo / step + 1e-9)
    out: list[float] = []
    i = first
    while True:
        value = round(i * step, 12)
        out.append(value)
        if value >= hi - step * 1e-9:
            return out
        i += 1


def number(value: float) -> str:
    """A tick label: thousands separated, no needless decimals."""
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def usd(value: float) -> str:
    return "$" + number(value) if value >= 0 else "-$" + number(-value)


def _fit(label: str, px: float) -> str:
    """``label`` shortened with an ellipsis to about ``px`` pixels."""
    room = max(int(px / CHAR_W), 4)
    return label if len(label) <= room else label[: room - 1] + "…"


def _text(
    x: float,
    y: float,
    text: str,
    *,
    anchor: str = "start",
    size: int = FONT,
    color: str = "#222",
    extra: str = "",
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{color}" '
        f'text-anchor="{anchor}"{extra}>{escape(text)}</text>'
    )


def _svg(height: float, title: str, body: Sequence[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height:.0f}" '
        f'role="img" font-family="sans-serif">'
        f"<title>{escape(title)}</title>" + "".join(body) + "</svg>"
    )


def _legend(entries: Sequence[tuple[str, str]], right: float, y: float) -> list[str]:
    """Marker + label pairs, right-aligned at ``right`` (each marker is SVG drawn around 0,0)."""
    out: list[str] = []
    x = right
    for label, marker in reversed(entries):
        x -= len(label) * CHAR_W * 0.85 + 8
        out.append(_text(x, y + 4, label, size=FONT - 1, color=MUTED))
        x -= 14
        out.append(f'<g transform="translate({x + 6:.1f},{y:.1f})">{marker}</g>')
        x -= 10
    return out


def bar_chart(
    names: Sequence[str],
    series: Sequence[Series],
    *,
    x_label: str,
    fmt: Format = number,
    title: str = "",
) -> str | None:
    """Horizontal bars, one row per name (top to bottom), one bar per series in each row."""
    if not names or not series or not any(v > 0 for s in series for v in s.values):
        return None
    left = min(8 + CHAR_W * max(len(n) for n in names), LABEL_MAX)
    right = WIDTH - 16
    top = 8 + (18 if len(series) > 1 else 0)
    plot_h = ROW * len(names)
    height = top + plot_h + 40
    scale = ticks(0.0, max(v for s in series for v in s.values))
    span = scale[-1] or 1.0

    def x_of(value: float) -> float:
        return left + (right - left) * max(value, 0.0) / span

    body: list[str] = []
    for t in scale:
        x = x_of(t)
        body.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="{GRID}"/>'
        )
        body.append(
            _text(x, top + plot_h + 14, fmt(t), anchor="middle", size=FONT - 1, color=MUTED)
        )
    bar_h = 14 / len(series) if len(series) > 1 else 14
    for row, name in enumerate(names):
        y0 = top + row * ROW + (ROW - bar_h * len(series)) / 2
        body.append(
            _text(left - 6, top + row * ROW + ROW / 2 + 4, _fit(name, left - 8), anchor="end")
        )
        for k, s in enumerate(series):
            value = s.values[row]
            width = x_of(value) - left
            body.append(
                f'<rect x="{left:.1f}" y="{y0 + k * bar_h:.1f}" width="{width:.1f}" '
                f'height="{bar_h:.1f}" fill="{s.color}"><title>{escape(name)}: '
                f"{escape(s.label)} {escape(fmt(value))}</title></rect>"
            )
    body.append(
        f'<line x1="{left:.1f}" y1="{top}" x2="{left:.1f}" y2="{top + plot_h}" stroke="{AXIS}"/>'
    )
    body.append(_text((left + right) / 2, height - 8, x_label, anchor="middle", color=MUTED))
    if len(series) > 1:
        swatch = '<rect x="-5" y="-5" width="10" height="10" fill="{}"/>'
        body += _legend([(s.label, swatch.format(s.color)) for s in series], right, 10)
    return _svg(height, title or x_label, body)


def _star(x: float, y: float, r: float, color: str) -> str:
    points = []
    for i in range(10):
        radius = r if i % 2 == 0 else r * 0.45
        angle = math.pi / 2 + i * math.pi / 5
        points.append(f"{x + radius * math.cos(angle):.1f},{y - radius * math.sin(angle):.1f}")
    return f'<polygon points="{" ".join(points)}" fill="{color}"/>'


def line_chart(
    points: Sequence[Point],
    labels: Sequence[str],
    *,
    chosen: tuple[Point, str] | None,
    reference: tuple[Point, str] | None,
    x_label: str,
    y_label: str,
    x_fmt: Format = number,
    y_fmt: Format = number,
    line_label: str = "",
) -> str | None:
    """A line through ``points`` (each with a small label), a starred chosen point and a square
    reference point, with a legend."""
    if not points:
        return None
    height, left, right, top, bottom = 310.0, 58.0, WIDTH - 16.0, 30.0, 260.0
    everything = [*points, *(m[0] for m in (chosen, reference) if m is not None)]
    xs = [p.x for p in everything]
    ys = [p.y for p in everything]
    pad_x = (max(xs) - min(xs)) * 0.08 or max(abs(max(xs)) * 0.1, 1.0)
    x_scale = ticks(max(min(xs) - pad_x, 0.0) if min(xs) >= 0 else min(xs) - pad_x, max(xs) + pad_x)
    pad_y = (max(ys) - min(ys)) * 0.08 or 0.05
    y_scale = ticks(min(ys) - pad_y, max(ys) + pad_y)

    def at(p: Point) -> tuple[float, float]:
        x = left + (right - left) * (p.x - x_scale[0]) / ((x_scale[-1] - x_scale[0]) or 1.0)
        y = bottom - (bottom - top) * (p.y - y_scale[0]) / ((y_scale[-1] - y_scale[0]) or 1.0)
        return x, y

    body: list[str] = []
    for t in x_scale:
        x, _ = at(Point(t, y_scale[0]))
        body.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="{GRID}"/>')
        body.append(_text(x, bottom + 14, x_fmt(t), anchor="middle", size=FONT - 1, color=MUTED))
    for t in y_scale:
        _, y = at(Point(x_scale[0], t))
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="{GRID}"/>')
        body.append(_text(left - 6, y + 4, y_fmt(t), anchor="end", size=FONT - 1, color=MUTED))
    body.append(
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        f'fill="none" stroke="{AXIS}"/>'
    )
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in map(at, points))
    body.append(f'<polyline points="{line}" fill="none" stroke="#4a6fa5" stroke-width="1.5"/>')
    for p, label in zip(points, labels, strict=True):
        x, y = at(p)
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#4a6fa5"/>')
        if label:
            body.append(_text(x + 5, y - 5, label, size=FONT - 3, color=MUTED))
    legend: list[tuple[str, str]] = []
    if line_label:
        legend.append((line_label, '<circle r="3" fill="#4a6fa5"/>'))
    if chosen is not None:
        body.append(_star(*at(chosen[0]), 8, "#d1495b"))
        legend.append((chosen[1], _star(0, 0, 6, "#d1495b")))
    if reference is not None:
        x, y = at(reference[0])
        body.append(f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="#333"/>')
        legend.append((reference[1], '<rect x="-4" y="-4" width="8" height="8" fill="#333"/>'))
    body += _legend(legend, right, 14)
    body.append(_text((left + right) / 2, height - 14, x_label, anchor="middle", color=MUTED))
    body.append(
        _text(
            14,
            (top + bottom) / 2,
            y_label,
            anchor="middle",
            color=MUTED,
            extra=f' transform="rotate(-90 14 {(top + bottom) / 2:.1f})"',
        )
    )
    return _svg(height, f"{y_label} against {x_label}", body)
