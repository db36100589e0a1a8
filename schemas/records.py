"""Rows of the SQL schema (`schemas.tables`) as validated values, for code that reads or writes
them without holding a database session (the worker, the retrain job, the label CLI).

Times are always zone-aware: a naive time is refused here rather than stored with a guessed
zone.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.events import InspectionResult, StageTimings
from schemas.limits import (
    EVENT_ID_LENGTH,
    NAME_LENGTH,
    NOTE_LENGTH,
    PERSON_LENGTH,
    URI_LENGTH,
    VERSION_LENGTH,
)
from schemas.model_state import ClassCalibration

Label = Literal["normal", "anomalous"]
ModelStatus = Literal["candidate", "active", "retired"]
# What `RecordStore.label` did with a label: set it on the inspection row; kept it until the
# inspection arrives; or ignored it because a label given later is already recorded.
LabelOutcome = Literal["applied", "pending", "superseded"]


class InspectionRecord(BaseModel):
    """One `inspections` row: a result as recorded, plus the operator label once there is one."""

    model_config = ConfigDict(extra="forbid", frozen=True, from_attributes=True)

    event_id: str = Field(min_length=1, max_length=EVENT_ID_LENGTH)
    line: str = Field(max_length=NAME_LENGTH)
    station: str = Field(max_length=NAME_LENGTH)
    product_class: str = Field(max_length=NAME_LENGTH)
    captured_at: AwareDatetime
    processed_at: AwareDatetime
    image_uri: str | None = Field(
        default=None, max_length=URI_LENGTH, description="None for an inline (base64) image"
    )
    heatmap_uri: str = Field(max_length=URI_LENGTH)
    score: float
    threshold: float
    confidence: float = Field(ge=0, le=1)
    is_anomalous: bool
    calibrated: bool
    # None for rows recorded before results carried it.
    threshold_steady: bool | None = None
    model_version: str = Field(max_length=VERSION_LENGTH)
    label: Label | None = None
    labelled_by: str | None = Field(default=None, max_length=PERSON_LENGTH)
    labelled_at: AwareDatetime | None = None
    label_note: str | None = Field(default=None, max_length=NOTE_LENGTH)
    attributes: dict[str, Any] | None = Field(default=None, description="the event's, as sent")
    timings: StageTimings | None = None

    @classmethod
    def from_result(cls, result: InspectionResult, image_uri: str | None) -> InspectionRecord:
        """The row for a result the worker publishes; `image_uri` is the event's (None inline)."""
        return cls(
            event_id=result.event_id,
            line=result.line,
            station=result.station,
            product_class=result.product_class,
            captured_at=result.captured_at,
            processed_at=result.processed_at,
            image_uri=image_uri,
            heatmap_uri=result.heatmap_uri,
            score=result.score,
            threshold=result.threshold,
            confidence=result.confidence,
            is_anomalous=result.is_anomalous,
            calibrated=result.calibrated,
            threshold_steady=result.threshold_steady,
            model_version=result.model_version,
            attributes=result.attributes,
            timings=result.timings,
        )


class ModelVersionRecord(BaseModel):
    """One `model_versions` row."""

    model_config = ConfigDict(extra="forbid", frozen=True, from_attributes=True)

    version: str
    artifact_uri: str
    parent_version: str | None = None
    created_at: AwareDatetime
    train_window_start: AwareDatetime | None = None
    train_window_end: AwareDatetime | None = None
    images_per_class: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    status: ModelStatus = "candidate"
    promoted_at: AwareDatetime | None = None
    promoted_by: str | None = None
    gate_decision: dict[str, Any] | None = None


class CalibrationRecord(BaseModel):
    """One `class_calibrations` row, with the calibration rebuilt from its statistics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    product_class: str
    model_version: str
    created_at: AwareDatetime
    calibration: ClassCalibration


def calibration_statistics(calibration: ClassCalibration) -> dict[str, Any]:
    """What `class_calibrations.statistics` holds: the calibration less threshold and target."""
    return calibration.model_dump(exclude={"threshold", "target_fpr"})
