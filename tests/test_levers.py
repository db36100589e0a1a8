"""The detection-quality levers (issue: detection quality): each option changes the computation it
names and nothing else, is recorded in the checkpoint, and is honoured by every runtime.

- multi-scale taps: a stride-4 tap adds its channels to the feature grid (averaged over each
  grid cell), a stride-32 tap its context, a stride-4 grid raises the grid to 56 x 56;
- per-channel standardisation: the training features come out zero-mean and unit-variance per
  channel, with statistics that travel in the checkpoint;
- dropout on the fused grid reads: acts in training only;
- grid resolution: the grids' shapes;
- the top-1 % image score: equals its formula on a known map.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from model.data import mvtec
from model.data.feature_cache import cached_features
from model.inference import runtimes
from model.inference.checkpoint import load_checkpoint
from model.inference.graph_export import check
from model.inference.inspector import Inspector, ServeOptions
from model.inference.parity import SCORE_RTOL
from model.net.backbone import build_backbone, to_grid
from model.net.config import DECODERS, DEFAULT_VARIANT, HeadConfig, TrainConfig
from model.net.grad import GRADHead
from model.net.scoring import image_scores, top_count
from model.net.standardise import STD_FLOOR, channel_statistics
from model.settings import ModelSettings
from model.training.options import TrainOptions
from model.training.run import train

EXPORTED = [r for r in ("onnxruntime", "openvino") if runtimes.installed(r)]
LITE0_STAGE_CHANNELS = {4: 24, 8: 40, 16: 112, 32: 320}  # tf_efficientnet_lite0's stage ends


def _images(size: int = 224, n: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)


# -- multi-scale taps ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("taps", "grid", "side"), [((4, 8, 16), 8, 28), ((8, 16, 32), 8, 28), ((4, 8, 16), 4, 56)]
)
def test_taps_set_the_feature_grids_channels_and_side(taps, grid, side):
    backbone = build_backbone(reductions=taps, grid_stride=grid)
    x = backbone(_images())
    want = sum(LITE0_STAGE_CHANNELS[r] for r in taps)
    assert backbone.info.tap_channels == tuple(LITE0_STAGE_CHANNELS[r] for r in taps)
    assert x.shape == (2, want, side, side)


def test_a_stride_4_tap_is_its_stage_averaged_over_each_grid_cell(lite0):
    spec, multi = lite0, build_backbone(reductions=(4, 8, 16))
    images = _images()
    x_spec, x_multi = spec(images), multi(images)
    stage4 = multi.net.forward_intermediates(
        (images.float() / 255 - multi.mean) / multi.std,
        indices=[multi.info.taps[0]],
        intermediates_only=True,
        stop_early=True,
    )[0]
    torch.testing.assert_close(x_multi[:, :24], F.avg_pool2d(stage4, 2))
    # The spec's channels are still there, unchanged, after the new ones.
    torch.testing.assert_close(x_multi[:, 24:], x_spec)


def test_to_grid_averages_finer_and_interpolates_coarser_taps():
    fine = torch.arange(16.0).view(1, 1, 4, 4)
    assert to_grid(fine, (2, 2)).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    coarse = torch.tensor([[[[0.0, 1.0]]]]).expand(1, 1, 2, 2)
    up = to_grid(coarse, (3, 3))
    assert up[0, 0, 0].tolist() == [0.0, 0.5, 1.0]  # align_corners=True, as the spec's resize


def test_bad_taps_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="must be one of the taps"):
        build_backbone(reductions=(8, 16), grid_stride=4)
    with pytest.raises(ValueError, match="distinct and increasing"):
        build_backbone(reductions=(16, 8))
    with pytest.raises(ValidationError, match="must be one of the taps"):
        ModelSettings(tap_strides=(8, 16), grid_stride=4)
    with pytest.raises(ValidationError, match="multiple of the coarsest"):
        ModelSettings(tap_strides=(8, 16, 32), image_size=240)


def test_taps_are_read_from_the_environment_comma_separated(monkeypatch):
    monkeypatch.setenv("GRAD_TAP_STRIDES", "4, 8,16")
    assert ModelSettings().tap_strides == (4, 8, 16)


# -- per-channel standardisation -----------------------------------------------------------


def test_channel_statistics_are_the_per_channel_mean_and_spread():
    gen = torch.Generator().manual_seed(1)
    scale = torch.tensor([0.1, 1.0, 30.0]).view(1, 3, 1, 1)
    x = torch.randn(70, 3, 5, 5, generator=gen) * scale + 4.0
    mean, std = channel_statistics(x)
    flat = x.permute(1, 0, 2, 3).reshape(3, -1).double().numpy()
    np.testing.assert_allclose(mean.numpy(), flat.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(std.numpy(), flat.std(axis=1), rtol=1e-5)
    # A channel constant on the training features is floored, never divided by zero.
    x[:, 0] = 2.0
    _, std = channel_statistics(x)
    assert float(std[0]) == pytest.approx(STD_FLOOR * float(std.median()))


def test_standardising_makes_the_training_features_zero_mean_unit_variance(
    lite0, sample_data, tiny_settings
):
    paths = mvtec.train_images(sample_data)["fabric"]
    feats = cached_features(lite0, paths, 224, torch.device("cpu"), tiny_settings.cache_dir)
    spread = feats.std(dim=(0, 2, 3))
    assert float(spread.max() / spread.min()) > 5  # the channels' scales differ widely
    head = GRADHead(HeadConfig(channels=feats.shape[1], standardise=True))
    head.set_feature_statistics(*channel_statistics(feats))
    z = head.prepare(feats)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(z.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        z.std(dim=(0, 2, 3), correction=0), torch.ones(z.shape[1]), atol=1e-3, rtol=0
    )
    # Without the lever the head works on the features as they are.
    plain = GRADHead(HeadConfig(channels=feats.shape[1]))
    assert plain.prepare(feats) is feats
    assert "feature_mean" not in plain.state_dict()  # old checkpoints still load strictly
    with pytest.raises(ValueError, match="does not standardise"):
        plain.set_feature_statistics(*channel_statistics(feats))


# -- dropout on the fused reads, grid sizes ------------------------------------------------


def test_read_dropout_acts_in_training_only():
    torch.manual_seed(0)
    cfg = HeadConfig(channels=8, feature_size=6, variant="crad-s", jitter_prob=0.0)
    plain, noisy = GRADHead(cfg), GRADHead(replace(cfg, read_dropout=0.5))
    noisy.load_state_dict(plain.state_dict())
    z = torch.randn(4, 8, 6, 6)
    plain.eval(), noisy.eval()
    torch.testing.assert_close(noisy.reconstruct(z), plain.reconstruct(z))  # identity in eval
    plain.train(), noisy.train()
    torch.manual_seed(1)
    first = noisy.reconstruct(z)
    torch.manual_seed(2)
    assert not torch.allclose(first, noisy.reconstruct(z))  # a new mask every pass
    assert not torch.allclose(first, plain.reconstruct(z))
    torch.manual_seed(1)
    torch.testing.assert_close(plain.reconstruct(z), plain.reconstruct(z))  # no noise without it
    with pytest.raises(ValueError, match="read dropout"):
        replace(cfg, read_dropout=1.0)


def test_grid_sizes_shape_the_grids():
    head = GRADHead(HeadConfig(channels=8, feature_size=6, local_grid=16, global_grid=8))
    assert head.local_grid.shape == (8, 16, 16)
    assert head.global_grid.shape == (1, 8 * 6 * 6, 8, 8)
    with pytest.raises(ValueError, match="grids need"):
        HeadConfig(channels=8, local_grid=1)


# -- the image score -----------------------------------------------------------------------


def test_the_top_1pct_score_is_the_mean_of_the_highest_1pct_of_the_map():
    gen = torch.Generator().manual_seed(3)
    maps = torch.rand(3, 224, 224, generator=gen)
    maps[1, 100:104, 10:200] += 5.0  # a thin line: 760 pixels, more than 1 %
    k = top_count(224)
    assert k == round(0.01 * 224 * 224) == 502
    want = [np.sort(m.flatten().numpy())[-k:].mean() for m in maps]
    got = image_scores(maps, 224, rule="top-1pct")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    # The thin line fills the top 1 % (502 of its 760 pixels) but only 4 rows of any
    # 32 x 32 window, which the spec's pool dilutes with 28 normal rows.
    spec = image_scores(maps, 224)
    assert float(got[1] - got[0]) > 4.5 > float(spec[1] - spec[0])
    with pytest.raises(ValueError, match="unknown image score"):
        image_scores(maps, 224, rule="top-5pct")


# -- all levers in one checkpoint, served by every runtime ---------------------------------


@pytest.fixture(scope="module")
def lever_ckpt(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained on the sample with every lever away from the spec's value."""
    out = tmp_path_factory.mktemp("levers") / "levers.safetensors"
    settings = ModelSettings(
        device="cpu",
        cache_dir=tmp_path_factory.mktemp("lever-features"),
        tap_strides=(4, 8, 16),
    )
    options = TrainOptions(
        variant="crad-s",
        local_grid=16,
        global_grid=8,
        standardise=True,
        read_dropout=0.2,
        image_score="top-1pct",
    )
    train(sample_data, out, TrainConfig(epochs=2, batch_size=8, seed=5), settings, options)
    return out


