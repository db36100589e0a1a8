"""Contracts shared by the parts of the system. Imports neither `model` nor `worker`."""

from schemas.model_state import SCHEMA_VERSION, CheckpointMeta, ClassCalibration

__all__ = ["SCHEMA_VERSION", "CheckpointMeta", "ClassCalibration"]
