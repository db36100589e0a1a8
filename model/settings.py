"""Settings of the model package's programs, read once (environment, `.env`) and passed down.

`ModelSettings` (backbone, device, feature cache, input size) for `model.train`,
`model.evaluate` and `model.demo`; `RetrainSettings` (the stores, selection, training and
gate) for `model.retrain` and `model.promote`; `LabelSettings` for `model.label`. Environment
variables `GRAD_<NAME>` (lists comma-separated); the stores' fields come from
`model.stores.settings`, shared with the worker. Secrets (a database or Redis URL carrying a
password) are `SecretStr`, never printed. This module only declares: a program reads them
once, at its start.

CLI flags override these; library functions take plain arguments and never read the
environment themselves.
"""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.net.backbone import DEFAULT_BACKBONE, GRID_STRIDE, TAP_REDUCTIONS, check_taps
from model.stores.settings import RecordSettings, StoreSettings, split_commas
from schemas.model_state import DEFAULT_TARGET_FPR


class ModelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRAD_", env_file=".env", extra="ignore")

    backbone: str = DEFAULT_BACKBONE
    # Weights file for a backbone without built-in weights (e.g. tf_efficientnet_b4):
    # safetensors, or a torch state dict (read with weights_only=True, never unpickled).
    backbone_weights: Path | None = None
    device: str = "auto"
    # Frozen-backbone feature cache; delete it freely, it is rebuilt on demand.
    cache_dir: Path = Path(".cache/grad-features")
    # Input side in pixels. The spec's reference is 224 (28 x 28 features). A larger input gives
    # finer features at a cost that grows with its square, but scored worse on the industrial
    # images (320: bench/RESULTS.md, "Input size"). Scoring windows scale with it; evaluation
    # measures pixels at 224 whatever it is.
    image_size: int = 224
    # The backbone's taps (strides) and the grid they are brought to: the spec's 8 and 16 on the
    # stride-8 grid. The multi-scale lever taps 4,8,16 or 8,16,32 (bench/RESULTS.md, "Levers");
    # a grid stride of 4 raises the grid to 56 x 56 at four times the head's cost. Training
    # only: a checkpoint records its taps and is always served with them.
    tap_strides: Annotated[tuple[int, ...], NoDecode] = TAP_REDUCTIONS
    grid_stride: int = GRID_STRIDE
    # Which runtime scores (`model.inference.runtimes`): `auto` takes the fastest installed for
    # the device (on a CPU an exported graph, on a GPU torch); a missing one falls back to torch.
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto"
    # Exported graphs, made on first use and keyed by the checkpoint's content; delete freely.
    graph_cache: Path = Path(".cache/grad-graphs")
    # A reduced precision is served only where the precision gate approved the model in
    # `graph_cache` (`python -m model.export --precision int8 --data DIR`); else fp32.
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"

    @field_validator("image_size")
    @classmethod
    def _whole_feature_grid(cls, v: int) -> int:
        # The stride-16 tap, upsampled x2, must land exactly on the stride-8 grid.
        if v < 64 or v % 16:
            raise ValueError(f"image_size must be a multiple of 16 and at least 64, got {v}")
        return v

    @field_validator("tap_strides", mode="before")
    @classmethod
    def _split_taps(cls, v: object) -> object:
        return split_commas(v)

    @model_validator(mode="after")
    def _grid_is_a_tap(self) -> ModelSettings:
        check_taps(self.tap_strides, self.grid_stride)
        if self.image_size % max(self.tap_strides):
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of the coarsest tap's stride "
                f"{max(self.tap_strides)}"
            )
        return self


def _default_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in a bare container
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class RetrainSettings(ModelSettings, StoreSettings):
    """The stores (`StoreSettings`: the same ones the workers use; rows whose image lies
    outside `image_roots` are counted as unavailable, never read), selection, training, gate."""

    # Stated again: with two bases, the second one's (prefix-less) configuration would win.
    model_config = SettingsConfigDict(env_prefix="GRAD_", env_file=".env", extra="ignore")

    # Selection. Unlabelled images join the training set only when enabled, only when scored
    # against their class's own calibration, and only with score < threshold x (1 - margin).
    include_unlabelled: bool = False
    unlabelled_margin: float = Field(default=0.5, gt=0, lt=1)
    max_images_per_class: PositiveInt = 400
    max_anomalies_per_class: PositiveInt = 200
    # Below this many readable normal images a class is not trained on: skipped when it simply
    # has too few recorded, an error when unreadable images brought it below.
    min_images_per_class: Annotated[int, Field(ge=4)] = 10

    # Training (warm start from the active model unless --from-scratch).
    retrain_epochs: Annotated[int, Field(ge=0)] = 10  # 0: recalibrate the active model only
    retrain_batch_size: PositiveInt = 16
    heldout_fraction: float = Field(default=0.25, gt=0, lt=1)
    heldout_min: Annotated[int, Field(ge=2)] = 5
    target_fpr: float = Field(default=DEFAULT_TARGET_FPR, gt=0, lt=1)
    seed: int = 0

    # The gate: the candidate may be worse than the active model by at most this much.
    gate_fpr_tolerance: float = Field(default=0.02, ge=0, le=1)
    gate_recall_tolerance: float = Field(default=0.05, ge=0, le=1)
    gate_auroc_tolerance: float = Field(default=0.02, ge=0, le=1)
    # Differences this many images can account for are noise (small held-out sets): a rate's
    # tolerance is at least gate_noise_images / images measured (model.lifecycle.gate).
    gate_noise_images: Annotated[int, Field(ge=0)] = 1

    # Where each run writes its candidate and report (`<retrain_dir>/<UTC time>/`).
    retrain_dir: Path = Path("runs/retrain")
    # Who promotions are recorded as made by.
    promoted_by: str = Field(default_factory=_default_actor)

    def public(self) -> dict[str, object]:
        """For reports and logs: secrets masked."""
        return self.model_dump(mode="json")


class LabelSettings(RecordSettings):
    """`model.label`: where the records are (`GRAD_DATABASE_URL`)."""

    model_config = SettingsConfigDict(env_prefix="GRAD_", env_file=".env", extra="ignore")
