"""Settings of the model package, read once (environment, `.env`) and passed down.

CLI flags override these; library functions take plain arguments and never read the
environment themselves.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from model.backbone import DEFAULT_BACKBONE


class ModelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRAD_", env_file=".env", extra="ignore")

    backbone: str = DEFAULT_BACKBONE
    # Weights file for a backbone without built-in weights (e.g. tf_efficientnet_b4):
    # safetensors, or a torch state dict (read with weights_only=True, never unpickled).
    backbone_weights: Path | None = None
    device: str = "auto"
    # Frozen-backbone feature cache; delete it freely, it is rebuilt on demand.
    cache_dir: Path = Path(".cache/grad-features")
    image_size: int = 224
