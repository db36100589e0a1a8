"""Post-training int8 quantisation of an exported scoring graph, with ONNX Runtime's own tool.

The result is an ONNX graph in QDQ form (QuantizeLinear / DequantizeLinear pairs around each
convolution and matrix product): ONNX Runtime runs it with its int8 kernels and OpenVINO reads
the same pairs as its own int8 operations, so one file serves both. Weights are int8 per output
channel (symmetric); activations uint8 per tensor, their ranges calibrated on the images given,
which must be held-out normal images only: a defect in the calibration set would widen a range
to fit it, and test images must never shape the model that is judged on them.

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
    fp32: Path, calibration: Iterable[np.ndarray], out: Path, scope: str = "decoder"
) -> Path:
    """Write the int8 (QDQ) form of the fp32 graph `fp32` to `out`, its activation ranges taken
    from the uint8 batches in `calibration`. Atomic: `out` is whole or absent."""
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
