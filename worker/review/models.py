"""What the models page shows: the registry's versions with their lineage, which one is active,
per-class canaries and calibration overrides from the workers' state store, each version's
calibrations and gate report, and the command that rolls back. Read-only: the page never
promotes; `python -m model.promote` does, and the page says how.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.stores.records import RecordStore
from model.stores.state import StateStore, StateStoreUnavailable
from schemas import ClassState
from schemas.records import CalibrationRecord, ModelVersionRecord


@dataclass(frozen=True)
class Serving:
    """What the workers serve now, as the state store says (None: it could not be read)."""

    active: str | None
    classes: dict[str, ClassState] | None
    error: str | None = None
    configured: bool = True  # False: no REVIEW_REDIS_URL, so nothing to ask

    def canaries(self) -> dict[str, str]:
        """Class -> the version it is pinned to, where that is not the active one."""
        return {
            c: s.model_version
            for c, s in (self.classes or {}).items()
            if s.model_version and s.model_version != self.active
        }

    def overrides(self) -> dict[str, ClassState]:
        return {c: s for c, s in (self.classes or {}).items() if s.calibration is not None}


def serving(store: StateStore | None) -> Serving:
    """What the state store says; None (no REVIEW_REDIS_URL) is said, not asked."""
    if store is None:
        return Serving(None, None, configured=False)
    try:
        return Serving(store.active_version(), store.class_states())
    except StateStoreUnavailable as exc:
        return Serving(None, None, str(exc))


def lineage(versions: list[ModelVersionRecord], version: str) -> list[ModelVersionRecord]:
    """`version` and its ancestors, newest first (a cycle, which the registry cannot hold by
    construction, stops the walk rather than loop)."""
    by_id = {v.version: v for v in versions}
    out: list[ModelVersionRecord] = []
    here = by_id.get(version)
    while here is not None and here not in out:
        out.append(here)
        here = by_id.get(here.parent_version) if here.parent_version else None
    return out


def rollback_target(versions: list[ModelVersionRecord]) -> ModelVersionRecord | None:
    """The version a rollback would go back to: the most recently promoted one that is not
    active now (its parent when none was promoted before)."""
    active = next((v for v in versions if v.status == "active"), None)
    earlier = [v for v in versions if v.promoted_at is not None and v.status != "active"]
    if earlier:
        return max(earlier, key=lambda v: v.promoted_at)  # type: ignore[arg-type, return-value]
    if active is not None and active.parent_version:
        return next((v for v in versions if v.version == active.parent_version), None)
    return None


def promote_command(version: str) -> str:
    return f"python -m model.promote {version} --by YOUR-NAME"


@dataclass(frozen=True)
class VersionPage:
    record: ModelVersionRecord
    lineage: list[ModelVersionRecord]
    children: list[str]
    calibrations: dict[str, CalibrationRecord]


def version_page(records: RecordStore, version: str) -> VersionPage | None:
    versions = records.model_versions()
    record = next((v for v in versions if v.version == version), None)
    if record is None:
        return None
    return VersionPage(
        record=record,
        lineage=lineage(versions, version),
        children=[v.version for v in versions if v.parent_version == version],
        calibrations=records.calibrations(version),
    )
