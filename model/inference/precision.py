"""Reduced precision: which runtime computes in which number format, and the gate's approval
that lets a model be served in one.

fp32 is the model as trained, served by every runtime with the same scores (the parity tests).
The reduced formats trade a little accuracy for speed:

- `int8`: the exported graph quantised after training (`model.inference.quantize`, calibrated
  on held-out normal images only), run by ONNX Runtime or OpenVINO with their int8 kernels;
- `bf16`: OpenVINO's bfloat16 inference on a CPU that has it (AVX512-BF16 or AMX), or torch's
  bfloat16 autocast (on a GPU, or on such a CPU);
- `fp16`: torch's float16 autocast on a GPU (tensor cores).

torch serves fp32 on every device unless the gate approved fp16 or bf16: a GPU line gets the
scores the model was calibrated with until a measurement says the faster format keeps them.

A reduced format changes scores, so a model is served in one only after the precision gate
(`model.evaluation.precision_gate`, `python -m model.export --precision ...`) measured that it
keeps the model's quality on a data set and wrote its approval into the graph cache, beside
the exported graph and under the same key (the checkpoint's content): a checkpoint that was
never judged, or was refused, is served in fp32 with a log line, never refused service.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from model.core.files import atomic_write
from model.inference.graph import graph_key

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")

# What each runtime can compute in, by device type.
_SUPPORTED: dict[tuple[str, str], tuple[str, ...]] = {
    ("torch", "cpu"): ("fp32", "bf16"),  # bf16 autocast: worth it only with AMX / AVX512-BF16
    ("torch", "cuda"): ("fp32", "fp16", "bf16"),
    ("onnxruntime", "cpu"): ("fp32", "int8"),
    ("onnxruntime", "cuda"): ("fp32",),
    ("openvino", "cpu"): ("fp32", "bf16", "int8"),
}


class PrecisionError(ValueError):
    """A precision this runtime cannot compute in; the message names what it can."""


def supported(runtime: str, device: torch.device) -> tuple[str, ...]:
    return _SUPPORTED.get((runtime, device.type), ("fp32",))


def check_supported(runtime: str, precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision not in supported(runtime, device):
        raise PrecisionError(
            f"{runtime} on {device.type} computes in {', '.join(supported(runtime, device))}, "
            f"not {precision}"
        )


@dataclass(frozen=True)
class Approval:
    """The gate's verdict on one checkpoint in one runtime and precision (its summary; the
    full report is the command's JSON)."""

    version: str
    runtime: str
    precision: str
    passed: bool
    image_auroc_drop: float
    pixel_auroc_drop: float
    judged_at: str


def approval_path(cache_dir: Path, checkpoint: bytes, runtime: str, precision: str) -> Path:
    return cache_dir / f"{graph_key(checkpoint)}-{runtime}-{precision}.gate.json"


def write_approval(path: Path, approval: Approval) -> None:
    text = json.dumps(asdict(approval), indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def approved(cache_dir: Path, checkpoint: bytes, runtime: str, precision: str) -> bool:
    """Whether the gate passed this checkpoint in this runtime and precision (fp32 always is).

    An unreadable or foreign record counts as no approval: the model is then served in fp32.
    """
    if precision == "fp32":
        return True
    path = approval_path(cache_dir, checkpoint, runtime, precision)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("passed") is True
        and record.get("runtime") == runtime
        and record.get("precision") == precision
    )
