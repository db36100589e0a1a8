"""Frozen-backbone features, computed once per image set and cached on disk.

The backbone never trains, so its output for a given image, weights and input size never
changes: caching it turns every training epoch into head-only work.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from model.images import read_image, to_batch
from model.net.backbone import FrozenBackbone


def cache_key(backbone: FrozenBackbone, image_size: int, paths: list[Path]) -> str:
    h = hashlib.sha256()
    info = backbone.info
    h.update(json.dumps([info.name, info.weights_sha256, list(info.taps), image_size]).encode())
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


@torch.no_grad()
def extract(
    backbone: FrozenBackbone,
    paths: list[Path],
    image_size: int,
    device: torch.device,
    batch_size: int = 32,
    desc: str = "features",
) -> torch.Tensor:
    """Features of the images at `paths`, N x C x S x S float32 on the CPU."""
    out = []
    for i in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", leave=False):
        imgs = [read_image(p) for p in paths[i : i + batch_size]]
        out.append(backbone(to_batch(imgs, image_size).to(device)).float().cpu())
    return torch.cat(out)


def cached_features(
    backbone: FrozenBackbone,
    paths: list[Path],
    image_size: int,
    device: torch.device,
    cache_dir: Path | None,
    desc: str = "features",
) -> torch.Tensor:
    if not paths:
        raise ValueError("no images to extract features from")
    if cache_dir is None:
        return extract(backbone, paths, image_size, device, desc=desc)
    file = Path(cache_dir) / f"{cache_key(backbone, image_size, paths)}.safetensors"
    if file.is_file():
        return load_file(str(file))["features"]
    feats = extract(backbone, paths, image_size, device, desc=desc)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    save_file({"features": feats.contiguous()}, str(tmp))
    tmp.replace(file)
    return feats
