"""Where a batch is scored: eager PyTorch, or the exported graph under ONNX Runtime or OpenVINO.

Every runtime takes the same uint8 batch (B x 3 x S x S, from `model.data.images.to_batch`) and
returns the same two arrays, anomaly maps (B x S x S) and image scores (B), float32; verdicts,
confidence and heatmaps stay in Python, shared by all of them (`model.inference.inspector`).
The checkpoint's version id names the model whatever runtime serves it.

`choose` resolves `auto`: on a GPU, torch (mixed precision, the path measured there); on a CPU,
the fastest exported runtime installed, in the order the measurements gave (bench/RESULTS.md,
"Runtimes"); a runtime that is asked for but not installed falls back to torch with one log
line, never a failure.
"""

from __future__ import annotations

import logging
from importlib.util import find_spec
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from model.inference.graph import INPUT, ScoringGraph, cached_onnx

RuntimeName = Literal["auto", "torch", "onnxruntime", "openvino"]
RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
# Fastest first on this project's CPU measurements (bench/runtimes.py).
CPU_PREFERENCE: tuple[str, ...] = ("openvino", "onnxruntime", "torch")

log = logging.getLogger("model.inference.runtimes")


class Runtime(Protocol):
    name: str

    def run(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """uint8 B x 3 x S x S -> (maps B x S x S, scores B), float32 numpy arrays."""
        ...


def installed(name: str) -> bool:
    return name == "torch" or find_spec(name) is not None


def choose(requested: str, device: torch.device) -> str:
    """The runtime that will serve: `requested`, or for `auto` the best one installed; a
    missing one, or an exported one asked for on a GPU, falls back to torch, saying so."""
    if requested not in ("auto", *RUNTIMES):
        raise ValueError(f"unknown runtime {requested!r}; choose auto or one of {RUNTIMES}")
    if requested == "auto":
        if device.type != "cpu":
            return "torch"
        return next(r for r in CPU_PREFERENCE if installed(r))
    if requested != "torch" and device.type != "cpu":
        log.warning("runtime %s runs on the CPU only here: serving with torch on %s", requested,
                    device)  # fmt: skip
        return "torch"
    if not installed(requested):
        log.warning("runtime %s is not installed (pip install '.[runtimes]'): serving with torch",
                    requested)  # fmt: skip
        return "torch"
    return requested


def threads() -> int:
    """Intra-op threads for an exported runtime: what torch was given (the cgroup's CPUs)."""
    return torch.get_num_threads()


class TorchRuntime:
    name = "torch"

    def __init__(self, graph: ScoringGraph, device: torch.device) -> None:
        self.graph = graph.to(device).eval()
        self.device = device

    @torch.no_grad()
    def run(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.graph(batch.to(self.device, non_blocking=True))
        return _numpy(maps), _numpy(scores)


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(None, {INPUT: batch.cpu().numpy()})
        return maps.astype(np.float32, copy=False), scores.astype(np.float32, copy=False)


class OpenVinoRuntime:
    name = "openvino"

    def __init__(self, path: Path, cache_dir: Path) -> None:
        import openvino as ov

        core = ov.Core()
        # OpenVINO keeps its compiled form beside the export, keyed by its own version.
        core.set_property({"CACHE_DIR": str(cache_dir / "openvino")})
        self.compiled = core.compile_model(
            str(path),
            "CPU",
            {"INFERENCE_NUM_THREADS": threads(), "PERFORMANCE_HINT": "LATENCY"},
        )
        self.request = self.compiled.create_infer_request()

    def run(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        out = self.request.infer({INPUT: batch.cpu().numpy()})
        maps, scores = (out[self.compiled.output(i)] for i in range(2))
        return np.asarray(maps, np.float32), np.asarray(scores, np.float32)


def build_runtime(
    name: str, graph: ScoringGraph, device: torch.device, checkpoint: bytes, cache_dir: Path
) -> Runtime:
    """The runtime `name` (already chosen) for `graph`, exporting it into `cache_dir` once."""
    if name == "torch":
        return TorchRuntime(graph, device)
    path = cached_onnx(graph, checkpoint, cache_dir)
    if name == "onnxruntime":
        return OnnxRuntime(path)
    if name == "openvino":
        return OpenVinoRuntime(path, cache_dir)
    raise ValueError(f"unknown runtime {name!r}")


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy().astype(np.float32, copy=False)
