"""Whether two runtimes serve the same model: the check every export passes before it serves,
and the suite's parity tests.

The tolerance on image scores is relative, 1e-4 of the score: an exported graph computes the
same float32 operations in another order (fused kernels, other accumulation), which moves a
score by about 1e-7 of itself here (bench/RESULTS.md, "Runtimes"), while the smallest change of
meaning the tests make (a normalisation off by 2 %, another resize mode, another refinement
threshold) moves scores by 1e-3 of themselves and more. Verdicts must be identical at the
calibrated thresholds, whatever the tolerance says: a part is passed or rejected by them. Maps
are compared by what they are used for: pixel AUROC against defect masks, within 0.001.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.metrics.curves import auroc

SCORE_RTOL = 1e-4
PIXEL_AUROC_TOL = 0.001


@dataclass(frozen=True)
class Parity:
    images: int
    max_score_rel: float  # largest |a - b| / |a| over the images
    max_map_abs: float
    verdict_flips: int  # images judged differently at their class threshold
    pixel_auroc_delta: float | None  # None: no masks given

    @property
    def ok(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        out = []
        if self.max_score_rel > SCORE_RTOL:
            out.append(
                f"image scores differ by {self.max_score_rel:.2e} of the score (> {SCORE_RTOL:g})"
            )
        if self.verdict_flips:
            out.append(f"{self.verdict_flips} of {self.images} verdicts differ")
        if self.pixel_auroc_delta is not None and self.pixel_auroc_delta >= PIXEL_AUROC_TOL:
            out.append(
                f"pixel AUROC differs by {self.pixel_auroc_delta:.4f} (>= {PIXEL_AUROC_TOL})"
            )
        return out


def compare(
    scores: tuple[np.ndarray, np.ndarray],
    maps: tuple[np.ndarray, np.ndarray],
    thresholds: np.ndarray,
    masks: np.ndarray | None = None,
) -> Parity:
    """Reference against candidate: `scores` and `maps` as (reference, candidate) pairs,
    `thresholds` each image's class threshold, `masks` (N x S x S, 0/1) the defects if known."""
    ref, new = (np.asarray(s, np.float64) for s in scores)
    rel = np.abs(new - ref) / np.maximum(np.abs(ref), 1e-12)
    flips = int(np.sum((ref > thresholds) != (new > thresholds)))
    delta = None
    if masks is not None and masks.any() and not masks.all():
        labels = masks.reshape(-1).astype(bool)
        a, b = (auroc(labels, m.reshape(-1)) for m in maps)
        delta = abs(a - b)
    return Parity(
        images=len(ref),
        max_score_rel=float(rel.max()) if len(rel) else 0.0,
        max_map_abs=float(np.abs(maps[1] - maps[0]).max()) if len(ref) else 0.0,
        verdict_flips=flips,
        pixel_auroc_delta=delta,
    )
