"""Pictures people would rather see than read: ROC curves and heatmap overlays."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from model.metrics.curves import roc_curve


def plot_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path, title: str
) -> Path:
    """One ROC curve per class: {name: (labels, scores, auroc)}."""
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    for name, (labels, scores, auc) in curves.items():
        fpr, tpr = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(
        xlabel="false-positive rate",
        ylabel="true-positive rate",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def overlay(
    image: np.ndarray,
    amap: np.ndarray,
    vmax: float,
    mask: np.ndarray | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """RGB image with the anomaly map as a JET overlay; the defect mask outlined in green.

    `vmax` fixes the colour scale (e.g. twice the class threshold), so overlays of one class
    compare by colour.
    """
    size = amap.shape[0]
    img = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    norm = np.clip(amap / max(vmax, 1e-12), 0, 1)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    out = (img * (1 - alpha) + heat * alpha).astype(np.uint8)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        out = np.ascontiguousarray(out)
        cv2.drawContours(out, contours, -1, (0, 255, 0), 1)
    return out


def save_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path
