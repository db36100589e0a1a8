"""What a window of the record holds, for the retraining (private part of `RecordStore`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select

from model.stores.sql import CHUNK, SqlStore, aware
from schemas.records import InspectionRecord, Label
from schemas.tables import Inspection


class TrainingWindows(SqlStore):
    # -- retraining: what a window of the record holds ------------------------------------------

    def window_counts(
        self, start: datetime, end: datetime, classes: Sequence[str] | None = None
    ) -> dict[str, dict[str, int]]:
        """Per product class, the inspections processed in [start, end]: all of them, labelled
        normal, labelled anomalous, unlabelled, and inline (no image URI to read back)."""
        t = Inspection.__table__

        def n(cond: Any) -> Any:
            return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

        stmt = (
            select(
                t.c.product_class,
                func.count().label("inspected"),
                n(t.c.label == "normal").label("labelled_normal"),
                n(t.c.label == "anomalous").label("labelled_anomalous"),
                n(t.c.label.is_(None)).label("unlabelled"),
                n(t.c.image_uri.is_(None)).label("inline"),
            )
            .where(t.c.processed_at >= aware(start, "start"), t.c.processed_at <= aware(end, "end"))
            .group_by(t.c.product_class)
            .order_by(t.c.product_class)
        )
        if classes is not None:
            stmt = stmt.where(t.c.product_class.in_(list(classes)))
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        keys = ("inspected", "labelled_normal", "labelled_anomalous", "unlabelled", "inline")
        return {r.product_class: {k: int(getattr(r, k)) for k in keys} for r in rows}

    def inspections_in_window(
        self,
        start: datetime,
        end: datetime,
        product_class: str,
        *,
        label: Label | None,
        calibrated_only: bool = False,
        max_score_ratio: float | None = None,
        with_image_uri: bool = False,
        limit: int | None = None,
    ) -> list[InspectionRecord]:
        """One class's inspections processed in [start, end], newest first.

        `label` "normal" or "anomalous" selects rows an operator labelled so, None the rows
        nobody labelled. `calibrated_only`: scored against the class's own calibration.
        `max_score_ratio=r`: score below r x the threshold the row was scored against.
        `with_image_uri`: leave out inline images (nothing to read back).
        """
        t = Inspection.__table__
        conds = [
            t.c.product_class == product_class,
            t.c.processed_at >= aware(start, "start"),
            t.c.processed_at <= aware(end, "end"),
            t.c.label.is_(None) if label is None else t.c.label == label,
        ]
        if calibrated_only:
            conds.append(t.c.calibrated.is_(True))
        if max_score_ratio is not None:
            conds.append(t.c.score < t.c.threshold * max_score_ratio)
        if with_image_uri:
            conds.append(t.c.image_uri.is_not(None))
        stmt = select(t).where(*conds).order_by(t.c.processed_at.desc(), t.c.event_id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [InspectionRecord.model_validate(r._asdict()) for r in rows]

    def anomalous_image_uris(self, uris: Sequence[str]) -> set[str]:
        """Those of `uris` that an operator labelled anomalous in any inspection, at any time."""
        t = Inspection.__table__
        wanted = sorted(set(uris))
        out: set[str] = set()
        with self._read() as conn:
            for i in range(0, len(wanted), CHUNK):
                chunk = wanted[i : i + CHUNK]
                out.update(
                    conn.execute(
                        select(t.c.image_uri)
                        .where(t.c.image_uri.in_(chunk), t.c.label == "anomalous")
                        .distinct()
                    ).scalars()
                )
        return out
