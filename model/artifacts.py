"""The artifact store: where model checkpoints live for good (a directory, or object storage
through fsspec), one file per version, `<base>/<version>.safetensors`.

Redis caches these bytes for fast start-up; this store is the copy that survives Redis being
flushed. Bytes read from it are parsed by `model.checkpoint` (safetensors + JSON, verified
against the version id), never unpickled.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import fsspec


class ArtifactStore:
    def __init__(self, base: str | Path) -> None:
        base = str(base)
        parts = urlsplit(base)
        self.local: Path | None = None
        if parts.scheme in ("", "file"):
            self.local = Path(parts.path if parts.scheme else base).resolve()
            self.base = self.local.as_uri()
        else:
            self.base = base.rstrip("/")

    def uri_for(self, version: str) -> str:
        if not version.replace("-", "").isalnum():
            raise ValueError(f"not a model version id: {version!r}")
        return f"{self.base}/{version}.safetensors"

    def put(self, version: str, blob: bytes) -> str:
        uri = self.uri_for(version)
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.local, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, self.local / f"{version}.safetensors")
        else:
            with fsspec.open(uri, "wb") as f:
                f.write(blob)
        return uri

    def get(self, version: str) -> bytes | None:
        try:
            return read_bytes(self.uri_for(version))
        except FileNotFoundError:
            return None


def read_bytes(location: str | Path) -> bytes:
    """A checkpoint's bytes from a path or any fsspec URL."""
    with fsspec.open(str(location), "rb") as f:
        return f.read()
