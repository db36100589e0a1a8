"""Make a model version the active one: in the SQL registry and in the workers' state store.

Shared by `model.retrain` (a candidate that passed the gate) and `model.promote` (any recorded
version, e.g. a rollback). Order matters:

1. the checkpoint bytes are verified (safetensors + JSON, hashed against the version id; never
   unpickled) and kept in the artifact store;
2. SQL: the version becomes `active`, the one before `retired` (the registry is the truth);
3. state store: the bytes are stored, per-class calibration overrides that followed the active
   model are cleared (they belonged to the model being replaced; every checkpoint carries its
   own calibration), then the active pointer is set, which announces the promotion on the
   changes channel. Running workers load the version and switch between two batches.

A class pinned to another version (a canary) stays on it; the outcome lists such classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model.core.clock import utc_now
from model.inference.checkpoint import from_bytes
from model.stores.artifacts import ArtifactStore
from model.stores.checkpoints import find_model_bytes
from model.stores.connect import Stores
from model.stores.records import RecordStore
from model.stores.sql import safe_url
from model.stores.state import StateStore
from schemas import CheckpointMeta, ClassState


class PromotionError(RuntimeError):
    """The version cannot be promoted: it is not recorded. (No bytes anywhere is
    `ModelNotFound`; corrupt or wrong bytes a `CheckpointError`.)"""


@dataclass
class PromotionOutcome:
    version: str
    previous_sql: str | None
    previous_state_store: str | None
    state_store: bool  # the state store was updated (False: none configured)
    overrides_cleared: list[str] = field(default_factory=list)
    canaries_kept: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "version": self.version,
            "previous_sql": self.previous_sql,
            "previous_state_store": self.previous_state_store,
            "state_store_updated": self.state_store,
            "calibration_overrides_cleared": self.overrides_cleared,
            "canaries_kept": self.canaries_kept,
        }


def register(
    records: RecordStore,
    artifacts: ArtifactStore,
    blob: bytes,
    meta: CheckpointMeta,
    **lineage: object,
) -> str:
    """Keep the checkpoint in the artifact store and record the version and its calibrations in
    SQL (idempotent). Returns the artifact URI."""
    uri = artifacts.uri_for(meta.version)
    if artifacts.get(meta.version) != blob:
        uri = artifacts.put(meta.version, blob)
    records.record_model_version(meta.version, uri, **lineage)  # type: ignore[arg-type]
    at = utc_now()
    for c, cal in sorted(meta.calibration.items()):
        records.record_calibration(meta.version, c, cal, at=at)
    return uri


def promote(
    version: str,
    blob: bytes,
    *,
    records: RecordStore,
    store: StateStore | None,
    by: str,
    gate_decision: dict | None = None,
) -> PromotionOutcome:
    """Make `version` (recorded in SQL, bytes `blob`) the active model everywhere."""
    from_bytes(blob, expect=version)  # verified before anything changes
    outcome = PromotionOutcome(
        version=version,
        previous_sql=records.active_version(),
        previous_state_store=store.active_version() if store is not None else None,
        state_store=store is not None,
    )
    records.set_active(version, by=by, gate_decision=gate_decision)
    if store is None:
        return outcome
    store.put_model(version, blob)
    now = utc_now().isoformat()
    for c, state in sorted(store.class_states().items()):
        if state.model_version:
            outcome.canaries_kept[c] = state.model_version
        elif state.calibration is not None:
            store.set_class_state(c, ClassState(updated_at=now))
            outcome.overrides_cleared.append(c)
    store.set_active(version)
    return outcome


def promote_recorded(version: str, stores: Stores, by: str) -> PromotionOutcome:
    """`model.promote VERSION`: a version the registry recorded (a rollback, or a candidate
    promoted by hand), its bytes found wherever they are kept."""
    recorded = stores.records.model_version(version)
    if recorded is None:
        known = [v.version for v in stores.records.model_versions()]
        raise PromotionError(
            f"model version {version!r} is not recorded in {safe_url(stores.records.url)}"
            + (f"; recorded: {', '.join(known)}" if known else "")
        )
    blob = find_model_bytes(
        version, stores.state, stores.artifacts, artifact_uri=recorded.artifact_uri
    )
    return promote(version, blob, records=stores.records, store=stores.state, by=by)
