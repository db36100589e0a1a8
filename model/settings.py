"""Settings of the model package, read once (environment, `.env`) and passed down.

CLI flags override these; library functions take plain arguments and never read the
environment themselves.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.net.backbone import DEFAULT_BACKBONE


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

    @field_validator("image_size")
    @classmethod
    def _whole_feature_grid(cls, v: int) -> int:
        # The stride-16 tap, upsampled x2, must land exactly on the stride-8 grid.
        if v < 64 or v % 16:
            raise ValueError(f"image_size must be a multiple of 16 and at least 64, got {v}")
        return v
