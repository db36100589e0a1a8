"""Which inspections a reviewer sees first, and how the list pages.

A label teaches the model most where it was least sure, so the queue orders unlabelled
inspections by their distance from their class threshold, on the confidence scale (0.5 at the
threshold, so one scale for every class, calibrated or not): first every part within
`schemas.tables.REVIEW_BAND` (0.25) of its threshold, nearest first, on either side; then the
parts the model flagged, least sure first; then the rest. Paging is by keyset (the last row's
key and event id), never by offset, so page 2,000 of a million rows costs what page 1 does, on
the index the migrations add for exactly this order. Read-only: labels go through
`RecordStore.label`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, Double, and_, func, literal, literal_column, select, tuple_

from schemas.tables import REVIEW_PRIORITY_SQL, Inspection

T = Inspection.__table__
# The index ix_inspections_review_queue is on this very expression (schemas.tables).
_priority = literal_column(f"({REVIEW_PRIORITY_SQL})").label("priority")
# Keyset comparisons are on the row value (priority, event id), which PostgreSQL and SQLite
# both answer from that index.
_key = tuple_(literal_column(f"({REVIEW_PRIORITY_SQL})"), T.c.event_id)

LabelState = Literal["unlabelled", "labelled", "any"]
Verdict = Literal["anomalous", "normal", "any"]


@dataclass(frozen=True)
class QueueFilter:
    line: str | None = None
    station: str | None = None
    product_class: str | None = None
    model_version: str | None = None
    verdict: Verdict = "any"
    label_state: LabelState = "unlabelled"
    since: datetime | None = None
    until: datetime | None = None

    def conditions(self) -> list[Any]:
        out: list[Any] = []
        for column, value in (
            (T.c.line, self.line),
            (T.c.station, self.station),
            (T.c.product_class, self.product_class),
            (T.c.model_version, self.model_version),
        ):
            if value:
                out.append(column == value)
        if self.verdict != "any":
            out.append(T.c.is_anomalous.is_(self.verdict == "anomalous"))
        if self.label_state == "unlabelled":
            out.append(T.c.label.is_(None))
        elif self.label_state == "labelled":
            out.append(T.c.label.is_not(None))
        if self.since is not None:
            out.append(T.c.processed_at >= self.since)
        if self.until is not None:
            out.append(T.c.processed_at < self.until)
        return out


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the last row's priority and event id."""

    priority: float
    event_id: str

    def key(self) -> Any:
        """The row value (priority, event id) to compare the queue's key with."""
        return tuple_(literal(self.priority, Double), literal(self.event_id))

    def encode(self) -> str:
        return f"{self.priority!r}:{self.event_id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """A cursor from a request; ValueError for anything else (a 400, not a 500)."""
        head, sep, event_id = text.partition(":")
        if not sep or not event_id:
            raise ValueError("not a queue cursor")
        return cls(float(head), event_id)


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next: Cursor | None


def queue_page(conn: Connection, filters: QueueFilter, limit: int, after: Cursor | None) -> Page:
    """One page of the queue: `limit` rows after `after` (the first page when None)."""
    query = select(T, _priority).where(and_(True, *filters.conditions()))
    if after is not None:
        query = query.where(_key > after.key())
    rows = [
        dict(r._mapping)
        for r in conn.execute(query.order_by(_priority, T.c.event_id).limit(limit + 1))
    ]
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = Cursor(rows[-1]["priority"], rows[-1]["event_id"]) if more and rows else None
    return Page(rows, nxt)


def neighbours(
    conn: Connection, filters: QueueFilter, event_id: str
) -> tuple[str | None, str | None]:
    """The queue's previous and next event ids around `event_id` under `filters`: where the
    keyboard's previous/next and "label, then next" go."""
    row = conn.execute(select(_priority).where(T.c.event_id == event_id)).first()
    if row is None:
        return None, None
    here = Cursor(row.priority, event_id)
    after = queue_page(conn, filters, 1, here).rows
    before = conn.execute(
        select(T.c.event_id, _priority)
        .where(and_(True, *filters.conditions()))
        .where(_key < here.key())
        .order_by(_priority.desc(), T.c.event_id.desc())
        .limit(1)
    ).first()
    return (before.event_id if before else None), (after[0]["event_id"] if after else None)


@dataclass(frozen=True)
class Counts:
    """How many inspections the filters select, and how they split by class, line, verdict."""

    total: int
    by_class: dict[str, int]
    by_line: dict[str, int]
    by_verdict: dict[str, int]


def counts(conn: Connection, filters: QueueFilter) -> Counts:
    """One aggregate over what the filters select (a scan of it: bench.review measures it on a
    million rows)."""
    rows = conn.execute(
        select(T.c.product_class, T.c.line, T.c.is_anomalous, func.count())
        .where(and_(True, *filters.conditions()))
        .group_by(T.c.product_class, T.c.line, T.c.is_anomalous)
    ).all()
    by_class: dict[str, int] = {}
    by_line: dict[str, int] = {}
    by_verdict = {"anomalous": 0, "normal": 0}
    for product_class, line, flagged, n in rows:
        by_class[product_class] = by_class.get(product_class, 0) + n
        by_line[line] = by_line.get(line, 0) + n
        by_verdict["anomalous" if flagged else "normal"] += n
    return Counts(sum(by_class.values()), by_class, by_line, by_verdict)


def inspection(conn: Connection, event_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(T).where(T.c.event_id == event_id)).first()
    return dict(row._mapping) if row else None