def test_the_checkpoint_records_every_lever(lever_ckpt):
    tensors, meta = load_checkpoint(lever_ckpt)
    assert meta.tap_strides == (4, 8, 16) and meta.grid_stride == 8
    assert meta.tap_channels == (24, 40, 112) and meta.channels == 176
    assert (meta.local_grid, meta.global_grid) == (16, 8)
    assert meta.standardise and meta.image_score == "top-1pct"
    assert meta.training["read_dropout"] == 0.2
    # The refinement threshold is derived in the standardised space: half its unit energy.
    assert 0.4 < meta.refine_threshold < 0.6
    assert tensors["feature_std"].shape == (176,) and float(tensors["feature_std"].min()) > 0
    inspector = Inspector.from_checkpoint(lever_ckpt, "cpu")
    assert inspector.backbone.info.reductions == (4, 8, 16)
    assert inspector.head.cfg.image_score == "top-1pct" and inspector.head.cfg.standardise


def test_the_served_score_follows_the_checkpoints_levers(lever_ckpt, sample_data):
    """Scores come from the recorded rule on standardised features: recomputed by hand from the
    pieces, they match; with the spec's score or without standardisation they do not."""
    inspector = Inspector.from_checkpoint(lever_ckpt, "cpu")
    items = mvtec.test_items(sample_data)[:6]
    from model.data.images import read_image, to_batch
    from model.net.scoring import anomaly_maps

    batch = to_batch([read_image(t.path) for t in items], 224)
    served = inspector.inspect(batch).scores
    head = inspector.head
    with torch.no_grad():
        x = inspector.backbone(batch)
        z = head.prepare(x)
        maps = anomaly_maps(z, head(z), 224)
        by_hand = image_scores(maps, 224, rule="top-1pct").numpy()
        raw = image_scores(anomaly_maps(x, head(x), 224), 224, rule="top-1pct").numpy()
    np.testing.assert_allclose(served, by_hand, rtol=1e-5)
    assert not np.allclose(served, image_scores(maps, 224).numpy(), rtol=1e-3)
    assert not np.allclose(served, raw, rtol=1e-3)


