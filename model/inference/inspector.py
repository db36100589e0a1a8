"""Inference API: load a checkpoint once, then score batches of images on CPU or CUDA.

Evaluation and the worker both go through `Inspector.inspect`, and training calibrates through
the same `head_scores`, so every score in the system comes from one code path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.data.images import to_batch
from model.inference.allocator import keep_activations_on_heap
from model.inference.checkpoint import from_bytes
from model.inference.graph import ScoringGraph, head_scores
from model.inference.precision import approved, supported
from model.inference.runtimes import Runtime, TorchRuntime, build_runtime, choose
from model.metrics.calibration import confidence
from model.net.backbone import FrozenBackbone, WeightsError, build_backbone
from model.net.config import HeadConfig
from model.net.grad import GRADHead
from schemas import CheckpointMeta, ClassCalibration

log = logging.getLogger("model.inference.inspector")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def image_scores(
    head: GRADHead, feats: torch.Tensor, image_size: int, device: torch.device, batch: int = 32
) -> np.ndarray:
    """Image scores of many features (N x C x S x S on the CPU), a batch at a time, float64:
    what calibration and the gate measure, through the same `head_scores` as serving."""
    head.eval()
    if len(feats) == 0:
        return np.zeros(0, dtype=np.float64)
    out = [
        head_scores(head, feats[i : i + batch].to(device), image_size, device)[1].float().cpu()
        for i in range(0, len(feats), batch)
    ]
    return torch.cat(out).numpy().astype(np.float64)


# The head's configuration as a checkpoint records it; the rest (jitter, refinement weights)
# is training-time behaviour or the method's constants.
_HEAD_FIELDS = (
    "channels",
    "feature_size",
    "variant",
    "local_grid",
    "global_grid",
    "standardise",
    "image_score",
)


def head_config_from(meta: CheckpointMeta) -> HeadConfig:
    """The head a checkpoint describes (the inverse of `head_fields`)."""
    return HeadConfig(
        **{k: getattr(meta, k) for k in _HEAD_FIELDS}, refine_threshold=meta.refine_threshold
    )


def head_fields(cfg: HeadConfig) -> dict[str, int | str | float]:
    """What a checkpoint's metadata records of a head (the inverse of `head_config_from`)."""
    return {**{k: getattr(cfg, k) for k in _HEAD_FIELDS}, "refine_threshold": cfg.refine_threshold}


def backbone_for(meta: CheckpointMeta, weights: Path | None = None) -> FrozenBackbone:
    """The frozen backbone a checkpoint was trained on: its architecture, tapped at its strides
    on its grid; the tapped stages must be the ones the checkpoint records."""
    backbone = build_backbone(meta.backbone, weights, meta.tap_strides, meta.grid_stride)
    if backbone.info.taps != tuple(meta.taps):
        raise WeightsError(
            f"{meta.backbone} taps stages {backbone.info.taps} at strides {meta.tap_strides}, "
            f"the checkpoint was trained on stages {tuple(meta.taps)}"
        )
    return backbone


@dataclass(frozen=True)
class ServeOptions:
    """Which runtime serves a loaded model (`model.inference.runtimes`), and where exported
    graphs are kept (made on first use, keyed by the checkpoint's content)."""

    runtime: str = "torch"
    graph_cache: Path = Path(".cache/grad-graphs")
    # fp32, or a reduced precision the precision gate approved for this checkpoint and runtime
    # (`model.inference.precision`); without its approval the model is served in fp32.
    precision: str = "fp32"


def serve_precision(
    serve: ServeOptions, runtime: str, device: torch.device, blob: bytes, version: str
) -> str:
    """The precision a model is served in: the one asked for where this runtime computes in it
    and the gate approved it for this checkpoint, else fp32 with a log line saying why."""
    wanted = serve.precision
    if wanted == "fp32":
        return wanted
    if wanted not in supported(runtime, device):
        log.warning(
            "%s on %s does not compute in %s (only %s): serving %s in fp32",
            runtime, device.type, wanted, ", ".join(supported(runtime, device)), version,
        )  # fmt: skip
        return "fp32"
    if not approved(serve.graph_cache, blob, runtime, wanted):
        log.warning(
            "%s in %s on %s is not approved by the precision gate in %s (python -m model.export "
            "--precision %s --runtime %s --data DIR): serving in fp32",
            version, wanted, runtime, serve.graph_cache, wanted, runtime,
        )  # fmt: skip
        return "fp32"
    return wanted


@dataclass(frozen=True)
class Verdict:
    """The decision for one image, with the calibration it was taken against."""

    product_class: str | None
    score: float
    threshold: float
    confidence: float
    is_anomalous: bool
    calibrated: bool
    calibration: ClassCalibration  # what drift is measured against (worker.drift)

    @property
    def threshold_steady(self) -> bool:
        """The class's own threshold, set from enough normal images to hold near its target;
        false for the global fallback and for a provisional class calibration."""
        return self.calibrated and self.calibration.steady


