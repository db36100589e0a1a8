"""Backbone features of images known by their content, cached one file per image.

Retraining reads images back from the record, where the same image recurs from one nightly
window to the next: a cache keyed by each image's sha256 (and the backbone, its weights, taps
and input size) computes every image's features once, however the windows slide.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from model.images import to_batch
from model.net.backbone import FrozenBackbone
from model.recorded_images import LoadedImage


def backbone_key(backbone: FrozenBackbone, image_size: int) -> str:
    info = backbone.info
    blob = json.dumps([info.name, info.weights_sha256, list(info.taps), image_size]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@torch.no_grad()
def content_features(
    backbone: FrozenBackbone,
    images: Sequence[LoadedImage],
    image_size: int,
    device: torch.device,
    cache_dir: Path | None,
    desc: str = "features",
    batch_size: int = 32,
) -> torch.Tensor:
    """N x C x S x S float32 features on the CPU, in the order of `images`."""
    if not images:
        raise ValueError("no images to extract features from")
    folder = (
        None
        if cache_dir is None
        else Path(cache_dir) / "content" / backbone_key(backbone, image_size)
    )
    out: list[torch.Tensor | None] = [None] * len(images)
    todo = []
    for i, im in enumerate(images):
        f = None if folder is None else folder / im.sha256[:2] / f"{im.sha256}.safetensors"
        if f is not None and f.is_file():
            out[i] = load_file(str(f))["features"]
        else:
            todo.append(i)
    for k in tqdm(range(0, len(todo), batch_size), desc=desc, unit="batch", leave=False):
        idx = todo[k : k + batch_size]
        batch = to_batch([images[i].decode() for i in idx], image_size).to(device)
        feats = backbone(batch).float().cpu()
        for j, i in enumerate(idx):
            out[i] = feats[j].clone()
            if folder is not None:
                f = folder / images[i].sha256[:2] / f"{images[i].sha256}.safetensors"
                f.parent.mkdir(parents=True, exist_ok=True)
                tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")
                save_file({"features": out[i]}, str(tmp))
                tmp.replace(f)
    return torch.stack([t for t in out if t is not None])
