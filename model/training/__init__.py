"""Offline training of the unified head on frozen-backbone features.

- `options`: what a training run may vary besides the schedule (`TrainOptions`).
- `split`: the one seeded held-out split of a class's normal images, used by training from a
  folder and by retraining from the record.
- `fit`: the optimisation (AdamW, schedule, selection by held-out loss).
- `export`: a trained head as a checkpoint: head configuration, calibration, metadata.
- `run`: `train` (from an MVTec folder) and `train_from_features` (from features in memory).

Imports: `model.core`, `model.net`, `model.metrics`, `model.data`, `model.inference` (the one
scoring path calibration uses) and `schemas`.
"""
