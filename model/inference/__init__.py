"""Serving a trained model: one code path from a checkpoint to scores, maps and verdicts.

- `inspector`: the `Inspector` (load a checkpoint once, score batches on CPU or CUDA), the head
  scoring that training calibrates with, and the verdict against a class's calibration.
- `checkpoint`: the checkpoint format (safetensors tensors + JSON metadata, content-addressed
  version), read and verified without unpickling.
- `allocator`: glibc malloc tuning that keeps activations on the heap (steady memory under load).
- `graph`: the whole scoring path as one module (`ScoringGraph`) and its ONNX export, cached by
  the checkpoint's content; `runtimes`: eager torch, ONNX Runtime, OpenVINO behind one `run`,
  and `auto`'s choice; `parity`: whether two runtimes decide alike; `graph_export`: an export
  checked on images before it is kept (`python -m model.export`).

Imports: `model.core`, `model.net`, `model.metrics`, `model.data` and `schemas`.
"""
