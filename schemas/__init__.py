"""Contracts shared by the parts of the system. Imports neither `model` nor `worker`."""

from schemas.events import (
    EVENT_SCHEMA_VERSION,
    DeadLetter,
    InspectionEvent,
    InspectionResult,
    OperatorLabel,
    StageTimings,
)
from schemas.model_state import (
    SCHEMA_VERSION,
    CheckpointMeta,
    ClassCalibration,
    ClassState,
    StateChange,
)

__all__ = [
    "EVENT_SCHEMA_VERSION",
    "SCHEMA_VERSION",
    "CheckpointMeta",
    "ClassCalibration",
    "ClassState",
    "DeadLetter",
    "InspectionEvent",
    "InspectionResult",
    "OperatorLabel",
    "StageTimings",
    "StateChange",
]
