"""Inspections and operator labels, and the worker's in-flight markers (private part of
`RecordStore`).

A label and the inspection it belongs to may arrive in either order: a label for an event not
recorded yet is kept in `pending_labels` and applied when the inspection arrives; the last label
given wins, whatever order labels arrive in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, case, delete, func, or_, select, update

from model.core.clock import utc_now
from model.stores.sql import CHUNK, SqlStore, aware
from schemas.records import InspectionRecord, Label, LabelOutcome
from schemas.tables import LABELS, InFlight, Inspection, PendingLabel

_INSPECTION_COLUMNS = tuple(c.name for c in Inspection.__table__.columns)
_LABEL_COLUMNS = ("label", "labelled_by", "labelled_at", "label_note")


class Inspections(SqlStore):
    # -- in-flight markers (the worker's crash-loop breaker) ----------------------------------

    def mark_in_flight(self, group: str, markers: Sequence[Mapping[str, Any]], worker: str) -> None:
        """Upsert one marker per (topic, partition): keys `topic`, `partition`, `first_offset`,
        `last_offset`, `crashes`, `suspect_last` (see `schemas.tables.InFlight`)."""
        if not markers:
            return
        now = utc_now()
        rows = [
            {**m, "consumer_group": group, "worker": worker, "updated_at": now} for m in markers
        ]
        table = InFlight.__table__
        stmt = self._insert(table)
        keys = ("consumer_group", "topic", "partition")
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c[k] for k in keys],
            set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
        )
        with self._write() as conn:
            conn.execute(stmt, rows)

    def in_flight(self, group: str, topic: str, partition: int) -> dict[str, Any] | None:
        """The marker last written for a partition, as a dict of its columns, or None."""
        table = InFlight.__table__
        with self._read() as conn:
            row = conn.execute(
                select(table).where(
                    table.c.consumer_group == group,
                    table.c.topic == topic,
                    table.c.partition == partition,
                )
            ).first()
        return None if row is None else dict(row._mapping)

    # -- inspections --------------------------------------------------------------------------

    def upsert_inspections(self, records: Sequence[InspectionRecord]) -> None:
        """Insert or update inspection rows by event id, in one transaction, then apply any
        labels that were waiting for these events.

        Idempotent: the same records twice leave the same rows. An update never erases an
        operator label already on the row; a record that carries a label replaces the row's
        only if its `labelled_at` is not older. Of several records with one event id in the
        same call, the last counts.
        """
        latest: dict[str, InspectionRecord] = {}
        for r in records:
            latest.pop(r.event_id, None)
            latest[r.event_id] = r
        if not latest:
            return
        rows = [r.model_dump() for r in latest.values()]
        table = Inspection.__table__
        stmt = self._insert(table)
        ex = stmt.excluded
        incoming_wins = and_(
            ex.label.is_not(None),
            or_(table.c.labelled_at.is_(None), ex.labelled_at >= table.c.labelled_at),
        )
        set_: dict[str, Any] = {
            c: ex[c] for c in _INSPECTION_COLUMNS if c != "event_id" and c not in _LABEL_COLUMNS
        }
        set_.update({c: case((incoming_wins, ex[c]), else_=table.c[c]) for c in _LABEL_COLUMNS})
        stmt = stmt.on_conflict_do_update(index_elements=[table.c.event_id], set_=set_)
        with self._write(label_lock="shared") as conn:
            conn.execute(stmt, rows)
            ids = list(latest)
            for i in range(0, len(ids), CHUNK):
                self._apply_pending(conn, ids[i : i + CHUNK])

    def _apply_pending(self, conn: Connection, ids: list[str]) -> None:
        pending_t = PendingLabel.__table__
        insp = Inspection.__table__
        waiting = conn.execute(select(pending_t).where(pending_t.c.event_id.in_(ids))).all()
        for p in waiting:
            conn.execute(
                update(insp)
                .where(
                    insp.c.event_id == p.event_id,
                    or_(insp.c.labelled_at.is_(None), insp.c.labelled_at <= p.labelled_at),
                )
                .values(
                    label=p.label,
                    labelled_by=p.labelled_by,
                    labelled_at=p.labelled_at,
                    label_note=p.note,
                )
            )
        if waiting:
            conn.execute(
                delete(pending_t).where(pending_t.c.event_id.in_([p.event_id for p in waiting]))
            )

    def label(
        self,
        event_id: str,
        label: Label,
        by: str,
        note: str | None = None,
        at: datetime | None = None,
    ) -> LabelOutcome:
        """Record an operator's verdict on one event.

        'applied': set on the inspection row. 'pending': no inspection recorded yet; the label
        is kept and applied when it arrives (a later label for the same id replaces it).
        'superseded': a label given later (`labelled_at` newer than `at`) is already recorded,
        so this one changes nothing: the last label given wins, whatever order they arrive in.
        `at` defaults to now; it must carry a time zone.
        """
        if label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {label!r}")
        if not by:
            raise ValueError("a label needs the name of who gave it")
        at = aware(at, "at")
        insp = Inspection.__table__
        pending_t = PendingLabel.__table__
        with self._write(label_lock="exclusive") as conn:
            current = conn.execute(
                select(insp.c.labelled_at).where(insp.c.event_id == event_id)
            ).first()
            if current is not None:
                if current.labelled_at is not None and current.labelled_at > at:
                    return "superseded"
                conn.execute(
                    update(insp)
                    .where(insp.c.event_id == event_id)
                    .values(label=label, labelled_by=by, labelled_at=at, label_note=note)
                )
                return "applied"
            waiting = conn.execute(
                select(pending_t.c.labelled_at).where(pending_t.c.event_id == event_id)
            ).first()
            if waiting is not None and waiting.labelled_at > at:
                return "superseded"
            values = {
                "event_id": event_id,
                "label": label,
                "labelled_by": by,
                "labelled_at": at,
                "note": note,
                "received_at": utc_now(),
            }
            stmt = self._insert(pending_t).values(values)
            stmt = stmt.on_conflict_do_update(
                index_elements=[pending_t.c.event_id],
                set_={k: stmt.excluded[k] for k in values if k != "event_id"},
            )
            conn.execute(stmt)
            return "pending"

    def get(self, event_id: str) -> InspectionRecord | None:
        """The inspection row for an event id, or None."""
        with self._read() as conn:
            row = conn.execute(
                select(Inspection.__table__).where(Inspection.__table__.c.event_id == event_id)
            ).first()
        return None if row is None else InspectionRecord.model_validate(row._asdict())

    def count(self) -> int:
        """Inspection rows recorded."""
        with self._read() as conn:
            return conn.execute(select(func.count()).select_from(Inspection.__table__)).scalar_one()

    def pending_labels(self) -> dict[str, Label]:
        """Labels still waiting for their inspection, by event id."""
        t = PendingLabel.__table__
        with self._read() as conn:
            return {r.event_id: r.label for r in conn.execute(select(t.c.event_id, t.c.label))}
