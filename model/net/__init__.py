"""The network: what GRAD computes from an image, and nothing about files, stores or devices.

- `config`: the registry of decoder variants (`DECODERS`) and the training configuration.
- `layers`: building blocks (residual blocks, grid reads, weight init), timm's `layers/`.
- `grad`: the GRAD head (local and global grids, jitter, fusion, decoder, refinement).
- `refinement`, `scoring`: pure functions, the feature refinement and the anomaly map/score.
- `standardise`: pure functions, per-channel feature statistics and standardisation (a lever).
- `backbone`: the frozen ImageNet feature extractor; `_weights` (private) reads weight files and
  maps lukemelas keys onto timm's.

Imports: torch, timm and `schemas` only; no other part of `model`.
"""
