"""Export a checkpoint's scoring graph for a runtime, and prove it serves the same verdicts
before anything uses it (`python -m model.export`).

The export lands in a graph cache directory under the name the runtimes look it up by
(`model.inference.graph.graph_key`: the checkpoint's sha256 and the exporter's version), so a
directory made here on a build machine can be shipped to an edge box as its `graph_cache`, and
the box never exports. Then the checkpoint is scored by eager torch and by the runtime on the
given images (test images with their defect masks, or the generated sample when none are
given), and the export is kept only when `model.inference.parity` finds nothing: scores within
1e-4 of themselves, identical verdicts at the calibrated thresholds, pixel AUROC within 0.001.
A failed check removes the file and says which figure failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.data.images import read_image, read_mask
from model.data.mvtec import TestItem, test_items
from model.data.sample import make_sample
from model.inference.checkpoint import read_meta
from model.inference.graph import onnx_path
from model.inference.inspector import BatchResult, Inspector, ServeOptions
from model.inference.parity import Parity, compare


class ExportError(RuntimeError):
    """The export would change what the model decides; the message says how."""


@dataclass(frozen=True)
class ExportReport:
    version: str
    runtime: str
    path: Path
    parity: Parity


def export_verified(
    checkpoint: Path, cache_dir: Path, runtime: str, items: list[TestItem]
) -> ExportReport:
    """Export `checkpoint` into `cache_dir` for `runtime` and check it on `items`."""
    blob = checkpoint.read_bytes()
    reference = Inspector.from_checkpoint(blob, "cpu")
    served = Inspector.from_checkpoint(blob, "cpu", serve=ServeOptions(runtime, cache_dir))
    if served.runtime.name != runtime:
        raise ExportError(
            f"runtime {runtime} cannot serve here (not installed, or the export failed: the log "
            "says which): nothing to check"
        )
    path = onnx_path(cache_dir, blob)  # what serving `served` made or found
    parity = check(reference, served, items)
    if not parity.ok:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"the {runtime} export of {reference.version} changes the model: "
            + "; ".join(parity.problems())
            + " (export removed)"
        )
    return ExportReport(reference.version, runtime, path, parity)


def check(reference: Inspector, served: Inspector, items: list[TestItem]) -> Parity:
    """Both inspectors on the same images, at each image's class threshold."""
    images = [read_image(t.path) for t in items]
    classes = [t.product_class for t in items]
    a = _inspect(reference, images, classes)
    b = _inspect(served, images, classes)
    size = reference.meta.image_size
    masks = np.stack([read_mask(t.mask_path, size) for t in items])
    thresholds = np.array([v.threshold for v in a.verdicts])
    return compare((a.scores, b.scores), (a.maps, b.maps), thresholds, masks)


def _inspect(
    inspector: Inspector, images: list[np.ndarray], classes: list[str], batch: int = 8
) -> BatchResult:
    """Batched, so a large check set stays within memory."""
    parts = [
        inspector.inspect(images[i : i + batch], classes[i : i + batch])
        for i in range(0, len(images), batch)
    ]
    return BatchResult(
        maps=np.concatenate([p.maps for p in parts]),
        scores=np.concatenate([p.scores for p in parts]),
        verdicts=[v for p in parts for v in p.verdicts],
    )


def check_set(checkpoint: Path, data: Path | None, per_class: int, scratch: Path) -> list[TestItem]:
    """What an export is checked on: up to `per_class` test images of each class the checkpoint
    knows from `data` (MVTec layout, good and defective, masks included), or the generated
    sample's test images (written under `scratch`) when no data is given."""
    if data is None:
        items = test_items(make_sample(scratch / "sample", n_train=1))
    else:
        items = test_items(data, sorted(read_meta(checkpoint).calibration) or None)
    by_class: dict[str, list[TestItem]] = {}
    for t in items:
        by_class.setdefault(t.product_class, []).append(t)
    # Evenly spaced through each class's list, so good images and every defect type are in.
    return [
        t
        for group in by_class.values()
        for t in group[:: max(1, len(group) // per_class)][:per_class]
    ]
