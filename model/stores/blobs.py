"""Write-once-per-key files in a directory or an object store: what model checkpoints
(`model.stores.artifacts`), heatmaps and archived inline images are kept in.

A local directory gets an atomic rename (a reader never sees half a file; a retry replaces the
file whole); any other fsspec URL (s3://bucket/prefix) gets one put. Keys are derived by the
caller (from the event id for the worker's files, so a redelivered event overwrites instead of
duplicating; from the version id for checkpoints).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import urlsplit

import fsspec

from model.core.files import atomic_write_bytes


def event_key(event_id: str, suffix: str) -> str:
    """`ab/<readable id>-<hash><suffix>`: stable for an id, safe as a path, spread over 256
    directories."""
    digest = hashlib.sha256(event_id.encode()).hexdigest()
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", event_id)[:80]
    return f"{digest[:2]}/{readable}-{digest[:12]}{suffix}"


def parse_base(base: str | Path) -> tuple[Path | None, str]:
    """A store's base as (the resolved local directory, or None for an object store; the base
    URI that keys are appended to: `file:///...` or the URL without a trailing `/`)."""
    base = str(base)
    parts = urlsplit(base)
    if parts.scheme in ("", "file"):
        local = Path(parts.path if parts.scheme else base).resolve()
        return local, local.as_uri()
    return None, base.rstrip("/")


class BlobStore:
    def __init__(self, base: str | Path) -> None:
        self.local, self.base_uri = parse_base(base)
        if self.local is None:
            self.fs, self.root = fsspec.core.url_to_fs(self.base_uri)

    def uri_for(self, key: str) -> str:
        return f"{self.base_uri}/{key}"

    def put(self, key: str, data: bytes) -> str:
        """Store `data` under `key`; returns its URI. OSError and store errors propagate (the
        caller retries them as transient)."""
        if self.local is not None:
            atomic_write_bytes(self.local / key, data)
        else:
            self.fs.pipe_file(f"{self.root}/{key}", data)
        return self.uri_for(key)


def image_suffix(data: bytes) -> str:
    """File suffix from an image's magic bytes, so an archived image opens by its name."""
    for magic, suffix in (
        (b"\x89PNG", ".png"),
        (b"\xff\xd8\xff", ".jpg"),
        (b"BM", ".bmp"),
        (b"II*\x00", ".tif"),
        (b"MM\x00*", ".tif"),
        (b"RIFF", ".webp"),
    ):
        if data.startswith(magic):
            return suffix
    return ".img"
