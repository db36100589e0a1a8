"""Checkpoints: one safetensors file, tensors plus JSON metadata in its header.

Never pickled, because a checkpoint may arrive from Redis or object storage. The version id is
a hash of the tensors and of the metadata that shapes scoring, so identical content has the
same id wherever it was produced and any change gets a new one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load, save

from model.core.files import atomic_write_bytes
from schemas import CheckpointMeta

META_KEY = "grad_meta"
# Metadata fields that do not change what the model computes; left out of the version id.
_UNVERSIONED = {"version", "created_at", "training"}


class CheckpointError(ValueError):
    """The bytes are not a GRAD checkpoint this code can load, or fail their integrity check."""


class WrongModel(CheckpointError):
    """Sound bytes, stored under one version id, that hold another model."""


def content_version(tensors: dict[str, torch.Tensor], meta: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    body = {k: v for k, v in meta.items() if k not in _UNVERSIONED}
    h.update(json.dumps(body, sort_keys=True).encode())
    return "grad-" + h.hexdigest()[:16]


def to_bytes(tensors: dict[str, torch.Tensor], meta: CheckpointMeta) -> bytes:
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return save(state, metadata={META_KEY: meta.model_dump_json()})


def from_bytes(
    data: bytes, expect: str | None = None
) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Parse and verify a checkpoint: the tensors must hash to the version the metadata claims,
    and, given `expect` (the version the bytes were stored as), that version must be it."""
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        raw_meta = header["__metadata__"][META_KEY]
    except Exception as exc:
        raise CheckpointError(f"not a GRAD checkpoint: {exc}") from exc
    meta = CheckpointMeta.model_validate_json(raw_meta)
    # The metadata as written, not as this code's schema would write it again: a field added
    # since (with its default) must not change the id of a checkpoint made before it.
    expected = content_version(tensors, json.loads(raw_meta))
    if expected != meta.version:
        raise CheckpointError(
            f"checkpoint content hashes to {expected}, metadata says {meta.version}"
        )
    if expect is not None and meta.version != expect:
        raise WrongModel(f"the bytes stored as {expect} hold model {meta.version}")
    return tensors, meta


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: CheckpointMeta) -> Path:
    """Write a checkpoint atomically: a reader (a worker loading it) never sees half a file."""
    path = Path(path)
    atomic_write_bytes(path, to_bytes(tensors, meta))
    return path


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return from_bytes(path.read_bytes())


def read_meta(path: Path) -> CheckpointMeta:
    """Metadata only, without reading the tensors."""
    with safe_open(str(path), framework="pt") as f:
        return CheckpointMeta.model_validate_json(f.metadata()[META_KEY])
