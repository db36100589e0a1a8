"""Post-training int8 quantisation of an exported scoring graph, with a runtime's own tool.

Two tools (`TOOLS`): ONNX Runtime's `quantize_static` (`onnxruntime`), and OpenVINO's NNCF
(`nncf`, its ONNX backend), which places the pairs where OpenVINO's CPU plugin fuses them into
its int8 kernels and corrects each quantised layer's bias for the shift int8 puts in its mean
output. Either way the result is an ONNX graph in QDQ form (QuantizeLinear / DequantizeLinear
pairs around each convolution and matrix product): ONNX Runtime runs it with its int8 kernels
and OpenVINO reads the same pairs as its own int8 operations, so one file serves both. Weights
are int8 per output channel (symmetric); activations uint8 per tensor (ONNX Runtime's tool) or
int8 symmetric (NNCF), their ranges calibrated on the images given, which must be held-out
normal images only: a defect in the calibration set would widen a range to fit it, and test
images must never shape the model that is judged on them.

What stays in float32: the normalisation of the uint8 input, the grid reads (bilinear sampling
at learned coordinates), the refinement, and the anomaly map and image score, so the int8 error
enters only through the convolutions' and products' outputs. By default (`decoder`) only the
head's decoder, where 6.6 of the default model's 7.1 GFLOP are, takes int8, less its last
convolution: the backbone's features are what the reconstruction is measured against, and in
int8 (`all`) they moved the scores enough to cost image AUROC (bench/RESULTS.md, "int8"). The
quality it costs is measured, not assumed: `model.evaluation.precision_gate` decides whether a
model may be served this way.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from model.core.files import atomic_write
from model.inference.graph import INPUT

QUANTISED_OPS = ["Conv", "MatMul", "Gemm"]


class _Batches:
    """ONNX Runtime's calibration reader protocol over uint8 batches (B x 3 x S x S)."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT: batch}


SCOPES = ("all", "decoder", "pointwise")
TOOLS = ("onnxruntime", "nncf")
OWN_TOOL = {"onnxruntime": "onnxruntime", "openvino": "nncf"}


def own_tool(runtime: str) -> str:
    """The runtime's own quantiser (NNCF for OpenVINO: measured faster under OpenVINO than
    ONNX Runtime's placement, bench/RESULTS.md "int8"), ONNX Runtime's where NNCF is absent."""
    from model.inference.runtimes import installed

    tool = OWN_TOOL.get(runtime, "onnxruntime")
    return tool if installed(tool) else "onnxruntime"


def quantised_nodes(path: Path, scope: str) -> list[str]:
    """The convolutions and products of the graph at `path` that `scope` puts in int8: `all`;
    `decoder`, the head's decoder without its last (recover) convolution, whose output is
    compared with the features directly; `pointwise`, the decoder's 1x1 convolutions only."""
    import onnx

    if scope not in SCOPES:
        raise ValueError(f"unknown quantisation scope {scope!r}; choose one of {SCOPES}")
    names = [
        n.name for n in onnx.load(str(path)).graph.node if n.op_type in QUANTISED_OPS and n.name
    ]
    if scope == "all":
        return names
    # In graph order, which is the order of computation: the last one is the recover conv.
    decoder = [n for n in names if n.startswith("/head/decoder/") and "/se/" not in n][:-1]
    if scope == "pointwise":
        decoder = [n for n in decoder if "/conv_pw" in n]  # conv_pw and conv_pwl
    return decoder


def quantize_int8(
    fp32: Path,
    calibration: Iterable[np.ndarray],
    out: Path,
    scope: str = "decoder",
    tool: str = "onnxruntime",
) -> Path:
    """Write the int8 (QDQ) form of the fp32 graph `fp32` to `out` with `tool`, its activation
    ranges taken from the uint8 batches in `calibration`. Atomic: `out` is whole or absent."""
    if tool not in TOOLS:
        raise ValueError(f"unknown int8 tool {tool!r}; choose one of {TOOLS}")
    if tool == "nncf":
        return _quantize_nncf(fp32, calibration, out, scope)
    return _quantize_onnxruntime(fp32, calibration, out, scope)


def _quantize_onnxruntime(
    fp32: Path, calibration: Iterable[np.ndarray], out: Path, scope: str
) -> Path:
    """ONNX Runtime's static quantisation (after its pre-processing): weights per channel,
    activations uint8 per tensor, only `scope`'s nodes."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Batches, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Shape inference and constant folding first, as the tool recommends; symbolic shape
        # inference is skipped (the batch is the only dynamic dimension).
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        nodes = quantised_nodes(prepared, scope)

        def write(tmp: Path) -> None:
            quantize_static(
                str(prepared),
                str(tmp),
                Reader(calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=QUANTISED_OPS,
                nodes_to_quantize=nodes,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )

        atomic_write(out, write)
    return out


def _quantize_nncf(fp32: Path, calibration: Iterable[np.ndarray], out: Path, scope: str) -> Path:
    """NNCF's post-training quantisation (ONNX backend, OpenVINO's CPU placement rules,
    symmetric int8 activations, fast bias correction). It places quantisers on activations of
    any operation it may, so everything outside the decoder is named in its ignored scope, and
    the decoder's convolutions that `scope` leaves out (its squeeze-excitation and last one)
    too; it reads every calibration batch (its subset_size counts batches)."""
    import nncf
    import onnx

    nncf.set_log_level(logging.WARNING)  # it narrates every quantiser it places at INFO
    model = onnx.load(str(fp32))
    ignored: list[str] = []
    if scope != "all":
        keep = set(quantised_nodes(fp32, scope))
        ignored = [
            n.name
            for n in model.graph.node
            if not n.name.startswith("/head/decoder/")
            or (n.op_type in QUANTISED_OPS and n.name not in keep)
        ]
    batches = [{INPUT: b} for b in calibration]
    quantised = nncf.quantize(
        model,
        nncf.Dataset(batches),
        preset=nncf.QuantizationPreset.PERFORMANCE,
        target_device=nncf.TargetDevice.CPU,
        subset_size=max(1, len(batches)),
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
    )
    atomic_write(out, lambda tmp: onnx.save(quantised, str(tmp)))
    return out
