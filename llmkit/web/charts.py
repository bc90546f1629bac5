"""Charts as geometry: where each bar, point, line and tick of a small per-version chart goes,
computed here and drawn as SVG by a template (`numbers_chart.html`), so that no chart library
is needed and the numbers are tested without a browser.

A chart has one category per version along x (in order) and a linear y axis that starts at
zero, with round ticks. A value that is missing or not a finite number is skipped: no bar, no
point, and a gap in the line through the others."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

WIDTH = 640
HEIGHT = 260
# Room for the y tick labels and axis label on the left, the x labels below.
LEFT, TOP, RIGHT, BOTTOM = 72, 16, 16, 48
TICK_COUNT = 5
# At most this many x labels are written; with more versions every k-th one is.
MAX_X_LABELS = 20
MAX_BAR_WIDTH = 48
# Bars carry their value as text above them when there are at most this many.
MAX_VALUE_LABELS = 12
# A bar of zero is drawn this tall, so that a zero is seen and told apart from no value.
MIN_BAR_PX = 2.0
SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))

Formatter = Callable[[float], str]


def finite(value: object) -> float | None:
    """`value` as a float, or None when it is missing or no finite number (NaN, inf, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def compact(value: float) -> str:
    """A number short enough for an axis: three significant digits, `1.2k`, `3.6M`."""
    if value == 0:
        return "0"
    size = abs(value)
    if size >= 1e15:
        return f"{value:.3g}"
    for limit, suffix in SI:
        if size >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


@dataclass(frozen=True)
class Scale:
    """A linear map of the values from `low` to `high` onto the pixels from `start` to `end`
    (for y, `start` is the bottom: pixels grow downwards). An empty domain maps every value to
    the middle."""

    low: float
    high: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        if self.high == self.low:
            return (self.start + self.end) / 2
        share = (value - self.low) / (self.high - self.low)
        return self.start + share * (self.end - self.start)


def nice_ticks(low: float, high: float, count: int = TICK_COUNT) -> list[float]:
    """Round tick values, 1, 2 or 5 times a power of ten apart, from at or below `low` to at or
    above `high`, about `count` steps. An empty range becomes [0, 1] (or the range from 0 to its
    one value)."""
    low, high = min(low, high), max(low, high)
    if low == high:
        low, high = min(0.0, low), max(0.0, high)
        if low == high:
            high = 1.0
    raw = (high - low) / count
    if not math.isfinite(raw) or raw <= 0:
        return [low, high]
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))
    first = math.floor(low / step + 1e-9) * step
    steps = math.ceil((high - first) / step - 1e-9)
    ticks = [_round(first + i * step) for i in range(steps + 1)]
    if not all(math.isfinite(t) for t in ticks):
        return [low, high]
    return ticks


def _round(value: float) -> float:
    """`value` without the float noise of a sum (0.30000000000000004 -> 0.3)."""
    return float(f"{value:.12g}")


@dataclass(frozen=True)
class Tick:
    at: float  # the pixel position along its axis
    text: str


@dataclass(frozen=True)
class Mark:
    """A bar (its top-left corner and size) or a point (its centre, no size) for one value."""

    category: str
    x: float
    y: float
    width: float
    height: float
    value: float
    label: str  # the value as a reader reads it: `120 ms`
    text: str  # what a reader is told about it: `v3: 120 ms`

    def drawn(self, baseline: float) -> tuple[float, float]:
        """(y, height) of a bar as drawn: at least MIN_BAR_PX tall, standing on `baseline`."""
        if self.height >= MIN_BAR_PX:
            return self.y, self.height
        return min(self.y, baseline - MIN_BAR_PX), MIN_BAR_PX


