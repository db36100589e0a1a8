"""MVTec-layout data sets: which images train and which are for testing.

Training sees `train/good` only (a seeded share of it is held out for calibration and model
selection: `model.training.split`), so no test image ever influences the model or its
thresholds.
"""

from __future__ import annotations

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
