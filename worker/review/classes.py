"""What the class page shows, read from the inspection records in a few aggregates.

Per product class, model version and time window: the parts' confidences in fine bins (the
distribution, and the drift figure of the parts judged normal, `model.metrics.drift`, against
the calibration's normal scores), the anomaly rate per day, and the labelled false alarms and
misses. Every figure is an aggregate the database computes (GROUP BY over the index on
(product_class, processed_at)), never a transfer of every row, so a week of a busy line costs
one index range scan per figure.

Bins are on the confidence scale, 0.5 at the threshold the worker applied, so one bin means the
same relative risk before and after a recalibration; the page maps them to scores through the
calibration in force.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, Integer, and_, case, cast, func, not_, select, text

from model.metrics.calibration import confidence
from model.metrics.drift import Drift, drift_from_histogram
from schemas import ClassCalibration
from schemas.tables import MISTAKE_SQL, Inspection

T = Inspection.__table__
# 0.0025 wide: the drift read from them is within about a bin's share (1 % or so) of the exact.
BINS = 400
SHOWN_BINS = 50  # what the chart draws (each 8 of the fine bins)
EXAMPLES = 8  # false alarms and misses listed by name


@dataclass(frozen=True)
class ClassWindow:
    product_class: str
    model_version: str
    since: datetime
    until: datetime

    def where(self) -> Any:
        return and_(
            T.c.product_class == self.product_class,
            T.c.model_version == self.model_version,
            T.c.processed_at >= self.since,
            T.c.processed_at < self.until,
        )


@dataclass(frozen=True)
class Day:
    day: date
    parts: int
    flagged: int

    @property
    def rate(self) -> float:
        return self.flagged / self.parts if self.parts else 0.0


@dataclass(frozen=True)
class Mistakes:
    false_alarms: int  # flagged, labelled normal
    misses: int  # passed, labelled anomalous
    labelled: int
    false_alarm_ids: list[str]
    miss_ids: list[str]


@dataclass(frozen=True)
class ClassFigures:
    counts: np.ndarray  # parts per confidence bin (BINS over [0, 1])
    days: list[Day]
    mistakes: Mistakes
    drift: Drift | None  # None without a calibration to compare with


def figures(conn: Connection, w: ClassWindow, cal: ClassCalibration | None) -> ClassFigures:
    counts = confidence_counts(conn, w)
    return ClassFigures(
        counts=counts,
        days=per_day(conn, w),
        mistakes=mistakes(conn, w),
        drift=passed_drift(counts, cal) if cal is not None else None,
    )


def _bin(conn: Connection) -> Any:
    """The confidence's bin, truncated: PostgreSQL's CAST rounds, so floor first; SQLite's
    CAST truncates, and its two-argument min() is the scalar least()."""
    scaled = T.c.confidence * BINS
    if conn.dialect.name == "postgresql":
        return func.least(cast(func.floor(scaled), Integer), BINS - 1)
    return func.min(cast(scaled, Integer), BINS - 1)


def confidence_counts(conn: Connection, w: ClassWindow) -> np.ndarray:
    b = _bin(conn).label("b")
    counts = np.zeros(BINS, dtype=np.int64)
    for row in conn.execute(select(b, func.count()).where(w.where()).group_by(b)):
        counts[int(row[0])] += int(row[1])
    return counts


def passed_drift(counts: np.ndarray, cal: ClassCalibration) -> Drift:
    """The drift figure of the parts judged normal (confidence below 0.5, the first half)."""
    half = BINS // 2
    edges = np.linspace(0.0, 0.5, half + 1)
    return drift_from_histogram(edges, counts[:half], cal)


def _day(conn: Connection) -> Any:
    if conn.dialect.name == "postgresql":
        return func.date(func.timezone("UTC", T.c.processed_at))
    return func.date(T.c.processed_at)  # SQLite keeps UTC text


def per_day(conn: Connection, w: ClassWindow) -> list[Day]:
    d = _day(conn).label("d")
    flagged = func.sum(case((T.c.is_anomalous, 1), else_=0))
    rows = conn.execute(
        select(d, func.count(), flagged).where(w.where()).group_by(d).order_by(d)
    ).all()
    return [Day(_as_date(r[0]), int(r[1]), int(r[2] or 0)) for r in rows]


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def mistakes(conn: Connection, w: ClassWindow) -> Mistakes:
    """Counted and listed from the partial index of mistakes (schemas.tables.MISTAKE_SQL),
    whose predicate the conditions here imply as written."""
    false_alarm = and_(T.c.is_anomalous, T.c.label == "normal")
    miss = and_(not_(T.c.is_anomalous), T.c.label == "anomalous")
    row = conn.execute(
        select(func.sum(case((T.c.is_anomalous, 1), else_=0)), func.count()).where(
            w.where(), text(f"({MISTAKE_SQL})")
        )
    ).one()
    labelled = conn.execute(select(func.count()).where(w.where(), T.c.label.is_not(None)))

    def latest(cond: Any) -> list[str]:
        q = select(T.c.event_id).where(w.where(), cond, text(f"({MISTAKE_SQL})"))
        return list(conn.execute(q.order_by(T.c.processed_at.desc()).limit(EXAMPLES)).scalars())

    false_alarms = int(row[0] or 0)
    return Mistakes(
        false_alarms,
        int(row[1]) - false_alarms,
        int(labelled.scalar() or 0),
        latest(false_alarm),
        latest(miss),
    )


def class_summaries(conn: Connection, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Every class seen in the window: parts, flagged parts and model versions, for the index."""
    flagged = func.sum(case((T.c.is_anomalous, 1), else_=0))
    rows = conn.execute(
        select(T.c.product_class, func.count(), flagged, func.max(T.c.processed_at))
        .where(T.c.processed_at >= since, T.c.processed_at < until)
        .group_by(T.c.product_class)
        .order_by(T.c.product_class)
    ).all()
    return [
        {"product_class": r[0], "parts": int(r[1]), "flagged": int(r[2] or 0), "last": r[3]}
        for r in rows
    ]