@pytest.mark.skipif(not EXPORTED, reason="no exported runtime installed")
@pytest.mark.parametrize("runtime", EXPORTED)
def test_every_runtime_serves_the_levers_as_torch_does(lever_ckpt, sample_data, tmp_path, runtime):
    reference = Inspector.from_checkpoint(lever_ckpt, "cpu")
    served = Inspector.from_checkpoint(lever_ckpt, "cpu", serve=ServeOptions(runtime, tmp_path))
    assert served.runtime.name == runtime
    parity = check(reference, served, mvtec.test_items(sample_data))
    assert parity.ok, parity.problems()
    assert parity.max_score_rel < SCORE_RTOL and parity.verdict_flips == 0


# -- the screen ----------------------------------------------------------------------------


def test_the_screen_trains_evaluates_and_tabulates_each_arm(sample_data, tmp_path):
    """`bench.levers run` on the sample (one epoch): a summary per (arm, seed) with what the
    table shows; the rescored arm scores the baseline's very weights by its own rule."""
    from bench import levers

    results = tmp_path / "results"
    argv = ["run", "--data", str(sample_data), "--out", str(tmp_path / "runs"), "--device", "cpu",
            "--arms", "baseline", "top-1pct", "--seeds", "0", "--epochs", "1",
            "--results", str(results)]  # fmt: skip
    levers.main(argv)
    base = json.loads((results / "baseline-s0.json").read_text())
    top = json.loads((results / "top-1pct-s0.json").read_text())
    assert base["version"] != top["version"] and base["arm"] == "baseline"
    assert 0.0 <= base["mean"]["image_auroc"] <= 1.0 and base["gflop_per_image"] > 0.5
    assert set(base["classes"]) == {"fabric", "ring"} and base["images_per_s_batch_1"] > 0
    assert top["train_seconds"] == base["train_seconds"]  # the same training made both
    runs = tmp_path / "runs"
    t_base, _ = load_checkpoint(runs / "baseline" / "seed-0" / "model.safetensors")
    t_top, m_top = load_checkpoint(runs / "top-1pct" / "seed-0" / "model.safetensors")
    assert m_top.image_score == "top-1pct" and m_top.training["weights_of"] == base["version"]
    assert all(torch.equal(t_base[k], t_top[k]) for k in t_base) and t_base.keys() == t_top.keys()
    rows = levers.table(results).splitlines()
    assert rows[2].startswith("| baseline | 0 | ") and rows[3].startswith("| top-1pct | 0 | ")
    assert f"{base['mean']['image_auroc']:.3f}" in rows[2]
    # The confirmation: the default decoder, its checkpoints and summaries apart from the screen's.
    confirmed = tmp_path / "confirmed"
    levers.main([*argv[:7], "--confirm", "--arms", "baseline", "--seeds", "0", "--epochs", "1",
                 "--results", str(confirmed)])  # fmt: skip
    crad = json.loads((confirmed / "baseline-s0.json").read_text())
    assert crad["schedule"] == {"variant": DEFAULT_VARIANT, "epochs": 1} != base["schedule"]
    assert (runs / "confirm" / "baseline" / "seed-0" / "model.safetensors").is_file()
    assert levers.CONFIRM.epochs == DECODERS[DEFAULT_VARIANT].reference_epochs


def test_every_screen_arm_names_options_that_exist():
    """An arm is a set of `TrainOptions` / `ModelSettings` fields: a misspelt or invalid one
    must fail here, not an hour into a screen's run."""
    from bench.levers import ARMS
    from model.settings import ModelSettings
    from model.training.options import TrainOptions

    for arm in ARMS.values():
        options = TrainOptions(variant="crad-s", **arm.options)  # type: ignore[arg-type]
        for key, value in arm.options.items():
            assert getattr(options, key) == value, (arm.name, key)
        settings = ModelSettings(device="cpu", **arm.settings)
        for key, value in arm.settings.items():
            assert getattr(settings, key) == value, (arm.name, key)
    combined = ARMS["standardise-grids-16-8"].options
    assert combined == {"standardise": True, "local_grid": 16, "global_grid": 8}
