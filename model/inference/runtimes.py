"""Where a batch is scored: eager PyTorch, or the exported graph under ONNX Runtime or OpenVINO.

Every runtime takes the same uint8 batch (B x 3 x S x S, from `model.data.images.to_batch`) and
returns the same two arrays, anomaly maps (B x S x S) and image scores (B), float32; verdicts,
confidence and heatmaps stay in Python, shared by all of them (`model.inference.inspector`).
The checkpoint's version id names the model whatever runtime serves it.

Each runtime computes in fp32 unless built for a reduced precision (`model.inference.precision`:
int8 from the quantised graph, bf16 in OpenVINO), which only a model the precision gate
approved is served in.

On a GPU, torch runs in channels-last with fp16 autocast convolutions, and ONNX Runtime, where
`onnxruntime-gpu` is installed, with TensorRT or CUDA (`onnx_providers`).

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

from model.inference.graph import INPUT, ScoringGraph, cached_onnx, onnx_path
from model.inference.precision import check_supported

RuntimeName = Literal["auto", "torch", "onnxruntime", "openvino"]
RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
# Fastest first on this project's CPU measurements (bench/runtimes.py).
CPU_PREFERENCE: tuple[str, ...] = ("openvino", "onnxruntime", "torch")

log = logging.getLogger("model.inference.runtimes")


class Runtime(Protocol):
    name: str
    precision: str

    def run(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """uint8 B x 3 x S x S -> (maps B x S x S, scores B), float32 numpy arrays."""
        ...


def installed(name: str) -> bool:
    return name == "torch" or find_spec(name) is not None


def choose(requested: str, device: torch.device) -> str:
    """The runtime that will serve: `requested`, or for `auto` the best one installed; a
    missing one, or one that cannot run on this GPU, falls back to torch, saying so."""
    if requested not in ("auto", *RUNTIMES):
        raise ValueError(f"unknown runtime {requested!r}; choose auto or one of {RUNTIMES}")
    if requested == "auto":
        if device.type != "cpu":
            return "torch"
        return next(r for r in CPU_PREFERENCE if installed(r))
    if not installed(requested):
        log.warning("runtime %s is not installed (pip install '.[runtimes]'): serving with torch",
                    requested)  # fmt: skip
        return "torch"
    if requested == "openvino" and device.type != "cpu":
        log.warning("runtime openvino runs on the CPU only here: serving with torch on %s", device)
        return "torch"
    if requested == "onnxruntime" and device.type != "cpu" and not gpu_providers():
        log.warning("onnxruntime has no GPU provider here (pip install onnxruntime-gpu): "
                    "serving with torch on %s", device)  # fmt: skip
        return "torch"
    return requested


def gpu_providers() -> list[str]:
    """ONNX Runtime's GPU execution providers installed here, best first: TensorRT (fused,
    tuned kernels), then CUDA. The CPU wheel has neither; `onnxruntime-gpu` has both."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in have]


def onnx_providers(device: torch.device, cache_dir: Path) -> list:
    """What an ONNX Runtime session runs on for `device`, the CPU last. TensorRT keeps its
    built engines in the graph cache (building one takes minutes; a restart reuses it)."""
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    gpu: list = []
    for name in gpu_providers():
        if name == "TensorrtExecutionProvider":
            engines = str(cache_dir / "tensorrt")
            options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": engines}
            gpu.append((name, options))
        else:
            gpu.append(name)
    return [*gpu, "CPUExecutionProvider"]


def openvino_has_bf16() -> bool:
    """Whether OpenVINO can compute in bf16 on this CPU (AVX512-BF16 or AMX); without it a
    bf16 request would silently run in fp32."""
    if not installed("openvino"):
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), for torch's bf16
    autocast; without it bf16 would be emulated, slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return openvino_has_bf16()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def threads() -> int:
    """Intra-op threads for an exported runtime: what torch was given (the cgroup's CPUs)."""
    return torch.get_num_threads()


class TorchRuntime:
    name = "torch"

    def __init__(self, graph: ScoringGraph, device: torch.device, precision: str = "fp32") -> None:
        self.precision = precision  # fp32, or a gate-approved fp16 / bf16 autocast
        graph.precision = precision
        self.graph = graph.to(device).eval()
        self.device = device
        # On a GPU, channels-last: cuDNN's fp16 convolutions run on tensor cores in that layout
        # without a transpose per layer. On the CPU the default layout measured no slower at
        # batch 1 (bench.runtimes, "torch, channels-last") and keeps torch the reference.
        self.layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        if device.type == "cuda":
            self.graph = self.graph.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def run(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=self.layout)
        maps, scores = self.graph(x)
        return _numpy(maps), _numpy(scores)


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, path: Path, precision: str = "fp32", providers: list | None = None) -> None:
        self.precision = precision
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = providers or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)

    def run(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(None, {INPUT: batch.cpu().numpy()})
        return maps.astype(np.float32, copy=False), scores.astype(np.float32, copy=False)


# OpenVINO's own name for the precision its float operations run in. Stated always: on a CPU
# with AMX or AVX512-BF16 its default is bf16, which would serve an fp32 model with other scores
# (about 3e-3 of the score here). An int8 graph's float parts stay in f32.
_OV_FLOAT = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}


class OpenVinoRuntime:
    name = "openvino"

    def __init__(self, path: Path, cache_dir: Path, precision: str = "fp32") -> None:
        import openvino as ov

        self.precision = precision
        core = ov.Core()
        # OpenVINO keeps its compiled form beside the export, keyed by its own version.
        core.set_property({"CACHE_DIR": str(cache_dir / "openvino")})
        self.compiled = core.compile_model(
            str(path),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads(),
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": _OV_FLOAT[precision],
            },
        )
        self.request = self.compiled.create_infer_request()

    def run(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        out = self.request.infer({INPUT: batch.cpu().numpy()})
        maps, scores = (out[self.compiled.output(i)] for i in range(2))
        return np.asarray(maps, np.float32), np.asarray(scores, np.float32)


def build_runtime(
    name: str,
    graph: ScoringGraph,
    device: torch.device,
    checkpoint: bytes,
    cache_dir: Path,
    precision: str = "fp32",
) -> Runtime:
    """The runtime `name` (already chosen) for `graph` in `precision`, exporting it into
    `cache_dir` once. An int8 graph is never made here: it is the precision gate's, and its
    absence is a FileNotFoundError."""
    check_supported(name, precision, device)
    if name == "torch":
        return TorchRuntime(graph, device, precision)
    path = cached_onnx(graph, checkpoint, cache_dir)
    if precision == "int8":
        path = onnx_path(cache_dir, checkpoint, "int8", name)
        if not path.is_file():
            raise FileNotFoundError(
                f"no int8 graph at {path} (python -m model.export --precision int8)"
            )
    return exported_runtime(name, path, device, cache_dir, precision)


def exported_runtime(
    name: str, path: Path, device: torch.device, cache_dir: Path, precision: str = "fp32"
) -> Runtime:
    """The exported runtime `name` on the graph file `path` (fp32, or int8 for an int8 file)."""
    if name == "onnxruntime":
        return OnnxRuntime(path, precision, onnx_providers(device, cache_dir))
    if name == "openvino":
        return OpenVinoRuntime(path, cache_dir, precision)
    raise ValueError(f"unknown runtime {name!r}")


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy().astype(np.float32, copy=False)
