"""Input sizes: a model with another input size is measured on the spec's 224 x 224 pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from model.data.images import read_image
from model.data.mvtec import discover_classes
from model.data.mvtec import test_items as list_test_items
from model.evaluation.run import METRIC_SIZE, evaluate, score_items
from model.inference.inspector import Inspector
from model.net.config import TrainConfig
from model.training.run import train


def test_a_256_pixel_model_is_scored_at_its_size_and_measured_at_224(
    sample_data: Path, tiny_settings, tmp_path: Path
):
    settings = tiny_settings.model_copy(update={"image_size": 256})
    ckpt = tmp_path / "s256.safetensors"
    train(sample_data, ckpt, TrainConfig(epochs=1, batch_size=8, seed=3), settings)
    inspector = Inspector.from_checkpoint(ckpt, device="cpu")
    assert inspector.meta.image_size == 256 and inspector.meta.feature_size == 32

    cls = discover_classes(sample_data)[0]
    items = list_test_items(sample_data, [cls])
    res = inspector.inspect([np.zeros((300, 300, 3), np.uint8)], [cls])
    assert res.maps.shape == (1, 256, 256)  # the worker's maps stay at the model's size

    _, maps, masks = score_items(inspector, items)
    assert maps.shape == masks.shape == (len(items), METRIC_SIZE, METRIC_SIZE)
    assert masks.any()  # the defects' masks survived the resize
    report = evaluate(inspector, sample_data, tmp_path / "eval", classes=[cls], n_overlays=1)
    m = report["classes"][cls]
    assert 0.0 <= m["pixel_auroc"] <= 1.0 and 0.0 <= m["aupro"] <= 1.0
    # Downsampling by area keeps a map's mean: nothing was cropped or shifted away.
    full = inspector.inspect([read_image(items[0].path)], [cls]).maps[0]
    assert abs(float(maps[0].astype(np.float32).mean()) - float(full.mean())) < 0.01 * float(
        full.mean()
    )


def test_an_input_size_off_the_feature_grid_is_refused_by_name():
    from model.settings import ModelSettings

    assert ModelSettings(image_size=320).image_size == 320
    for bad in (200, 0, 48):
        with pytest.raises(ValidationError, match="image_size must be a multiple of 16"):
            ModelSettings(image_size=bad)


def test_maps_of_any_size_come_to_224_without_moving_a_defect():
    from model.evaluation.run import at_metric_size

    for size in (160, 448):
        m = np.zeros((size, size), np.float32)
        q = size // 4
        m[q : 2 * q, 2 * q : 3 * q] = 1.0  # a defect in the second row, third column of quarters
        out = at_metric_size(m)
        assert out.shape == (METRIC_SIZE, METRIC_SIZE)
        peak = np.unravel_index(int(out.argmax()), out.shape)
        assert 56 <= peak[0] < 112 and 112 <= peak[1] < 168
        assert abs(float(out.mean()) - float(m.mean())) < 0.01