@dataclass(frozen=True)
class Series:
    name: str
    index: int  # which colour it is drawn in
    marks: list[Mark]
    # One polyline `points` attribute per unbroken run of values (a line chart).
    lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Chart:
    kind: str  # "bar" or "line"
    title: str
    y_label: str
    x_label: str
    width: int
    height: int
    left: float
    top: float
    right: float
    bottom: float
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    series: list[Series]
    # The table under the chart: the category and each series' value as text ("" for none).
    rows: list[tuple[str, list[str]]]

    @property
    def empty(self) -> bool:
        return not any(s.marks for s in self.series)

    @property
    def values_shown(self) -> bool:
        """Whether each bar has its value written above it (room for the text)."""
        return self.kind == "bar" and len(self.rows) <= MAX_VALUE_LABELS


def chart(
    kind: str,
    title: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[object]]],
    *,
    y_label: str,
    x_label: str = "Version",
    unit: Formatter = compact,
    y_max: float | None = None,
) -> Chart:
    """A bar chart (one series) or a line chart (one or more) of values per category.
    `unit` writes a value as a reader reads it (`120 ms`); `y_max` fixes the top of the axis
    (a rate's 100%, a score's 5) instead of taking it from the values."""
    assert kind in ("bar", "line")
    assert kind == "line" or len(series) == 1
    left, top = float(LEFT), float(TOP)
    right, bottom = float(WIDTH - RIGHT), float(HEIGHT - BOTTOM)
    cleaned = [(name, [finite(v) for v in values]) for name, values in series]
    present = [v for _, values in cleaned for v in values if v is not None]
    high = y_max if y_max is not None else max(present, default=0.0)
    ticks = nice_ticks(min([0.0, *present]), max(high, *present) if present else high)
    y = Scale(ticks[0], ticks[-1], bottom, top)
    band = (right - left) / max(len(categories), 1)

    def center(i: int) -> float:
        return left + band * (i + 0.5)

    every = max(1, math.ceil(len(categories) / MAX_X_LABELS))
    x_ticks = [Tick(center(i), c) for i, c in enumerate(categories) if i % every == 0]
    y_ticks = [Tick(y(t), compact(t)) for t in ticks]
    drawn = []
    for index, (name, values) in enumerate(cleaned):
        marks = []
        for i, (category, value) in enumerate(zip(categories, values, strict=False)):
            if value is None:
                continue
            label = unit(value)
            text = f"{category}: {label}"
            at = _clamp(y(value), top, bottom)
            if kind == "bar":
                width = min(band * 0.6, MAX_BAR_WIDTH)
                base = _clamp(y(0.0), top, bottom)
                corner = min(at, base)
                height = abs(base - at)
                marks.append(
                    Mark(category, center(i) - width / 2, corner, width, height, value, label, text)
                )
            else:
                marks.append(Mark(category, center(i), at, 0.0, 0.0, value, label, text))
        lines = _runs(categories, values, marks) if kind == "line" else []
        drawn.append(Series(name, index, marks, lines))
    rows = [
        (category, [_text(values, i, unit) for _, values in cleaned])
        for i, category in enumerate(categories)
    ]
    return Chart(
        kind,
        title,
        y_label,
        x_label,
        WIDTH,
        HEIGHT,
        left,
        top,
        right,
        bottom,
        x_ticks,
        y_ticks,
        drawn,
        rows,
    )


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _text(values: list[float | None], i: int, unit: Formatter) -> str:
    value = values[i] if i < len(values) else None
    return "" if value is None else unit(value)


def _runs(categories: Sequence[str], values: list[float | None], marks: list[Mark]) -> list[str]:
    """The `points` of a polyline through each run of neighbouring values; a missing value
    breaks the line, and a run of one point has no line (its point is drawn alone)."""
    by_category = iter(marks)
    runs: list[list[Mark]] = [[]]
    for i in range(len(categories)):
        value = values[i] if i < len(values) else None
        if value is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append(next(by_category))
    return [" ".join(f"{m.x:.1f},{m.y:.1f}" for m in run) for run in runs if len(run) > 1]
