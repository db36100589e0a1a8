"""Score statistics, pure functions on arrays: what the field measures and where the line is drawn.

- `curves`: ROC, AUROC and AUPRO (per-region overlap), as the MVTec AD protocol defines them.
- `calibration`: per-class thresholds from held-out normal scores (from 20 of them the higher
  of an exponential tail on the log-scores and a log-normal fit, the log-normal fit below),
  the calibration report, and the confidence of a verdict.

Imports: numpy, OpenCV (connected regions) and `schemas` only; no other part of `model`.
"""
