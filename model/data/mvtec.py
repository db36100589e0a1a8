"""MVTec-layout data sets: which images train, which are held out, which are for testing.

Training sees `train/good` only; a seeded share of each class's `train/good` is held out for
calibration and model selection, so no test image ever influences the model or its thresholds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class DatasetError(ValueError):
    """The directory does not hold a usable MVTec-layout data set."""


@dataclass(frozen=True)
class TestItem:
    path: Path
    product_class: str
    defect_type: str  # "good" for normal images
    mask_path: Path | None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def discover_classes(root: Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data directory not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())
    if not classes:
        raise DatasetError(f"no class under {root} has a train/good folder (MVTec layout)")
    return classes


def train_images(root: Path, classes: list[str] | None = None) -> dict[str, list[Path]]:
    out = {}
    for c in classes or discover_classes(root):
        folder = Path(root) / c / "train" / "good"
        if not folder.is_dir():
            raise DatasetError(f"class {c!r} has no {folder}")
        imgs = _images(folder)
        if not imgs:
            raise DatasetError(f"class {c!r} has no images in {folder}")
        out[c] = imgs
    return out


def split_heldout(
    images: dict[str, list[Path]], fraction: float, minimum: int, seed: int
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Seeded per-class split of normal images into (train, held out).

    Each class keeps at least `minimum` held-out images (calibration needs a few even for small
    classes) and at least half of its images for training.
    """
    if minimum < 2:  # a setting error, not a data one: say so rather than blame a class
        raise ValueError(f"held-out minimum {minimum}: calibration needs at least 2 images")
    train, held = {}, {}
    for c, paths in images.items():
        order = list(paths)
        random.Random(f"{seed}:{c}").shuffle(order)
        k = max(minimum, round(fraction * len(order)))
        k = min(k, len(order) // 2)
        if k < 2:
            raise DatasetError(f"class {c!r} has {len(order)} normal images; at least 4 needed")
        held[c], train[c] = sorted(order[:k]), sorted(order[k:])
    return train, held


def test_items(root: Path, classes: list[str] | None = None) -> list[TestItem]:
    items = []
    for c in classes or discover_classes(root):
        test_dir = Path(root) / c / "test"
        if not test_dir.is_dir():
            raise DatasetError(f"class {c!r} has no test folder {test_dir}")
        for d in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            for img in _images(d):
                mask = None
                if d.name != "good":
                    cand = Path(root) / c / "ground_truth" / d.name / f"{img.stem}_mask.png"
                    mask = cand if cand.is_file() else None
                items.append(TestItem(img, c, d.name, mask))
    return items
