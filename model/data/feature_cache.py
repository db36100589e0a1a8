"""Frozen-backbone features, computed once and cached on disk: by file or by content.

The backbone never trains, so its output for a given image, weights, taps and input size never
changes: caching it turns every training epoch into head-only work. Two keys, one cache:

- `cached_features` (training on a folder of files): one entry per image *set*, keyed by the
  files' paths, sizes and modification times; editing or replacing a file makes a new entry.
- `content_features` (retraining on recorded images): one entry per image, keyed by the sha256
  of its bytes, because the same image recurs from one nightly window to the next however the
  windows slide.

Both live under a folder named for the backbone (`backbone_key`), so features of another
backbone, weights file or input size are never confused. Entries are written atomically: two
runs sharing the cache never read half a file. Delete the folder freely; it is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from model.core.files import atomic_write
from model.data.images import read_image, to_batch
from model.data.recorded_images import LoadedImage
from model.net.backbone import FrozenBackbone

BATCH = 32


class FeatureSettings(Protocol):
    """What computing features needs from a program's settings (`model.settings.ModelSettings`
    has these fields): the library takes them as plain values, never reads the environment."""

    backbone: str
    backbone_weights: Path | None
    device: str
    image_size: int
    cache_dir: Path
    tap_strides: tuple[int, ...]
    grid_stride: int


def backbone_key(backbone: FrozenBackbone, image_size: int) -> str:
    """What the features depend on besides the image: architecture, weights, taps, the grid
    they are brought to, input size."""
    info = backbone.info
    taps = [list(info.taps), info.grid_stride]
    blob = json.dumps([info.name, info.weights_sha256, taps, image_size]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def files_key(paths: Sequence[Path]) -> str:
    """An image set's key: every file's resolved path, size and modification time, in order."""
    h = hashlib.sha256()
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


@torch.no_grad()
def extract(
    backbone: FrozenBackbone,
    images: Sequence[Callable[[], np.ndarray]],
    image_size: int,
    device: torch.device,
    desc: str = "features",
) -> torch.Tensor:
    """Features of the images (each a callable that decodes it, so that only one batch of pixels
    is in memory at a time): N x C x S x S float32 on the CPU."""
    out = []
    for i in tqdm(range(0, len(images), BATCH), desc=desc, unit="batch", leave=False):
        batch = to_batch([decode() for decode in images[i : i + BATCH]], image_size)
        out.append(backbone(batch.to(device)).float().cpu())
    return torch.cat(out)


def _save(path: Path, features: torch.Tensor) -> None:
    atomic_write(path, lambda tmp: save_file({"features": features.contiguous()}, str(tmp)))


def _load(path: Path) -> torch.Tensor:
    return load_file(str(path))["features"]


def cached_features(
    backbone: FrozenBackbone,
    paths: list[Path],
    image_size: int,
    device: torch.device,
    cache_dir: Path | None,
    desc: str = "features",
) -> torch.Tensor:
    """Features of the image files at `paths`, from the cache when the set is unchanged."""
    if not paths:
        raise ValueError("no images to extract features from")
    decoders = [lambda p=p: read_image(p) for p in paths]
    if cache_dir is None:
        return extract(backbone, decoders, image_size, device, desc=desc)
    folder = Path(cache_dir) / "files" / backbone_key(backbone, image_size)
    file = folder / f"{files_key(paths)}.safetensors"
    if file.is_file():
        return _load(file)
    feats = extract(backbone, decoders, image_size, device, desc=desc)
    _save(file, feats)
    return feats


def content_features(
    backbone: FrozenBackbone,
    images: Sequence[LoadedImage],
    image_size: int,
    device: torch.device,
    cache_dir: Path | None,
    desc: str = "features",
) -> torch.Tensor:
    """Features of recorded images, in their order; each image's entry is found by its sha256,
    so only images not seen before are run through the backbone."""
    if not images:
        raise ValueError("no images to extract features from")
    folder = (
        None
        if cache_dir is None
        else Path(cache_dir) / "content" / backbone_key(backbone, image_size)
    )

    def entry(im: LoadedImage) -> Path | None:
        return None if folder is None else folder / im.sha256[:2] / f"{im.sha256}.safetensors"

    found = {i: _load(f) for i, im in enumerate(images) if (f := entry(im)) and f.is_file()}
    todo = [i for i in range(len(images)) if i not in found]
    if todo:
        fresh = extract(backbone, [images[i].decode for i in todo], image_size, device, desc)
        for i, feats in zip(todo, fresh, strict=True):
            found[i] = feats.clone()
            if (f := entry(images[i])) is not None:
                _save(f, found[i])
    return torch.stack([found[i] for i in range(len(images))])
