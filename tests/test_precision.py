"""Reduced precision is served only where the precision gate measured that it keeps the model's
quality: the gate quantises on held-out normals only, measures against fp32, approves or
refuses in numbers; serving follows its approval and falls back to fp32 without it; OpenVINO
computes in fp32 unless asked otherwise (its default on a CPU with bf16 is bf16)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from model.data import mvtec
from model.evaluation import precision_gate as gate
from model.inference import runtimes
from model.inference.graph import onnx_path
from model.inference.inspector import Inspector, ServeOptions
from model.inference.precision import (
    PrecisionError,
    approval_path,
    approved,
    check_supported,
    supported,
)
from model.inference.runtimes import OpenVinoRuntime, cached_onnx

INT8 = [r for r in ("onnxruntime", "openvino") if runtimes.installed(r)]
pytestmark = pytest.mark.skipif(not INT8, reason="no exported runtime installed")
QUICK = gate.GateOptions(seconds=0.05, turns=1)
LENIENT = gate.GateOptions(gate.GateLimits(image_drop=1.0, pixel_drop=1.0), 0.05, 1)
# Limits no model can meet (it would have to gain a whole AUROC point): a refusal, for certain.
IMPOSSIBLE = gate.GateOptions(gate.GateLimits(image_drop=-1.0, pixel_drop=-1.0), 0.05, 1)


@pytest.fixture(scope="module")
def judged(tiny_ckpt, sample_data, tmp_path_factory) -> tuple[gate.GateReport, Path]:
    cache = tmp_path_factory.mktemp("graphs")
    return gate.judge(tiny_ckpt, sample_data, INT8[0], "int8", cache, LENIENT), cache


def test_the_gate_measures_int8_against_fp32_class_by_class(judged, sample_data):
    report, _ = judged
    assert set(report.fp32) == set(report.reduced) == {"fabric", "ring"}
    for c, before in report.fp32.items():
        after = report.reduced[c]
        assert before.images == after.images == len(mvtec.test_items(sample_data, [c]))
        assert 0.5 <= before.image_auroc <= 1.0 and 0.0 <= after.pixel_auroc <= 1.0
    # int8 changes the numbers (else nothing was quantised), a little.
    assert report.drop("pixel_auroc") != 0.0 or report.drop("image_auroc") != 0.0
    assert abs(report.drop("pixel_auroc")) < 0.1
    assert set(report.speed) == {"torch fp32", f"{INT8[0]} fp32", f"{INT8[0]} int8"}
    assert all(r > 0 for per in report.speed.values() for r in per.values())
    text = gate.format_report(report)
    assert "PASSED" in text and "fabric" in text and "x torch fp32" in text
    data = json.loads(json.dumps(gate.as_json(report)))
    assert data["passed"] is True and data["quality"]["int8"]["ring"]["images"] > 0


def test_calibration_uses_the_held_out_normals_only(tiny_ckpt, sample_data, judged):
    report, _ = judged
    inspector = Inspector.from_checkpoint(tiny_ckpt, "cpu")
    held = gate.held_out_normals(inspector, sample_data)
    assert report.calibration_images == len(held) == sum(inspector.meta.heldout_images.values())
    assert all(p.parent.name == "good" and p.parent.parent.name == "train" for p in held)
    trained_on = len(held) + sum(inspector.meta.train_images.values())
    assert trained_on == sum(len(v) for v in mvtec.train_images(sample_data).values())


def test_an_approved_model_is_served_in_int8(judged, tiny_ckpt, sample_data):
    _, cache = judged
    blob = tiny_ckpt.read_bytes()
    assert approved(cache, blob, INT8[0], "int8")
    assert onnx_path(cache, blob, "int8", INT8[0]).is_file()
    assert not list(cache.glob("*.candidate.onnx"))  # the judged graph was put in its place
    int8 = Inspector.from_checkpoint(tiny_ckpt, "cpu", serve=ServeOptions(INT8[0], cache, "int8"))
    fp32 = Inspector.from_checkpoint(tiny_ckpt, "cpu", serve=ServeOptions(INT8[0], cache))
    assert (int8.runtime.precision, fp32.runtime.precision) == ("int8", "fp32")
    items = mvtec.test_items(sample_data)[:4]
    from model.data.images import read_image

    images = [read_image(t.path) for t in items]
    a, b = fp32.inspect(images).scores, int8.inspect(images).scores
    assert not np.array_equal(a, b) and np.allclose(a, b, rtol=0.2)
    assert int8.version == fp32.version  # the checkpoint names the model in any precision


def test_a_refusal_removes_the_int8_graph_and_serving_stays_fp32(
    tiny_ckpt, sample_data, tmp_path, caplog
):
    report = gate.judge(tiny_ckpt, sample_data, INT8[0], "int8", tmp_path, IMPOSSIBLE)
    assert not report.passed and any("drops by" in p for p in report.problems)
    assert "REFUSED" in gate.format_report(report)
    blob = tiny_ckpt.read_bytes()
    assert not onnx_path(tmp_path, blob, "int8", INT8[0]).exists()
    assert not list(tmp_path.glob("*.candidate.onnx"))
    assert not approval_path(tmp_path, blob, INT8[0], "int8").exists()
    with caplog.at_level(logging.WARNING, logger="model.inference.inspector"):
        served = Inspector.from_checkpoint(
            tiny_ckpt, "cpu", serve=ServeOptions(INT8[0], tmp_path, "int8")
        )
    assert served.runtime.name == INT8[0] and served.runtime.precision == "fp32"
    assert "not approved by the precision gate" in caplog.text


def test_a_forged_or_foreign_approval_is_no_approval(tiny_ckpt, tiny_ckpt_b, judged, tmp_path):
    _, cache = judged
    assert not approved(cache, tiny_ckpt_b.read_bytes(), INT8[0], "int8")  # another model
    blob = tiny_ckpt.read_bytes()
    path = approval_path(tmp_path, blob, INT8[0], "int8")
    path.write_text("{not json")
    assert not approved(tmp_path, blob, INT8[0], "int8")
    path.write_text(json.dumps({"passed": True, "runtime": "other", "precision": "int8"}))
    assert not approved(tmp_path, blob, INT8[0], "int8")
    assert approved(tmp_path, blob, INT8[0], "fp32")  # fp32 needs no approval


def test_the_decision_says_which_figure_failed():
    q = gate.ClassQuality
    report = gate.GateReport("v", "onnxruntime", "int8", "d", 8, gate.GateLimits())
    report.fp32 = {"a": q(10, 1.000, 0.950, 3), "b": q(10, 0.990, 0.900, 3)}
    # Mean image drop 0.004 (within 0.005) but class b alone loses 0.011 (> 2 x 0.005).
    report.reduced = {"a": q(10, 1.003, 0.950, 3), "b": q(10, 0.979, 0.899, 3)}
    gate.decide(report)
    assert not report.passed
    assert report.problems == ["b: image_auroc drops by 0.0110 (> 0.01)"]
    report.problems = []
    report.reduced = {"a": q(10, 0.999, 0.945, 3), "b": q(10, 0.988, 0.893, 3)}
    gate.decide(report)
    assert report.passed, report.problems
    report.problems = []
    # Each class within twice the limit (0.018, 0.014), their mean not (0.016).
    report.reduced = {"a": q(10, 0.999, 0.942, 3), "b": q(10, 0.988, 0.886, 3)}
    report.fp32["a"] = q(10, 1.0, 0.96, 3)
    gate.decide(report)
    assert report.problems == ["mean pixel_auroc drops by 0.0160 (> 0.01)"]


def test_each_runtime_computes_only_in_what_it_can():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert supported("onnxruntime", cpu) == ("fp32", "int8")
    assert "bf16" in supported("openvino", cpu) and supported("torch", cpu) == ("fp32", "bf16")
    assert supported("torch", cuda) == ("fp32", "fp16", "bf16")
    with pytest.raises(PrecisionError, match="computes in fp32, bf16, not fp16"):
        check_supported("torch", "fp16", cpu)  # no fp16 autocast worth having on a CPU
    check_supported("openvino", "int8", cpu)
    with pytest.raises(PrecisionError, match="computes in fp32, int8, not bf16"):
        check_supported("onnxruntime", "bf16", cpu)
    with pytest.raises(PrecisionError, match="unknown precision"):
        check_supported("torch", "int4", cuda)


def test_every_program_offers_the_same_precisions():
    from typing import get_args

    from model.settings import ModelSettings
    from worker.settings import WorkerSettings

    for settings in (ModelSettings, WorkerSettings):
        offered = get_args(settings.model_fields["precision"].annotation)
        assert offered == ("fp32", "fp16", "bf16", "int8"), settings.__name__
        assert settings.model_fields["precision"].default == "fp32"


@pytest.mark.skipif(
    not runtimes.openvino_has_bf16(), reason="this CPU has no bf16 (AVX512-BF16 or AMX)"
)
def test_openvino_serves_fp32_on_a_cpu_whose_default_is_bf16(tiny_ckpt, tmp_path):
    """Without the explicit hint OpenVINO would compute this fp32 model in bf16 here."""
    inspector = Inspector.from_checkpoint(tiny_ckpt, "cpu")
    blob = tiny_ckpt.read_bytes()
    path = cached_onnx(inspector.graph(), blob, tmp_path)
    x = torch.randint(0, 255, (2, 3, 224, 224), dtype=torch.uint8)
    ref = inspector.runtime.run(x)[1]
    fp32 = OpenVinoRuntime(path, tmp_path, "fp32").run(x)[1]
    bf16 = OpenVinoRuntime(path, tmp_path, "bf16").run(x)[1]
    assert np.allclose(fp32, ref, rtol=1e-4)
    assert not np.allclose(bf16, ref, rtol=1e-4) and np.allclose(bf16, ref, rtol=0.05)


@pytest.mark.skipif(len(INT8) < 2, reason="needs both ONNX Runtime and OpenVINO")
def test_judging_one_runtime_leaves_another_runtimes_approval(judged, tiny_ckpt, sample_data):
    _, cache = judged
    blob = tiny_ckpt.read_bytes()
    before = onnx_path(cache, blob, "int8", INT8[0]).read_bytes()
    refused = gate.judge(tiny_ckpt, sample_data, INT8[1], "int8", cache, IMPOSSIBLE)
    assert not refused.passed and not approved(cache, blob, INT8[1], "int8")
    assert approved(cache, blob, INT8[0], "int8")
    assert onnx_path(cache, blob, "int8", INT8[0]).read_bytes() == before


# -- torch's autocast precisions -----------------------------------------------------------


def test_torch_serves_fp32_unless_the_gate_approved_its_autocast(tiny_ckpt, sample_data, tmp_path):
    """torch in bf16 (autocast; on a GPU also fp16) is a gated choice like the exported ones:
    without an approval it serves fp32 with the log line, after one it serves bf16 under the
    same version id, with scores near but not equal to fp32's. fp32 on torch is exact: no
    autocast anywhere (the GPU used to run fp16 convolutions ungated)."""
    from model.data.images import read_image
    from model.inference.graph import autocast_for

    assert isinstance(
        autocast_for(torch.device("cuda"), "fp32"), type(autocast_for(torch.device("cpu")))
    )
    unjudged = Inspector.from_checkpoint(
        tiny_ckpt, "cpu", serve=ServeOptions("torch", tmp_path, "bf16")
    )
    assert unjudged.runtime.precision == "fp32"
    if not runtimes.cpu_has_bf16():
        with pytest.raises(PrecisionError, match="no bf16"):
            gate.judge(tiny_ckpt, sample_data, "torch", "bf16", tmp_path, LENIENT)
        return
    report = gate.judge(tiny_ckpt, sample_data, "torch", "bf16", tmp_path, LENIENT)
    assert report.passed and set(report.speed) == {"torch fp32", "torch bf16"}
    assert approved(tmp_path, tiny_ckpt.read_bytes(), "torch", "bf16")
    bf16 = Inspector.from_checkpoint(
        tiny_ckpt, "cpu", serve=ServeOptions("torch", tmp_path, "bf16")
    )
    fp32 = Inspector.from_checkpoint(tiny_ckpt, "cpu")
    assert bf16.runtime.precision == "bf16" and bf16.version == fp32.version
    images = [read_image(t.path) for t in mvtec.test_items(sample_data)[:4]]
    a, b = fp32.inspect(images).scores, bf16.inspect(images).scores
    assert not np.allclose(a, b, rtol=1e-4) and np.allclose(a, b, rtol=0.05)


def test_the_export_command_refuses_torch_without_a_precision(tiny_ckpt, tmp_path, capsys):
    from model.export import main

    assert main([str(tiny_ckpt), "--runtime", "torch", "--out", str(tmp_path)]) == 2
    assert "nothing to export" in capsys.readouterr().err


@pytest.mark.skipif(
    not (runtimes.installed("openvino") and runtimes.installed("nncf")),
    reason="OpenVINO and NNCF (the runtimes extra) not installed",
)
def test_nncf_quantises_the_decoder_only_and_openvino_serves_it(tiny_ckpt, sample_data, tmp_path):
    """OpenVINO's own quantiser, its default (`auto`), judged like the other: its graph holds
    int8 pairs on the decoder's convolutions and none on the backbone's (the scope is
    honoured), the report says which tool made it, and the approved graph is served with
    scores close to fp32's. ONNX Runtime keeps its own tool."""
    import onnx

    from model.inference.quantize import own_tool

    assert (own_tool("openvino"), own_tool("onnxruntime")) == ("nncf", "onnxruntime")
    options = gate.GateOptions(LENIENT.limits, 0.05, 1)  # int8_tool "auto"
    report = gate.judge(tiny_ckpt, sample_data, "openvino", "int8", tmp_path, options)
    assert report.passed and report.quantiser == "decoder, nncf"
    assert "decoder, nncf" in gate.format_report(report)
    blob = tiny_ckpt.read_bytes()
    graph = onnx.load(str(onnx_path(tmp_path, blob, "int8", "openvino"))).graph
    consumers = {i for n in graph.node if n.op_type == "DequantizeLinear" for i in n.output}
    quantised = {
        n.name for n in graph.node if n.op_type == "Conv" and any(i in consumers for i in n.input)
    }
    assert quantised and all(n.startswith("/head/decoder/") for n in quantised)
    int8 = Inspector.from_checkpoint(
        tiny_ckpt, "cpu", serve=ServeOptions("openvino", tmp_path, "int8")
    )
    fp32 = Inspector.from_checkpoint(tiny_ckpt, "cpu")
    from model.data.images import read_image

    images = [read_image(t.path) for t in mvtec.test_items(sample_data)[:4]]
    a, b = fp32.inspect(images).scores, int8.inspect(images).scores
    assert not np.array_equal(a, b) and np.allclose(a, b, rtol=0.2)
    with pytest.raises(ValueError, match="unknown int8 tool"):
        from model.inference.quantize import quantize_int8

        quantize_int8(tmp_path / "x.onnx", [], tmp_path / "y.onnx", tool="other")
