"""Evaluation with the field's metrics, per class and mean.

Image AUROC, pixel AUROC at 224 x 224 whatever the model's input size, AUPRO up to 30 % FPR,
and, at each class's calibrated threshold, the false-positive rate on good test images and the
recall on defective ones. Writes a JSON report, an ROC-curve PNG and heatmap overlays for a
sample of images. Scores come from `Inspector.inspect`, the path the worker serves with.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from model.data.images import read_image, read_mask
from model.data.mvtec import TestItem, test_items
from model.evaluation.plots import overlay, plot_roc, save_rgb
from model.inference.inspector import Inspector
from model.metrics.curves import aupro, auroc

METRICS = (
    "image_auroc",
    "image_auroc_folder_labels",
    "pixel_auroc",
    "aupro",
    "fpr_at_threshold",
    "recall_at_threshold",
)

# Pixel metrics are taken at the spec's 224 x 224 for every model, so that models with another
# input size are compared on the same masks and the same number of pixels.
METRIC_SIZE = 224


def _nanmean(values: list[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def score_items(
    inspector: Inspector, items: list[TestItem], batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, and maps and masks at METRIC_SIZE, for test items, in order."""
    scores, maps, masks = [], [], []
    for i in tqdm(range(0, len(items), batch_size), desc="evaluate", unit="batch"):
        chunk = items[i : i + batch_size]
        res = inspector.inspect(
            [read_image(t.path) for t in chunk], [t.product_class for t in chunk]
        )
        scores.append(res.scores)
        # float16 halves memory; the metrics cast back.
        maps.append(np.stack([at_metric_size(m) for m in res.maps]).astype(np.float16))
        masks.extend(read_mask(t.mask_path, METRIC_SIZE) for t in chunk)
    return np.concatenate(scores), np.concatenate(maps), np.stack(masks)


def at_metric_size(m: np.ndarray) -> np.ndarray:
    """A map at METRIC_SIZE: area-averaged from a larger input, bilinear from a smaller one."""
    if m.shape[-1] == METRIC_SIZE:
        return m
    shrink = m.shape[-1] > METRIC_SIZE
    return cv2.resize(
        m.astype(np.float32),
        (METRIC_SIZE, METRIC_SIZE),
        interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
    )


def image_labels(masks: np.ndarray) -> np.ndarray:
    """An image counts as anomalous when its mask has any defect pixel (the spec's rule)."""
    return masks.reshape(len(masks), -1).any(axis=1)


def class_metrics(
    scores: np.ndarray, maps: np.ndarray, masks: np.ndarray, threshold: float
) -> dict[str, float]:
    labels = image_labels(masks)
    flagged = scores > threshold
    return {
        "image_auroc": auroc(labels, scores),
        "pixel_auroc": auroc(masks.ravel(), maps.astype(np.float32).ravel()),
        "aupro": aupro(masks, maps.astype(np.float32)),
        "fpr_at_threshold": float(flagged[~labels].mean()) if (~labels).any() else float("nan"),
        "recall_at_threshold": float(flagged[labels].mean()) if labels.any() else float("nan"),
        "n_good": int((~labels).sum()),
        "n_defect": int(labels.sum()),
        "threshold": float(threshold),
    }


@dataclass
class ClassRun:
    """One class's test images scored: what the metrics and the overlays are computed from."""

    items: list[TestItem]
    scores: np.ndarray
    maps: np.ndarray
    masks: np.ndarray
    seconds: float


def run_class(inspector: Inspector, data: Path, product_class: str, batch_size: int) -> ClassRun:
    items = test_items(data, [product_class])
    t0 = time.perf_counter()
    scores, maps, masks = score_items(inspector, items, batch_size)
    return ClassRun(items, scores, maps, masks, time.perf_counter() - t0)


def class_report(run: ClassRun, threshold: float) -> dict:
    """The field's metrics for one class, with the breakdowns that say where it is hard."""
    m = class_metrics(run.scores, run.maps, run.masks, threshold)
    # Which defect types are hard: each type's images against the good ones.
    types = np.array([t.defect_type for t in run.items])
    good = types == "good"
    m["image_auroc_by_defect"] = {
        d: auroc(
            np.r_[np.zeros(good.sum()), np.ones((types == d).sum())].astype(bool),
            np.r_[run.scores[good], run.scores[types == d]],
        )
        for d in sorted(set(types) - {"good"})
    }
    # The spec labels an image by its mask; anomalib (the reference figures' source) labels
    # it by its folder. They differ only where a defect folder holds an empty mask.
    m["image_auroc_folder_labels"] = auroc(~good, run.scores)
    m["empty_defect_masks"] = sum(
        1
        for t, mk in zip(run.items, run.masks, strict=True)
        if t.defect_type != "good" and not mk.any()
    )
    return m


def write_overlays(run: ClassRun, threshold: float, out_dir: Path, n_overlays: int) -> None:
    """Heatmap overlays: the highest-scoring defects, the highest-scoring good image, and the
    defect scored lowest (a miss, if there is one)."""
    labels = image_labels(run.masks)
    order = np.argsort(-run.scores)
    picks = [i for i in order if labels[i]][: max(1, n_overlays - 2)]
    picks += [i for i in order if not labels[i]][:1]
    missed = [i for i in order[::-1] if labels[i]][:1]
    for i in dict.fromkeys(picks + missed):
        t = run.items[i]
        m = run.maps[i].astype(np.float32)
        img = overlay(read_image(t.path), m, 2 * threshold, run.masks[i])
        name = f"{t.product_class}_{t.defect_type}_{t.path.stem}_s{run.scores[i]:.2f}.png"
        save_rgb(out_dir / "heatmaps" / name, img)


def evaluate(
    inspector: Inspector,
    data: Path,
    out_dir: Path,
    classes: list[str] | None = None,
    n_overlays: int = 4,
    batch_size: int = 32,
) -> dict:
    """Every class's test split scored and measured; the report (also written as JSON), an
    ROC-curve PNG and heatmap overlays under `out_dir`."""
    classes = classes or list(inspector.meta.classes)
    report: dict = {"checkpoint": inspector.version, "data": str(data), "classes": {}}
    curves, seconds, images = {}, 0.0, 0
    for c in classes:
        run = run_class(inspector, data, c, batch_size)
        cal, calibrated = inspector.calibration_for(c)
        m = class_report(run, cal.threshold)
        m["calibrated"] = calibrated
        report["classes"][c] = m
        curves[c] = (image_labels(run.masks), run.scores, m["image_auroc"])
        write_overlays(run, cal.threshold, out_dir, n_overlays)
        seconds, images = seconds + run.seconds, images + len(run.items)
    report["mean"] = {k: _nanmean([report["classes"][c][k] for c in classes]) for k in METRICS}
    report["seconds_per_image"] = seconds / max(images, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    plot_roc(curves, out_dir / "roc.png", f"image ROC, {inspector.version}")
    return report


def format_table(report: dict) -> str:
    head = f"{'class':<16}{'img AUROC':>10}{'px AUROC':>10}{'AUPRO':>8}{'FPR':>7}{'recall':>8}"
    rows = [head, "-" * len(head)]
    for name, m in [*report["classes"].items(), ("mean", report["mean"])]:
        rows.append(
            f"{name:<16}{m['image_auroc']:>10.3f}{m['pixel_auroc']:>10.3f}"
            f"{m['aupro']:>8.3f}{m['fpr_at_threshold']:>7.3f}{m['recall_at_threshold']:>8.3f}"
        )
    return "\n".join(rows)
