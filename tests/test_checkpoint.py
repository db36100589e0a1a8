import json

import numpy as np
import pytest
import torch

from model.data.images import read_image
from model.data.mvtec import train_images
from model.inference.checkpoint import (
    CheckpointError,
    from_bytes,
    load_checkpoint,
    read_meta,
    to_bytes,
)
from model.inference.inspector import Inspector
from model.metrics.calibration import calibrate
from model.net.config import DEFAULT_VARIANT, TrainConfig
from model.training.run import train
from model.training.split import split_heldout
from schemas.model_state import STEADY_COUNT


def test_metadata_holds_what_scoring_needs(tiny_ckpt):
    meta = read_meta(tiny_ckpt)
    assert meta.backbone == "tf_efficientnet_lite0"
    assert len(meta.backbone_weights_sha256) == 64
    assert meta.tap_channels == (40, 112) and meta.channels == 152
    assert meta.image_size == 224 and meta.mean == (0.5, 0.5, 0.5)
    assert meta.variant == DEFAULT_VARIANT and meta.refine_threshold > 0
    assert set(meta.calibration) == {"fabric", "ring"}
    assert meta.version.startswith("grad-")


def test_round_trip_gives_identical_scores(tiny_ckpt, sample_data):
    a = Inspector.from_checkpoint(tiny_ckpt, "cpu")
    b = Inspector.from_checkpoint(tiny_ckpt.read_bytes(), "cpu")
    imgs = [read_image(p) for p in sorted((sample_data / "ring" / "test").rglob("*.png"))[:6]]
    ra, rb = a.inspect(imgs, ["ring"] * 6), b.inspect(imgs, ["ring"] * 6)
    np.testing.assert_array_equal(ra.scores, rb.scores)
    np.testing.assert_array_equal(ra.maps, rb.maps)
    # The loaded model reproduces the held-out scores that training calibrated on.
    meta = a.meta
    _, held = split_heldout(train_images(sample_data), 0.15, 5, seed=7)
    for c, paths in held.items():
        scores = a.inspect([read_image(p) for p in paths], [c] * len(paths)).scores
        assert float(scores.mean()) == pytest.approx(meta.calibration[c].mean, rel=1e-4)
        assert float(scores.max()) == pytest.approx(meta.calibration[c].max, rel=1e-4)


def test_tampering_is_detected(tiny_ckpt):
    tensors, meta = load_checkpoint(tiny_ckpt)
    tensors = dict(tensors)
    tensors["local_grid"] = tensors["local_grid"] + 1e-3
    with pytest.raises(CheckpointError, match="hashes to"):
        from_bytes(to_bytes(tensors, meta))
    _, meta = load_checkpoint(tiny_ckpt)
    raised = meta.model_copy(update={"refine_threshold": meta.refine_threshold * 2})
    with pytest.raises(CheckpointError, match="hashes to"):
        from_bytes(to_bytes(load_checkpoint(tiny_ckpt)[0], raised))
    with pytest.raises(CheckpointError):
        from_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tiny_ckpt.with_name("nope.safetensors"))


def test_a_checkpoint_written_before_a_metadata_field_existed_still_loads(tiny_ckpt):
    """As an older version of this code wrote it: its calibrations without `reference` (the
    normal scores drift is measured against), its id hashed over that metadata."""
    from safetensors.torch import save

    from model.inference.checkpoint import META_KEY, content_version

    tensors, meta = load_checkpoint(tiny_ckpt)
    old = meta.model_dump(mode="json")
    for cal in [*old["calibration"].values(), old["global_calibration"]]:
        del cal["reference"]
    old["version"] = content_version(tensors, old)
    data = save(dict(tensors), metadata={META_KEY: json.dumps(old)})
    _, loaded = from_bytes(data, expect=old["version"])
    assert loaded.version == old["version"] != meta.version
    assert all(c.reference == () for c in loaded.calibration.values())
    assert meta.calibration and all(c.reference for c in meta.calibration.values())


def test_checkpoint_is_safetensors_not_pickle(tiny_ckpt):
    data = tiny_ckpt.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert "grad_meta" in header["__metadata__"]
    assert not data.startswith(b"PK") and b"\x80\x02" not in data[:2]


def test_unknown_class_is_scored_uncalibrated(tiny_ckpt, sample_data):
    insp = Inspector.from_checkpoint(tiny_ckpt, "cpu")
    img = read_image(next((sample_data / "fabric" / "test" / "good").glob("*.png")))
    res = insp.inspect([img, img], ["fabric", "washer"])
    known, unknown = res.verdicts
    assert known.calibrated and not unknown.calibrated
    # The sample's few held-out normals make the class's threshold provisional; a steady
    # calibration of the same class (an override from the line's records) makes it trusted.
    assert not known.threshold_steady and not unknown.threshold_steady
    steady = calibrate(np.random.default_rng(0).lognormal(1.0, 0.2, STEADY_COUNT))
    again = insp.inspect([img, img], ["fabric", "washer"], {"fabric": steady, "washer": steady})
    assert [v.threshold_steady for v in again.verdicts] == [True, True]
    assert unknown.threshold == insp.meta.global_calibration.threshold
    assert known.score == unknown.score
    assert res.maps.shape == (2, 224, 224) and res.maps.dtype == np.float32
    for v in res.verdicts:
        assert v.is_anomalous == (v.score > v.threshold)
        assert (v.confidence > 0.5) == v.is_anomalous


def test_same_seed_same_model(sample_data, tiny_settings, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=8, seed=11)
    a = train(sample_data, tmp_path / "a.safetensors", cfg, tiny_settings)
    b = train(sample_data, tmp_path / "b.safetensors", cfg, tiny_settings)
    assert a.version == b.version
    ta, tb = (
        load_checkpoint(tmp_path / "a.safetensors")[0],
        load_checkpoint(tmp_path / "b.safetensors")[0],
    )
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
