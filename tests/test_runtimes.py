"""Every runtime serves the model the checkpoint holds: the exported graph under ONNX Runtime and
OpenVINO gives eager torch's image scores within 1e-4 of themselves, the same verdicts at the
calibrated thresholds and maps whose pixel AUROC differs by less than 0.001, on the generated
sample always and on real images where present; and the check that says so catches an export
that changed the graph's meaning (normalisation, resize mode, refinement threshold)."""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.data import mvtec
from model.inference import runtimes
from model.inference.graph import ScoringGraph, cached_onnx, graph_key
from model.inference.graph_export import ExportError, check, check_set, export_verified
from model.inference.inspector import Inspector, ServeOptions
from model.inference.parity import PIXEL_AUROC_TOL, SCORE_RTOL
from model.net.config import TrainConfig
from model.training.run import train

EXPORTED = [r for r in ("onnxruntime", "openvino") if runtimes.installed(r)]
pytestmark = pytest.mark.skipif(not EXPORTED, reason="no exported runtime installed")


def served(ckpt: Path, runtime: str, cache: Path) -> Inspector:
    inspector = Inspector.from_checkpoint(ckpt, "cpu", serve=ServeOptions(runtime, cache))
    assert inspector.runtime.name == runtime
    return inspector


@pytest.mark.parametrize("runtime", EXPORTED)
def test_each_runtime_decides_as_torch_on_the_sample(tiny_ckpt, sample_data, tmp_path, runtime):
    items = mvtec.test_items(sample_data)
    reference = Inspector.from_checkpoint(tiny_ckpt, "cpu")
    parity = check(reference, served(tiny_ckpt, runtime, tmp_path), items)
    assert parity.ok, parity.problems()
    assert parity.max_score_rel < SCORE_RTOL and parity.verdict_flips == 0
    assert parity.pixel_auroc_delta is not None and parity.pixel_auroc_delta < PIXEL_AUROC_TOL
    assert parity.images == len(items) >= 20


