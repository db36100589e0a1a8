"""What a trained GRAD model is, as data: the metadata stored beside its tensors.

A checkpoint may arrive from Redis or object storage, so everything needed to reproduce
preprocessing and scoring lives here as plain JSON, validated on load, never pickled.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, computed_field

SCHEMA_VERSION = 1


# The share of a class's normal parts calibration lets through as false alarms unless told
# otherwise: 1 in 100, what a line can re-inspect by hand. One definition for training, the
# retraining's settings, the gate and calibration itself.
DEFAULT_TARGET_FPR = 0.01

# At most this many of a class's normal scores are kept with its calibration (a few KB of JSON).
REFERENCE_POINTS = 512

# A threshold set from fewer normal images than this is provisional. Measured on magnetic_tile's
# held-out scores (`python -m bench.calibration --study`, bench/RESULTS.md "Calibration of
# small classes"): a 1 % threshold fitted to 5 scores gave a test false-positive rate of 15 %
# or more in one draw of ten; fitted to 20, 6 %, near the 4 % that all 114 give. One
# definition for calibration, the results' `threshold_steady` and the review station.
STEADY_COUNT = 20


class ClassCalibration(BaseModel):
    """Per-class decision state learned from normal images only.

    ``threshold`` is the image score above which an image is called anomalous; ``confidence``
    is a logistic of ``(score - threshold) / scale`` so it reads 0.5 exactly at the threshold.
    """

    model_config = ConfigDict(frozen=True)

    threshold: float
    scale: float = Field(gt=0, description="logistic temperature of the confidence")
    target_fpr: float = Field(gt=0, lt=1)
    n_images: int = Field(ge=1, description="held-out normal images the threshold came from")
    mean: float
    std: float = Field(ge=0)
    median: float
    q99: float
    max: float
    method: str = Field(
        description="how the threshold was set, 'empirical', 'exponential tail' or 'lognormal'"
    )
    # The normal scores themselves (sorted; evenly spaced quantiles of them past
    # REFERENCE_POINTS), what drift is measured against (`model.metrics.drift`). Empty for a
    # calibration made before they were kept: drift then uses the log-normal it describes.
    reference: tuple[float, ...] = Field(default=(), max_length=REFERENCE_POINTS)

    @computed_field  # written with the calibration, so its readers see it; never stored apart
    @property
    def steady(self) -> bool:
        """Whether the threshold rests on enough normal images to hold near its target;
        false: provisional, to be recalibrated from the normal images the line records
        (`python -m model.retrain`)."""
        return self.n_images >= STEADY_COUNT


class CheckpointMeta(BaseModel):
    """Everything needed to rebuild the network and score exactly as training measured."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    schema_version: int = SCHEMA_VERSION
    version: str = Field(description="content id: hash of the tensors and of this metadata")
    created_at: str
    # Backbone and preprocessing.
    backbone: str
    backbone_weights_sha256: str
    taps: tuple[int, ...] = Field(description="timm feature indices tapped (stride 8 and 16)")
    tap_channels: tuple[int, ...]
    # The strides tapped and the grid they are brought to: the spec's 8 and 16 on the stride-8
    # grid unless the multi-scale lever was trained (model.net.backbone).
    tap_strides: tuple[int, ...] = (8, 16)
    grid_stride: int = 8
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Head.
    variant: str = Field(description="decoder variant: grad, crad or crad-s")
    channels: int
    feature_size: int
    local_grid: int
    global_grid: int
    refine_threshold: float = Field(gt=0)
    refine_threshold_rule: str
    # Levers (model.net.config.HeadConfig): features standardised per channel (the statistics
    # are tensors of the checkpoint), and how a map becomes an image score.
    standardise: bool = False
    image_score: str = "pool-max"
    # Decisions.
    calibration: dict[str, ClassCalibration]
    global_calibration: ClassCalibration
    # Provenance.
    classes: tuple[str, ...]
    train_images: dict[str, int]
    heldout_images: dict[str, int]
    training: dict[str, float | int | str | bool | None] = Field(default_factory=dict)


class ClassState(BaseModel):
    """What serves one product class right now, as the shared state store holds it.

    `model_version` lets a class move to a new model before the others (a canary); without it
    the class follows the active model. `calibration`, when set, overrides the one inside the
    checkpoint (a recalibration that needs no new weights).
    """

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model_version: str | None = None
    calibration: ClassCalibration | None = None
    updated_at: str


class StateChange(BaseModel):
    """A message on the state channel: workers re-read the state before their next batch."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    kind: str = Field(description="'promotion' (active model) or 'class' (one class's state)")
    model_version: str | None = None
    product_class: str | None = None
    at: str