def latest_version(conn: Connection, product_class: str) -> str | None:
    """The model version of the class's latest recorded part (when none is active)."""
    q = (
        select(T.c.model_version)
        .where(T.c.product_class == product_class)
        .order_by(T.c.processed_at.desc())
        .limit(1)
    )
    return conn.execute(q).scalar()


@dataclass(frozen=True)
class Bar:
    lo: float  # confidence
    hi: float
    share: float  # of the window's parts
    reference: float | None  # of the calibration's normal images


def chart_bars(counts: np.ndarray, cal: ClassCalibration | None) -> list[Bar]:
    """The distribution in SHOWN_BINS bars, beside the calibration's normals on the same bins."""
    per = BINS // SHOWN_BINS
    shown = counts.reshape(SHOWN_BINS, per).sum(axis=1)
    total = max(int(shown.sum()), 1)
    edges = np.linspace(0.0, 1.0, SHOWN_BINS + 1)
    ref: np.ndarray | None = None
    if cal is not None and cal.reference:
        c = confidence(np.asarray(cal.reference), cal)
        hist, _ = np.histogram(np.clip(c, 0, 1 - 1e-12), edges)
        ref = hist / max(int(hist.sum()), 1)
    return [
        Bar(
            float(edges[k]),
            float(edges[k + 1]),
            float(shown[k]) / total,
            None if ref is None else float(ref[k]),
        )
        for k in range(SHOWN_BINS)
    ]


def score_at(cal: ClassCalibration, c: float) -> float:
    """The score at confidence `c` under `cal` (the inverse of `confidence`)."""
    c = min(max(c, 1e-9), 1 - 1e-9)
    return float(cal.threshold * np.exp(cal.scale * np.log(c / (1 - c))))