@pytest.fixture(scope="module")
def hazelnut_ckpt(industrial: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short model of a real class (parity on real maps needs maps that mean something),
    trained on 20 of its normal images."""
    from model.settings import ModelSettings

    root = tmp_path_factory.mktemp("real")
    good = root / "hazelnut" / "train" / "good"
    good.mkdir(parents=True)
    for img in sorted((industrial / "hazelnut" / "train" / "good").iterdir())[:20]:
        (good / img.name).symlink_to(img)
    for part in ("test", "ground_truth"):
        (root / "hazelnut" / part).symlink_to(industrial / "hazelnut" / part)
    out = root.parent / "hazelnut.safetensors"
    settings = ModelSettings(device="cpu", cache_dir=root.parent / "features")
    train(root, out, TrainConfig(epochs=2, batch_size=8, seed=3), settings)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("runtime", EXPORTED)
def test_each_runtime_decides_as_torch_on_real_images(hazelnut_ckpt, industrial, tmp_path, runtime):
    items = check_set(hazelnut_ckpt, industrial, 24, tmp_path)
    assert {t.defect_type for t in items} >= {"good", "crack"}
    report = export_verified(hazelnut_ckpt, tmp_path / "graphs", runtime, items)
    assert report.parity.ok and report.parity.pixel_auroc_delta is not None
    assert report.path.name == f"{graph_key(hazelnut_ckpt.read_bytes())}.onnx"


# -- the check catches a change of meaning ------------------------------------------------


def _changed(kind: str, reference: Inspector, monkeypatch) -> ScoringGraph:
    """The reference's graph with one thing changed the way an export bug would change it."""
    backbone, head = copy.deepcopy(reference.backbone), copy.deepcopy(reference.head)
    if kind == "normalisation":
        backbone.mean.mul_(1.02)
    elif kind == "refinement threshold":
        head.cfg = dataclasses.replace(head.cfg, refine_threshold=1.5 * head.cfg.refine_threshold)
    elif kind == "resize mode":
        bilinear = F.interpolate
        monkeypatch.setattr(
            F, "interpolate", lambda x, size=None, **_: bilinear(x, size=size, mode="nearest")
        )
    return ScoringGraph(backbone, head, reference.meta.image_size).eval()


@pytest.mark.parametrize("kind", ["normalisation", "refinement threshold", "resize mode"])
def test_the_check_catches_an_export_that_changed_the_meaning(
    tiny_ckpt, sample_data, tmp_path, monkeypatch, kind
):
    reference = Inspector.from_checkpoint(tiny_ckpt, "cpu")
    wrong = _changed(kind, reference, monkeypatch)
    path = cached_onnx(wrong, tiny_ckpt.read_bytes(), tmp_path)
    monkeypatch.undo()  # the export is made; the reference scores as it always does
    bad = Inspector.from_checkpoint(tiny_ckpt, "cpu")
    bad.runtime = (
        runtimes.OnnxRuntime(path)
        if "onnxruntime" in EXPORTED
        else runtimes.OpenVinoRuntime(path, tmp_path)
    )
    parity = check(reference, bad, mvtec.test_items(sample_data))
    assert not parity.ok
    assert parity.max_score_rel > 10 * SCORE_RTOL, parity


# -- choosing, caching, falling back -------------------------------------------------------


def test_auto_takes_an_exported_runtime_on_the_cpu_and_torch_on_a_gpu():
    assert runtimes.choose("auto", torch.device("cpu")) in EXPORTED
    assert runtimes.choose("auto", torch.device("cuda")) == "torch"
    with pytest.raises(ValueError, match="unknown runtime"):
        runtimes.choose("tensorrt-ish", torch.device("cpu"))


def test_on_a_gpu_onnxruntime_needs_a_gpu_provider(monkeypatch, caplog, tmp_path):
    """The CPU wheel installed here has no GPU provider: onnxruntime asked for on CUDA falls
    back to torch; with one (onnxruntime-gpu, stated here because it cannot be installed
    without a GPU), it serves, TensorRT first with its engines kept in the graph cache."""
    cuda = torch.device("cuda")
    if "onnxruntime" not in EXPORTED:
        pytest.skip("onnxruntime not installed")
    assert runtimes.gpu_providers() == []
    with caplog.at_level(logging.WARNING, logger="model.inference.runtimes"):
        assert runtimes.choose("onnxruntime", cuda) == "torch"
        assert runtimes.choose("openvino", cuda) == "torch"
    assert "no GPU provider" in caplog.text and "CPU only" in caplog.text
    assert runtimes.onnx_providers(torch.device("cpu"), tmp_path) == ["CPUExecutionProvider"]
    monkeypatch.setattr(
        runtimes, "gpu_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    )
    assert runtimes.choose("onnxruntime", cuda) == "onnxruntime"
    trt, plain, cpu = runtimes.onnx_providers(cuda, tmp_path)
    assert trt[0] == "TensorrtExecutionProvider"
    assert trt[1]["trt_engine_cache_path"] == str(tmp_path / "tensorrt")
    assert (plain, cpu) == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_a_missing_runtime_falls_back_to_torch_with_a_log_line(monkeypatch, caplog):
    # An uninstalled package cannot be made to appear here on demand: `installed` is told so.
    monkeypatch.setattr(runtimes, "installed", lambda name: name == "torch")
    with caplog.at_level(logging.WARNING, logger="model.inference.runtimes"):
        assert runtimes.choose("openvino", torch.device("cpu")) == "torch"
    assert "openvino is not installed" in caplog.text
    assert runtimes.choose("auto", torch.device("cpu")) == "torch"


def test_an_export_is_made_once_per_checkpoint_content(tiny_ckpt, tiny_ckpt_b, tmp_path):
    first = served(tiny_ckpt, EXPORTED[0], tmp_path)
    (path,) = tmp_path.glob("*.onnx")
    made = path.stat().st_mtime_ns
    again = served(tiny_ckpt, EXPORTED[0], tmp_path)
    assert path.stat().st_mtime_ns == made and again.version == first.version
    served(tiny_ckpt_b, EXPORTED[0], tmp_path)
    assert len(list(tmp_path.glob("*.onnx"))) == 2  # another checkpoint, another key
    x = torch.randint(0, 255, (3, 3, 224, 224), dtype=torch.uint8)
    maps, scores = first.runtime.run(x)  # a batch size the export never saw
    assert maps.shape == (3, 224, 224) and scores.shape == (3,)
    assert np.isfinite(scores).all()


def test_a_failed_check_removes_the_export(tiny_ckpt, sample_data, tmp_path, monkeypatch):
    monkeypatch.setattr("model.inference.graph_export.check", lambda a, b, items: _bad())
    with pytest.raises(ExportError, match="changes the model: 2 of 9 verdicts differ"):
        export_verified(tiny_ckpt, tmp_path, EXPORTED[0], mvtec.test_items(sample_data)[:2])
    assert not list(tmp_path.glob("*.onnx"))


def _bad():
    from model.inference.parity import Parity

    return Parity(images=9, max_score_rel=0.0, max_map_abs=0.0, verdict_flips=2,
                  pixel_auroc_delta=None)  # fmt: skip


def test_every_program_offers_the_same_runtimes():
    from typing import get_args

    from model.settings import ModelSettings
    from worker.settings import WorkerSettings

    for settings in (ModelSettings, WorkerSettings):
        offered = get_args(settings.model_fields["runtime"].annotation)
        assert offered == ("auto", *runtimes.RUNTIMES), settings.__name__
        assert settings.model_fields["runtime"].default == "auto"
