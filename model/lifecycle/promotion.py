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
from datetime import datetime, timezone

from model.inference.checkpoint import from_bytes
from model.stores.artifacts import ArtifactStore, read_bytes
from model.stores.records import RecordStore
from model.stores.state import StateStore
from schemas import CheckpointMeta, ClassState


class PromotionError(RuntimeError):
    """The version cannot be promoted (not recorded, no bytes anywhere, corrupt bytes)."""


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


def verified_meta(version: str, blob: bytes) -> CheckpointMeta:
    """The checkpoint's metadata, after checking the bytes hold exactly `version`."""
    _, meta = from_bytes(blob)
    if meta.version != version:
        raise PromotionError(f"the bytes stored for {version} hold model {meta.version}")
    return meta


def find_bytes(
    version: str,
    *,
    store: StateStore | None,
    artifacts: ArtifactStore,
    artifact_uri: str | None = None,
) -> bytes:
    """A version's checkpoint bytes: from the state store, else the artifact store, else the
    artifact URI the registry recorded for it."""
    if store is not None:
        blob = store.get_model(version)
        if blob is not None:
            return blob
    blob = artifacts.get(version)
    if blob is not None:
        return blob
    if artifact_uri:
        try:
            return read_bytes(artifact_uri)
        except (FileNotFoundError, OSError) as exc:
            raise PromotionError(f"model {version}: cannot read {artifact_uri}: {exc}") from exc
    raise PromotionError(
        f"model {version} is in neither the state store nor the artifact store {artifacts.base}"
    )


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
    at = datetime.now(timezone.utc)
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
    verified_meta(version, blob)
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
    now = datetime.now(timezone.utc).isoformat()
    for c, state in sorted(store.class_states().items()):
        if state.model_version:
            outcome.canaries_kept[c] = state.model_version
        elif state.calibration is not None:
            store.set_class_state(c, ClassState(updated_at=now))
            outcome.overrides_cleared.append(c)
    store.set_active(version)
    return outcome
