"""Offline evaluation: a checkpoint measured on an MVTec-layout test split.

- `run`: per-class and mean image AUROC, pixel AUROC, AUPRO, and the false-positive rate and
  recall at the calibrated thresholds; the JSON report.
- `plots`: the ROC figure and heatmap overlays (images people look at rather than read).

Imports: `model.data`, `model.inference`, `model.metrics` and the layers below them.
"""
