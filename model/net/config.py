"""One registry of model configurations, the way timm keeps its architectures.

A configuration names a backbone and a decoder variant; everything else about the head follows
from the backbone's tap channels and the input size, so there is one place to look.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.net.scoring import IMAGE_SCORES, SPEC_IMAGE_SCORE
from schemas.model_state import DEFAULT_TARGET_FPR


@dataclass(frozen=True)
class DecoderSpec:
    """The fusion decoder: a stride-1 CNN at 2C channels (spec section 6)."""

    block: str  # "basic" (ResNet basic block) or "mbv3" (MobileNetV3 bottleneck)
    depth: int
    expand_ratio: float = 1.0  # E / C for mbv3 blocks
    # The spec's training length for this decoder ("100 epochs (GRAD) or 50 (CRAD)"): what
    # the command lines train for unless told otherwise.
    reference_epochs: int = 50


DECODERS: dict[str, DecoderSpec] = {
    # First version of the paper: 7 ResNet basic blocks.
    "grad": DecoderSpec(block="basic", depth=7, reference_epochs=100),
    # Final version (CRAD): 11 MobileNetV3 bottlenecks with E = 4C.
    "crad": DecoderSpec(block="mbv3", depth=11, expand_ratio=4.0),
    # Small variant: E = C.
    "crad-s": DecoderSpec(block="mbv3", depth=11, expand_ratio=1.0),
}

# The decoder a model is trained with unless told otherwise: the paper's final one. It is the
# one change that lifted the hardest class measured (bench/RESULTS.md, "Decoder"); CRAD-s is
# the choice where CPU throughput matters more than that.
DEFAULT_VARIANT = "crad"


@dataclass(frozen=True)
class HeadConfig:
    """Shape and behaviour of the trainable GRAD head.

    Beside the spec's values, the detection-quality levers (bench/RESULTS.md, "Levers"), each
    off or at the spec's value by default: the grid sizes, `standardise` (the head works on
    features standardised per channel with statistics of the training features, kept in the
    checkpoint), `read_dropout` (dropout on the fused grid reads, training only) and
    `image_score` (`model.net.scoring.IMAGE_SCORES`). The backbone's taps are the backbone's
    (`model.net.backbone.build_backbone`).
    """

    channels: int
    feature_size: int = 28
    variant: str = DEFAULT_VARIANT
    local_grid: int = 8
    global_grid: int = 4
    jitter_prob: float = 0.5
    jitter_std: float = 0.05
    refine_threshold: float = 10.0
    refine_weight_mask: float = 0.3
    refine_weight_cos: float = 0.7
    standardise: bool = False
    read_dropout: float = 0.0
    image_score: str = SPEC_IMAGE_SCORE

    def __post_init__(self) -> None:
        if self.variant not in DECODERS:
            raise ValueError(f"unknown decoder variant {self.variant!r}; known: {sorted(DECODERS)}")
        if self.local_grid < 2 or self.global_grid < 2:
            raise ValueError(f"grids need at least 2 x 2 nodes, got {self.local_grid}, "
                             f"{self.global_grid}")  # fmt: skip
        if not 0.0 <= self.read_dropout < 1.0:
            raise ValueError(f"read dropout must lie in [0, 1), got {self.read_dropout}")
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"unknown image score {self.image_score!r}; known: {IMAGE_SCORES}")

    @property
    def decoder(self) -> DecoderSpec:
        return DECODERS[self.variant]


@dataclass(frozen=True)
class TrainConfig:
    """The reference schedule (spec 'Training'); epochs and batch size are the usual knobs.

    `epochs` defaults to GRAD's length; the command lines take the length of the decoder they
    train (`DecoderSpec.reference_epochs`) when none is given.
    """

    epochs: int = 100
    batch_size: int = 64
    lr_grid: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.01
    step_epochs: int = 40
    step_gamma: float = 0.1
    # "step" is the spec's StepLR; "cosine" (anneal to 0 over `epochs`) is the experiment
    # that asks whether the step schedule's abrupt drop is what limits the held-out optimum.
    schedule: str = "step"
    clip_norm: float = 0.1
    seed: int = 0
    heldout_fraction: float = 0.15
    heldout_min: int = 5
    select_every: int = 1
    target_fpr: float = DEFAULT_TARGET_FPR
    threshold_ratio: float = 0.5
