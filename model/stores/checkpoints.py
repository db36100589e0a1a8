"""Where a model version's checkpoint bytes are found: the workers' state store (the fast copy),
else the artifact store (the copy that survives Redis being flushed), else the URI the registry
recorded for it. One lookup for the workers, the retraining and `model.promote`.

The bytes come back unparsed: the caller verifies them (`model.inference.checkpoint.from_bytes`
with the version expected; safetensors and JSON, never unpickled).
"""

from __future__ import annotations

from model.stores.artifacts import ArtifactStore, read_bytes
from model.stores.state import StateStore


class ModelNotFound(LookupError):
    """No store holds the version's bytes; the message says where it looked."""


def find_model_bytes(
    version: str,
    state: StateStore | None,
    artifacts: ArtifactStore,
    *,
    artifact_uri: str | None = None,
    reseed: bool = False,
) -> bytes:
    """The bytes of `version`. With `reseed`, bytes found outside the state store are put back
    into it (a flushed cache refills itself from the copy kept for good)."""
    if state is not None:
        blob = state.get_model(version)
        if blob is not None:
            return blob
    blob = artifacts.get(version)
    if blob is None and artifact_uri:
        try:
            blob = read_bytes(artifact_uri)
        except (FileNotFoundError, OSError) as exc:
            raise ModelNotFound(f"model {version}: cannot read {artifact_uri}: {exc}") from exc
    if blob is None:
        where = "in neither the state store nor" if state is not None else "not in"
        raise ModelNotFound(f"model {version} is {where} the artifact store {artifacts.base}")
    if reseed and state is not None:
        state.put_model(version, blob)
    return blob