@dataclass(frozen=True)
class BatchResult:
    maps: np.ndarray  # B x S x S float32, the raw anomaly maps
    scores: np.ndarray  # B float32
    verdicts: list[Verdict]


class Inspector:
    """A loaded GRAD model: frozen backbone, trained head, per-class calibration."""

    def __init__(
        self,
        backbone: FrozenBackbone,
        head: GRADHead,
        meta: CheckpointMeta,
        device: torch.device,
        runtime: Runtime | None = None,
    ) -> None:
        keep_activations_on_heap()  # on the CPU, a third of the throughput (model/allocator.py)
        self.backbone = backbone.to(device).eval()
        self.head = head.to(device).eval()
        self.meta = meta
        self.device = device
        # Eager torch unless an exported runtime was built for this model (`from_checkpoint`).
        self.runtime: Runtime = runtime or TorchRuntime(self.graph(), device)

    def graph(self) -> ScoringGraph:
        """The whole scoring path as one module (what an exported runtime runs)."""
        return ScoringGraph(self.backbone, self.head, self.meta.image_size)

    @classmethod
    def from_checkpoint(
        cls,
        source: Path | bytes,
        device: str | torch.device = "auto",
        backbone_weights: Path | None = None,
        expect: str | None = None,
        serve: ServeOptions | None = None,
    ) -> Inspector:
        """Load a checkpoint (a file, or bytes verified to be model `expect` when given), to be
        served by the runtime `serve` asks for (eager torch by default)."""
        blob = source if isinstance(source, bytes) else Path(source).read_bytes()
        tensors, meta = from_bytes(blob, expect)
        backbone = backbone_for(meta, backbone_weights)
        have, want = backbone.info.weights_sha256, meta.backbone_weights_sha256
        if have != want:
            raise WeightsError(
                "backbone weights differ from the ones this checkpoint was trained with "
                f"(sha256 {have[:12]} != {want[:12]})"
            )
        head = GRADHead(head_config_from(meta))
        head.load_state_dict(tensors, strict=True)
        inspector = cls(backbone, head, meta, resolve_device(device))
        inspector.serve_with(serve or ServeOptions(), blob)
        return inspector

    def serve_with(self, serve: ServeOptions, blob: bytes) -> None:
        """Build the runtime `serve` asks for (the model's bytes key its exports). Never a
        failure: what cannot be had is replaced by what can, and the log says why."""
        name = choose(serve.runtime, self.device)
        precision = serve_precision(serve, name, self.device, blob, self.version)
        if name == "torch" and precision == "fp32":
            return  # eager torch, built by the constructor
        try:
            self.runtime = build_runtime(
                name, self.graph(), self.device, blob, serve.graph_cache, precision
            )
        except Exception as exc:  # an unwritable cache, an exporter or runtime fault
            log.warning(
                "runtime %s (%s) unavailable for %s (%s: %s): serving with torch in fp32",
                name, precision, self.version, type(exc).__name__, exc,
            )  # fmt: skip

    @property
    def version(self) -> str:
        return self.meta.version

    def calibration_for(
        self,
        product_class: str | None,
        overrides: Mapping[str, ClassCalibration] | None = None,
    ) -> tuple[ClassCalibration, bool]:
        """The class's calibration (an override from the state store first, then the one in the
        checkpoint), or the model's global one with calibrated=False."""
        cal = None
        if product_class:
            cal = (overrides or {}).get(product_class) or self.meta.calibration.get(product_class)
        return (cal, True) if cal is not None else (self.meta.global_calibration, False)

    @torch.no_grad()
    def inspect(
        self,
        images: Sequence[np.ndarray] | torch.Tensor,
        classes: Sequence[str | None] | None = None,
        calibrations: Mapping[str, ClassCalibration] | None = None,
    ) -> BatchResult:
        """Score a batch: H x W x 3 uint8 RGB arrays (any size), or a B x 3 x S x S uint8 tensor."""
        size = self.meta.image_size
        batch = images if isinstance(images, torch.Tensor) else to_batch(list(images), size)
        maps_np, scores_np = self.runtime.run(batch)
        classes = list(classes) if classes is not None else [None] * len(scores_np)
        if len(classes) != len(scores_np):
            raise ValueError(f"{len(classes)} classes for {len(scores_np)} images")
        verdicts = []
        for cls_name, s in zip(classes, scores_np, strict=True):
            cal, calibrated = self.calibration_for(cls_name, calibrations)
            verdicts.append(
                Verdict(
                    product_class=cls_name,
                    score=float(s),
                    threshold=cal.threshold,
                    confidence=float(confidence(float(s), cal)),
                    is_anomalous=bool(s > cal.threshold),
                    calibrated=calibrated,
                    calibration=cal,
                )
            )
        return BatchResult(maps=maps_np, scores=scores_np, verdicts=verdicts)
