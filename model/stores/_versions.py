"""The model registry: versions with their lineage and status, and per-class calibrations
(private part of `RecordStore`).

A version is recorded as a 'candidate' by the retraining, becomes 'active' when promoted, and
'retired' when another is; calibrations are kept per (class, version, time), the latest in force.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from model.stores.sql import SqlStore, aware
from schemas.model_state import ClassCalibration
from schemas.records import CalibrationRecord, ModelVersionRecord, calibration_statistics
from schemas.tables import Calibration, ModelVersion


class ModelRegistry(SqlStore):
    # -- model versions and calibrations ------------------------------------------------------

    def record_model_version(
        self,
        version: str,
        artifact_uri: str,
        *,
        parent_version: str | None = None,
        created_at: datetime | None = None,
        train_window: tuple[datetime, datetime] | None = None,
        images_per_class: Mapping[str, int] | None = None,
        metrics: Mapping[str, Any] | None = None,
        gate_decision: Mapping[str, Any] | None = None,
    ) -> ModelVersionRecord:
        """Register a trained model as a 'candidate' (idempotent on `version`).

        Recording a known version again updates what it says about itself (artifact, lineage,
        window, figures, gate decision: the arguments given, not None) and leaves its status,
        promotion and creation time as they are.
        """
        t = ModelVersion.__table__
        start, end = train_window if train_window is not None else (None, None)
        values: dict[str, Any] = {
            "version": version,
            "artifact_uri": artifact_uri,
            "parent_version": parent_version,
            "created_at": aware(created_at, "created_at"),
            "train_window_start": start,
            "train_window_end": end,
            "images_per_class": dict(images_per_class or {}),
            "metrics": dict(metrics or {}),
            "status": "candidate",
            "gate_decision": None if gate_decision is None else dict(gate_decision),
        }
        given = {
            "artifact_uri": artifact_uri,
            "parent_version": parent_version,
            "train_window_start": start,
            "train_window_end": end,
            "images_per_class": images_per_class,
            "metrics": metrics,
            "gate_decision": gate_decision,
        }
        stmt = self._insert(t).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.version],
            set_={k: stmt.excluded[k] for k, v in given.items() if v is not None},
        )
        with self._write() as conn:
            conn.execute(stmt)
            row = conn.execute(select(t).where(t.c.version == version)).one()
        return ModelVersionRecord.model_validate(row._asdict())

    def set_active(
        self,
        version: str,
        by: str,
        *,
        at: datetime | None = None,
        gate_decision: Mapping[str, Any] | None = None,
    ) -> None:
        """Promote a recorded version: it becomes 'active', the one active before 'retired'.

        Raises `LookupError` for a version never recorded. Promoting the active version again
        changes nothing but `promoted_at`/`promoted_by` (and the gate decision, if given).
        """
        t = ModelVersion.__table__
        values: dict[str, Any] = {
            "status": "active",
            "promoted_at": aware(at, "at"),
            "promoted_by": by,
        }
        if gate_decision is not None:
            values["gate_decision"] = dict(gate_decision)
        with self._write() as conn:
            if conn.execute(select(t.c.version).where(t.c.version == version)).first() is None:
                raise LookupError(f"model version {version!r} is not recorded")
            conn.execute(
                update(t)
                .where(t.c.status == "active", t.c.version != version)
                .values(status="retired")
            )
            conn.execute(update(t).where(t.c.version == version).values(values))

    def active_version(self) -> str | None:
        """The version currently 'active', or None before the first promotion."""
        t = ModelVersion.__table__
        with self._read() as conn:
            return conn.execute(select(t.c.version).where(t.c.status == "active")).scalar()

    def model_versions(self) -> list[ModelVersionRecord]:
        """Every recorded version, oldest first."""
        t = ModelVersion.__table__
        with self._read() as conn:
            rows = conn.execute(select(t).order_by(t.c.created_at, t.c.version)).all()
        return [ModelVersionRecord.model_validate(r._asdict()) for r in rows]

    def record_calibration(
        self,
        model_version: str,
        product_class: str,
        calibration: ClassCalibration,
        *,
        at: datetime | None = None,
    ) -> None:
        """Record a class's calibration under a recorded model version, as of `at` (now).

        Idempotent on (class, version, at). The model version must be recorded first (a
        foreign key; `sqlalchemy.exc.IntegrityError` otherwise).
        """
        t = Calibration.__table__
        values = {
            "product_class": product_class,
            "model_version": model_version,
            "threshold": calibration.threshold,
            "target_fpr": calibration.target_fpr,
            "statistics": calibration_statistics(calibration),
            "created_at": aware(at, "at"),
        }
        stmt = self._insert(t).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.product_class, t.c.model_version, t.c.created_at],
            set_={k: stmt.excluded[k] for k in ("threshold", "target_fpr", "statistics")},
        )
        with self._write() as conn:
            conn.execute(stmt)

    def calibrations(self, model_version: str) -> dict[str, CalibrationRecord]:
        """The calibration in force per class under `model_version`: the latest recorded."""
        t = Calibration.__table__
        with self._read() as conn:
            rows = conn.execute(
                select(t).where(t.c.model_version == model_version).order_by(t.c.created_at)
            ).all()
        out: dict[str, CalibrationRecord] = {}
        for r in rows:  # oldest first: the latest per class overwrites
            out[r.product_class] = CalibrationRecord(
                product_class=r.product_class,
                model_version=r.model_version,
                created_at=r.created_at,
                calibration=ClassCalibration(
                    threshold=r.threshold, target_fpr=r.target_fpr, **r.statistics
                ),
            )
        return out

    def model_version(self, version: str) -> ModelVersionRecord | None:
        """One recorded version, or None."""
        t = ModelVersion.__table__
        with self._read() as conn:
            row = conn.execute(select(t).where(t.c.version == version)).first()
        return None if row is None else ModelVersionRecord.model_validate(row._asdict())
