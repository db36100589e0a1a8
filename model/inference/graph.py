"""A checkpoint's whole scoring path as one module, and that module exported as one graph.

`ScoringGraph` takes what `model.data.images.to_batch` makes (uint8 images, B x 3 x S x S,
already resized) and returns the anomaly maps (B x S x S) and image scores (B): normalisation,
the frozen backbone and its taps, the GRAD head with refinement, the spec's map and score. It
computes exactly what the torch path of `Inspector.inspect` computes on the CPU, so an export of
it serves the same scores; the parity tests hold the two together.

`export_onnx` traces it once with a dynamic batch dimension (ONNX opset 17, the TorchScript
exporter: it needs no extra package and keeps the graph's constants, such as the refinement
threshold and the pooling widths, as constants). `cached_onnx` keeps the result under a graph
cache, keyed by the checkpoint bytes' sha256 and the exporter's version, so a model is exported
once per machine and never downloaded; a stale or foreign file is simply not found under its
key. Writes are atomic: two workers exporting the same model at once do not tear the file.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from model.core.files import atomic_write
from model.net.backbone import FrozenBackbone
from model.net.grad import GRADHead
from model.net.scoring import score_features

OPSET = 17
INPUT = "images"
OUTPUTS = ("maps", "scores")


# torch's autocast number formats for the reduced precisions it serves (`model.inference.
# precision`): fp32 is the model as trained, on every device.
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_for(device: torch.device, precision: str = "fp32"):
    """The convolutions and matrix products in `precision` (fp16 or bf16 autocast), or in full
    precision for fp32. A reduced precision is served only where the precision gate approved
    the model in it; training's calibration always scores in fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


@torch.no_grad()
def head_scores(
    head: GRADHead,
    x: torch.Tensor,
    image_size: int,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps (B x S x S) and image scores (B) for backbone features x, in float32 (the
    head's convolutions in `precision`)."""
    device = device or x.device
    with autocast_for(device, precision):
        z, x_hat = head.pair(x)
    return score_features(z, x_hat, image_size, head.cfg.image_score)


class ScoringGraph(nn.Module):
    def __init__(
        self, backbone: FrozenBackbone, head: GRADHead, image_size: int, precision: str = "fp32"
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.image_size = image_size
        self.precision = precision  # torch's: fp32, or a gate-approved fp16 / bf16 autocast

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolutions in the graph's precision; the map and score in float32."""
        with autocast_for(images.device, self.precision):
            x = self.backbone(images)
        return head_scores(self.head, x.float(), self.image_size, precision=self.precision)


def graph_key(checkpoint: bytes) -> str:
    """What names an exported graph: the checkpoint's content and the exporter that made it."""
    digest = hashlib.sha256(checkpoint).hexdigest()[:16]
    return f"{digest}-torch{torch.__version__.split('+')[0]}-opset{OPSET}"


def export_onnx(graph: ScoringGraph, path: Path) -> Path:
    """Trace `graph` (on the CPU, in eval mode) into an ONNX file with a dynamic batch."""
    graph = copy.deepcopy(graph).cpu().eval()  # the caller's modules stay where they are
    size = graph.image_size
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    dynamic = {INPUT: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUTS}}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                input_names=[INPUT],
                output_names=list(OUTPUTS),
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
            )

    atomic_write(path, write)
    return path


def onnx_path(
    cache_dir: Path, checkpoint: bytes, precision: str = "fp32", runtime: str = ""
) -> Path:
    """Where a checkpoint's exported graph lies in a graph cache: the fp32 export, or the int8
    form one runtime was judged on (`model.inference.quantize`, made only by the precision
    gate; one per runtime, so judging one runtime never replaces what another was approved on).
    """
    suffix = "" if precision == "fp32" else f"-{runtime}-{precision}"
    return cache_dir / f"{graph_key(checkpoint)}{suffix}.onnx"


def cached_onnx(graph: ScoringGraph, checkpoint: bytes, cache_dir: Path) -> Path:
    """The ONNX export of `graph` (built from `checkpoint`) under `cache_dir`, made if absent."""
    path = onnx_path(cache_dir, checkpoint)
    if not path.is_file():
        export_onnx(graph, path)
    return path
