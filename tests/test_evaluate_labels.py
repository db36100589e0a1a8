"""Image labels in evaluation: by mask (the spec's rule) and by folder (anomalib's)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np

from model.data.mvtec import discover_classes
from model.data.mvtec import test_items as list_test_items
from model.evaluation.run import evaluate, score_items
from model.inference.inspector import Inspector
from model.metrics.curves import auroc


def test_a_defect_with_an_empty_mask_is_normal_by_mask_and_defective_by_folder(
    tiny_ckpt: Path, sample_data: Path, tmp_path: Path
):
    """magnetic_tile ships defect images whose masks are empty; the two labellings must then
    disagree about exactly those images, and the report must give both."""
    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    cls = discover_classes(data)[0]
    inspector = Inspector.from_checkpoint(tiny_ckpt, device="cpu")
    items = list_test_items(data, [cls])
    scores, _, _ = score_items(inspector, items)
    folder = np.array([t.defect_type != "good" for t in items])
    # Blank the mask of the highest-scoring defect: as a "normal" image it then outranks the
    # other defects, so the two labellings cannot give the same AUROC.
    victim = int(np.argmax(np.where(folder, scores, -np.inf)))
    mask_path = items[victim].mask_path
    assert mask_path is not None
    blank = np.zeros_like(cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE))
    cv2.imwrite(str(mask_path), blank)

    report = evaluate(inspector, data, tmp_path / "eval", classes=[cls], n_overlays=0)
    m = report["classes"][cls]

    by_mask = folder.copy()
    by_mask[victim] = False
    assert m["empty_defect_masks"] == 1
    assert m["n_good"] == int((~folder).sum()) + 1
    assert m["image_auroc"] == auroc(by_mask, scores)
    assert m["image_auroc_folder_labels"] == auroc(folder, scores)
    assert m["image_auroc"] != m["image_auroc_folder_labels"]
    assert "image_auroc_folder_labels" in report["mean"]
