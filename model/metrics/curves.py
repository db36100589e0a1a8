"""The field's metrics: image and pixel AUROC, and AUPRO up to a false-positive limit.

Exact computations on sorted scores (ties handled), no sampling of thresholds, so results do
not depend on a step count.
"""

from __future__ import annotations

import cv2
import numpy as np


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, starting at (0, 0)."""
    y = np.asarray(labels, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # end of each tie group
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    p, n = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fp / n], np.r_[0.0, tp / p]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when one of the two classes is absent."""
    y = np.asarray(labels, dtype=bool).ravel()
    if y.all() or not y.any():
        return float("nan")
    fpr, tpr = roc_curve(y, scores)
    return float(np.trapezoid(tpr, fpr))


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to `max_fpr`.

    masks: N x H x W bool, maps: N x H x W. PRO at a threshold is the mean over all connected
    defect regions (8-connectivity) of the fraction of the region above it; the FPR is over all
    defect-free pixels. Both are cumulative sums over pixels sorted by score.
    """
    masks = np.asarray(masks, dtype=bool)
    maps = np.asarray(maps, dtype=np.float64)
    weights = np.zeros(masks.shape, dtype=np.float64)
    n_regions = 0
    for i, m in enumerate(masks):
        if not m.any():
            continue
        k, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        sizes = np.bincount(lab.ravel(), minlength=k)
        w = np.zeros(k, dtype=np.float64)
        w[1:] = 1.0 / sizes[1:]
        weights[i] = w[lab]
        n_regions += k - 1
    normal = ~masks
    n_normal = int(normal.sum())
    if n_regions == 0 or n_normal == 0:
        return float("nan")
    s = maps.ravel()
    order = np.argsort(-s, kind="mergesort")
    s = s[order]
    pro = np.cumsum(weights.ravel()[order]) / n_regions
    fpr = np.cumsum(normal.ravel()[order]) / n_normal
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    fpr, pro = np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]
    keep = fpr <= max_fpr
    cut = int(keep.sum())
    f, p = fpr[:cut], pro[:cut]
    if cut < fpr.size:  # interpolate the curve at exactly max_fpr
        f0, f1, p0, p1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
        p_at = p0 + (p1 - p0) * (max_fpr - f0) / (f1 - f0)
        f, p = np.r_[f, max_fpr], np.r_[p, p_at]
    return float(np.trapezoid(p, f) / max_fpr)
