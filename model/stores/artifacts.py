"""The artifact store: where model checkpoints live for good (a directory, or object storage
through fsspec), one file per version, `<base>/<version>.safetensors`.

Redis caches these bytes for fast start-up; this store is the copy that survives Redis being
flushed. Bytes read from it are parsed by `model.inference.checkpoint` (safetensors + JSON, verified
against the version id), never unpickled.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import fsspec

from model.stores.blobs import BlobStore, parse_base


class ArtifactStore:
    def __init__(self, base: str | Path) -> None:
        self._spec = str(base)
        self.local, self.base = parse_base(base)

    @cached_property
    def blobs(self) -> BlobStore:
        """Opened on the first put, so a store that is only read from (through fsspec URLs) never
        needs its object-store driver up front."""
        return BlobStore(self._spec)

    def uri_for(self, version: str) -> str:
        return f"{self.base}/{_key(version)}"

    def put(self, version: str, blob: bytes) -> str:
        """Store a checkpoint (atomically in a directory); returns its URI. OSError and store
        errors propagate."""
        return self.blobs.put(_key(version), blob)

    def get(self, version: str) -> bytes | None:
        try:
            return read_bytes(self.uri_for(version))
        except FileNotFoundError:
            return None


def _key(version: str) -> str:
    if not version.replace("-", "").isalnum():
        raise ValueError(f"not a model version id: {version!r}")
    return f"{version}.safetensors"


def read_bytes(location: str | Path) -> bytes:
    """A checkpoint's bytes from a path or any fsspec URL."""
    with fsspec.open(str(location), "rb") as f:
        return f.read()
