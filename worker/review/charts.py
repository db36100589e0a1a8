"""Chart geometry for the class page, drawn as inline SVG by its template.

Numbers only (rectangles, a polyline, ticks): the template turns them into SVG elements with
presentation attributes, so the charts need no script, no stylesheet from elsewhere and no
plotting library, and pass the station's content security policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from schemas import ClassCalibration
from worker.review.classes import Bar, Day, score_at

WIDTH, HEIGHT, PAD = 640, 200, 28


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    title: str


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Rect]
    line: str  # polyline points of the reference, "" without one
    ticks: list[Tick]
    marker: float | None  # x of the threshold
    top: str  # what the top of the y axis stands for


def _x(c: float) -> float:
    return PAD + c * (WIDTH - 2 * PAD)


def _y(v: float, top: float) -> float:
    return HEIGHT - PAD - (v / top) * (HEIGHT - 2 * PAD) if top > 0 else HEIGHT - PAD


def distribution(bars: list[Bar], cal: ClassCalibration | None) -> Chart:
    """The window's parts per confidence bin, the calibration's normals as a step line over
    them, the threshold at 0.5; ticks name scores where the calibration can map them."""
    top = max([b.share for b in bars] + [b.reference or 0.0 for b in bars] + [1e-9])
    rects = [
        Rect(
            _x(b.lo),
            _y(b.share, top),
            _x(b.hi) - _x(b.lo),
            _y(0, top) - _y(b.share, top),
            f"confidence {b.lo:.2f}-{b.hi:.2f}: {b.share:.1%} of the parts",
        )
        for b in bars
    ]
    points = ""
    if bars and bars[0].reference is not None:
        steps = []
        for b in bars:
            y = _y(b.reference or 0.0, top)
            steps += [f"{_x(b.lo):.1f},{y:.1f}", f"{_x(b.hi):.1f},{y:.1f}"]
        points = " ".join(steps)
    ticks = []
    for c in (0.1, 0.3, 0.5, 0.7, 0.9):
        label = f"{c:.1f}" if cal is None else f"{c:.1f} ({score_at(cal, c):.3g})"
        ticks.append(Tick(_x(c), label))
    return Chart(WIDTH, HEIGHT, rects, points, ticks, _x(0.5), f"{top:.0%} of parts per bin")


def anomaly_rate(days: list[Day], first: date, last: date) -> Chart:
    """One slot per day of the window (first to last), a bar where parts were inspected: the
    share of them flagged."""
    slots = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    by_day = {d.day: d for d in days}
    top = max([d.rate for d in days] + [1e-9])
    w = (WIDTH - 2 * PAD) / len(slots)
    rects = [
        Rect(
            PAD + i * w + 1,
            _y(d.rate, top),
            max(w - 2, 1),
            _y(0, top) - _y(d.rate, top),
            f"{d.day.isoformat()}: {d.flagged} of {d.parts} flagged ({d.rate:.1%})",
        )
        for i, day in enumerate(slots)
        if (d := by_day.get(day)) is not None
    ]
    step = max(1, len(slots) // 7)
    ticks = [Tick(PAD + (i + 0.5) * w, day.strftime("%m-%d")) for i, day in enumerate(slots)]
    return Chart(WIDTH, HEIGHT, rects, "", ticks[::step], None, f"{top:.1%} flagged")
