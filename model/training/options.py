"""What a training run may vary besides its schedule (`TrainConfig`): the decoder, the
refinement threshold's rule, coordinate jitter, the head's detection-quality levers, extra
exports, and a model to warm-start from.

Defaults are the method's: the registry's default decoder, the energy rule, jitter on, every
lever at the spec's value (`model.net.config.HeadConfig`; the backbone's taps are a feature
setting, `model.settings.ModelSettings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from model.net.config import DEFAULT_VARIANT, HeadConfig
from schemas import CheckpointMeta

# energy: a fraction of the training features' mean energy (the default, see grad-method.md);
# heldout-p99: the 99th percentile of the held-out reconstruction error, after training.
THRESHOLD_RULES = ("energy", "heldout-p99")

Provenance = Mapping[str, float | int | str | bool | None]


@dataclass(frozen=True)
class TrainOptions:
    variant: str = DEFAULT_VARIANT
    threshold_rule: str = "energy"
    jitter: bool = True
    # Levers (HeadConfig): grid sizes, per-channel standardisation, dropout on the fused grid
    # reads, the image score. A warm start keeps its parent's, except the dropout (training).
    local_grid: int = HeadConfig.local_grid
    global_grid: int = HeadConfig.global_grid
    standardise: bool = HeadConfig.standardise
    read_dropout: float = HeadConfig.read_dropout
    image_score: str = HeadConfig.image_score
    # Also export the best-so-far model every K epochs (`<out>-e<epoch>`): one run then
    # measures several training lengths.
    snapshot_every: int = 0
    # Also export the final epoch's model (`<out>-last`), chosen or not by the held-out loss.
    keep_last: bool = False
    # A trained model (tensors, metadata) to fine-tune: its head shape, decoder and refinement
    # threshold are kept, `variant` and `threshold_rule` ignored.
    init_from: tuple[dict[str, torch.Tensor], CheckpointMeta] | None = None
    # Added to the checkpoint's `training` record (window, feature time, ...).
    provenance: Provenance = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold rule must be one of {THRESHOLD_RULES}")
