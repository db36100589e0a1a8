"""Helpers for the retraining tests: inspection rows as a worker records them, and small models
trained on a few real images."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from model.inference.checkpoint import read_meta
from model.net.config import TrainConfig
from model.settings import ModelSettings
from model.training.run import train
from schemas import CheckpointMeta
from schemas.records import InspectionRecord


def inspection(
    event_id: str,
    product_class: str,
    image: Path | str | None,
    *,
    label: str | None = None,
    score: float = 0.5,
    threshold: float = 1.0,
    calibrated: bool = True,
    at: datetime | None = None,
    model_version: str = "grad-0000000000000000",
) -> InspectionRecord:
    """A recorded inspection of `image` (a path, a URI as given, or None for an inline image)."""
    at = at or datetime.now(timezone.utc) - timedelta(minutes=5)
    uri = image.resolve().as_uri() if isinstance(image, Path) else image
    labelled = label is not None
    return InspectionRecord(
        event_id=event_id,
        line="line-3",
        station="cam-1",
        product_class=product_class,
        captured_at=at - timedelta(milliseconds=200),
        processed_at=at,
        image_uri=uri,
        heatmap_uri=f"file:///heatmaps/{event_id}.png",
        score=score,
        threshold=threshold,
        confidence=0.5,
        is_anomalous=score > threshold,
        calibrated=calibrated,
        model_version=model_version,
        label=label,
        labelled_by="qa-anna" if labelled else None,
        labelled_at=at + timedelta(minutes=1) if labelled else None,
    )


def good_images(industrial: Path, product_class: str) -> list[Path]:
    return sorted((industrial / product_class / "train" / "good").glob("*.png"))


def defect_images(industrial: Path, product_class: str) -> list[Path]:
    test = industrial / product_class / "test"
    return sorted(p for d in test.iterdir() if d.name != "good" for p in d.glob("*.png"))


def small_model(
    industrial: Path,
    root: Path,
    counts: dict[str, int],
    settings: ModelSettings,
    epochs: int = 2,
    seed: int = 3,
) -> tuple[Path, CheckpointMeta]:
    """A GRAD model trained briefly on the first `counts[c]` train/good images of each class
    (an MVTec-layout directory of links under `root`); reused when `root` already holds it."""
    out = root / "model.safetensors"
    if out.is_file():
        return out, read_meta(out)
    for c, n in counts.items():
        folder = root / "data" / c / "train" / "good"
        folder.mkdir(parents=True, exist_ok=True)
        for img in good_images(industrial, c)[:n]:
            link = folder / img.name
            if not link.exists():
                os.symlink(img, link)
    meta = train(root / "data", out, TrainConfig(epochs=epochs, batch_size=8, seed=seed), settings)
    return out, meta


def hazelnut_only(industrial: Path, base: Path, cache: Path) -> tuple[Path, CheckpointMeta]:
    """The line's active model in the retraining tests: hazelnut only, 15 epochs on 30 images
    (image AUROC about 0.95 on hazelnut; an untrained head reaches about 0.84). Trained once
    per test session."""
    settings = ModelSettings(device="cpu", cache_dir=cache)
    return small_model(industrial, base / "hazelnut-m0", {"hazelnut": 30}, settings, epochs=15)
