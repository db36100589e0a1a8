"""Runtimes side by side: eager torch, torch with its best CPU settings, and each exported
runtime, on the same model and inputs, in interleaved turns (so a slow minute of the machine
hurts every runtime alike), against the machine's own fp32 peak measured in the same run.

    python -m bench.runtimes --variants crad crad-s --batches 1 8 32
    python -m bench.runtimes --device cuda --batches 1 8 32 128     # on a GPU machine

Each row: images per second (the median over turns), the ratio to eager torch at the same batch
size, the model's FLOPs per image (counted by torch's FlopCounterMode on the scoring graph:
2 per multiply-add, convolutions and matrix products), the achieved GFLOP/s and that as a share
of the peak, a large fp32 matrix product at the same thread count. Speed needs no training:
the head is untrained, the backbone is the real Lite0 (its weights shape the exported graph's
constants exactly as a trained model's do). Inputs are uint8 at the model's size: decoding is
not timed. Reduced-precision rows (int8 under each exported runtime, OpenVINO's bf16 where the
CPU has it) are speed only, against the same fp32 peak; their quality on a real model is the
precision gate's (`python -m model.export --precision int8 --data DIR`).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from model.evaluation.precision_gate import images_per_second
from model.inference.allocator import keep_activations_on_heap
from model.inference.graph import ScoringGraph, export_onnx
from model.inference.quantize import quantize_int8
from model.inference.runtimes import (
    OnnxRuntime,
    OpenVinoRuntime,
    TorchRuntime,
    gpu_providers,
    installed,
    onnx_providers,
    openvino_has_bf16,
)
from model.net.backbone import build_backbone
from model.net.config import DECODERS, HeadConfig
from model.net.grad import GRADHead

SIZE = 224


def peak_gflops(seconds: float = 3.0, n: int = 2048, device: str = "cpu") -> float:
    """The machine's fp32 ceiling here: the best rate of an n x n matrix product (on a GPU,
    n = 8192 and synchronised, TF32 off: the fp32 figure, not the tensor cores')."""
    dev = torch.device(device)
    if dev.type == "cuda":
        n = 8192
        torch.backends.cuda.matmul.allow_tf32 = False
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def flops_per_image(graph: ScoringGraph) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        graph(torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8))
    return float(counter.get_total_flops())


class ChannelsLast(TorchRuntime):
    """Torch's best CPU settings measured here: channels-last tensors for the oneDNN
    convolutions, under inference mode."""

    name = "torch-channels-last"

    def __init__(self, graph: ScoringGraph) -> None:
        super().__init__(graph.to(memory_format=torch.channels_last), torch.device("cpu"))

    def run(self, batch: torch.Tensor):  # type: ignore[override]
        with torch.inference_mode():
            return super().run(batch.contiguous(memory_format=torch.channels_last))


def gpu_runtimes(graph: ScoringGraph, workdir: Path, device: torch.device) -> dict[str, Callable]:
    """On a GPU: torch as it serves (channels-last; fp32, and the gated fp16 and bf16
    autocast), torch compiled with CUDA graphs in fp16 (`reduce-overhead`: one launch per batch
    instead of one per kernel), and ONNX Runtime on TensorRT or CUDA where `onnxruntime-gpu`
    is installed."""
    onnx = export_onnx(graph, workdir / "graph.onnx")
    found: dict[str, Callable] = {"torch": TorchRuntime(graph, device).run}
    for precision in ("fp16", "bf16"):  # the gated autocast choices (speed only here)
        found[f"torch {precision}"] = TorchRuntime(copy.deepcopy(graph), device, precision).run
    compiled = TorchRuntime(copy.deepcopy(graph), device, "fp16")
    compiled.graph = torch.compile(compiled.graph, mode="reduce-overhead", dynamic=False)
    found["torch-compiled fp16"] = compiled.run
    if installed("onnxruntime") and gpu_providers():
        found["onnxruntime " + gpu_providers()[0]] = OnnxRuntime(
            onnx, "fp32", onnx_providers(device, workdir)
        ).run
    return found


def runtimes_for(graph: ScoringGraph, workdir: Path, reduced: bool) -> dict[str, Callable]:
    onnx = export_onnx(graph, workdir / "graph.onnx")
    found: dict[str, Callable] = {"torch": TorchRuntime(graph, torch.device("cpu")).run}
    found["torch-channels-last"] = ChannelsLast(copy.deepcopy(graph)).run  # its own weights
    if installed("onnxruntime"):
        found["onnxruntime"] = OnnxRuntime(onnx).run
    if installed("openvino"):
        found["openvino"] = OpenVinoRuntime(onnx, workdir).run
    if reduced:
        found.update(reduced_runtimes(onnx, workdir))
    return found


def reduced_runtimes(onnx: Path, workdir: Path) -> dict[str, Callable]:
    """int8 under each exported runtime, and OpenVINO's bf16 where the CPU has it: speed only.
    The int8 ranges are calibrated on random images here (speed does not depend on them);
    what a real model's quality does in int8 is the precision gate's to say."""
    found: dict[str, Callable] = {}
    if not installed("onnxruntime"):  # the quantiser is ONNX Runtime's
        return found
    rng = np.random.default_rng(0)
    calibration = [rng.integers(0, 255, (4, 3, SIZE, SIZE), dtype=np.uint8) for _ in range(2)]
    int8 = quantize_int8(onnx, calibration, workdir / "graph-int8.onnx")
    found["onnxruntime int8"] = OnnxRuntime(int8, "int8").run
    nncf = None
    if installed("nncf"):  # OpenVINO's own quantiser, the same scope (the decoder)
        nncf = quantize_int8(onnx, calibration, workdir / "graph-int8-nncf.onnx", tool="nncf")
        found["onnxruntime int8 (nncf)"] = OnnxRuntime(nncf, "int8").run
    if installed("openvino"):
        found["openvino int8"] = OpenVinoRuntime(int8, workdir, "int8").run
        if nncf is not None:
            found["openvino int8 (nncf)"] = OpenVinoRuntime(nncf, workdir, "int8").run
        if openvino_has_bf16():
            found["openvino bf16"] = OpenVinoRuntime(onnx, workdir, "bf16").run
    return found


def rate(run: Callable, batch: int, seconds: float) -> float:
    x = torch.randint(0, 255, (batch, 3, SIZE, SIZE), dtype=torch.uint8)
    return images_per_second(run, x, seconds)


def bench_variant(variant: str, args: argparse.Namespace, peak: float) -> list[dict]:
    torch.manual_seed(0)
    backbone = build_backbone().eval()
    head = GRADHead(HeadConfig(channels=backbone.info.channels, variant=variant)).eval()
    graph = ScoringGraph(backbone, head, SIZE).eval()
    flops = flops_per_image(graph)
    with tempfile.TemporaryDirectory() as tmp:
        device = torch.device(args.device)
        if device.type == "cuda":
            runs = gpu_runtimes(graph, Path(tmp), device)
        else:
            runs = runtimes_for(graph, Path(tmp), args.reduced)
        seen: dict[tuple[str, int], list[float]] = {}
        for turn in range(args.turns):
            for name, run in runs.items():
                for b in args.batches:
                    seen.setdefault((name, b), []).append(rate(run, b, args.seconds))
            print(f"{variant}: turn {turn + 1}/{args.turns} done", flush=True)
    rows = []
    for (name, b), rates in seen.items():
        ips = statistics.median(rates)
        eager = statistics.median(seen[("torch", b)])
        gflops = ips * flops / 1e9
        rows.append(
            {
                "variant": variant,
                "runtime": name,
                "batch": b,
                "images_per_s": round(ips, 2),
                "vs_eager": round(ips / eager, 2),
                "gflop_per_image": round(flops / 1e9, 2),
                "gflop_per_s": round(gflops, 1),
                "share_of_peak": round(gflops / peak, 3),
                "turns": [round(r, 2) for r in rates],
            }
        )
    return rows


def table(rows: list[dict], peak: float) -> str:
    lines = [
        f"fp32 peak (2048 x 2048 matrix product, best of the run's start and end, "
        f"{torch.get_num_threads()} threads): "
        f"{peak:.0f} GFLOP/s",
        "",
        "| model | runtime | batch | images/s | x eager | GFLOP/image | GFLOP/s | of peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['runtime']} | {r['batch']} | {r['images_per_s']:.1f} | "
            f"{r['vs_eager']:.2f} | {r['gflop_per_image']:.2f} | {r['gflop_per_s']:.0f} | "
            f"{r['share_of_peak']:.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.runtimes", description=__doc__)
    p.add_argument("--variants", nargs="+", choices=sorted(DECODERS), default=["crad", "crad-s"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=4.0, help="per runtime, batch and turn")
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    p.add_argument(
        "--no-reduced", dest="reduced", action="store_false", help="fp32 rows only (no int8, bf16)"
    )
    args = p.parse_args(argv)
    keep_activations_on_heap()  # what every Inspector does: torch measured as it serves
    peak = peak_gflops(device=args.device)
    rows = [r for v in args.variants for r in bench_variant(v, args, peak)]
    later = peak_gflops(
        device=args.device
    )  # the machine's speed drifts: the higher of the two is the ceiling
    if later > peak:
        peak = later
        for r in rows:
            r["share_of_peak"] = round(r["gflop_per_s"] / peak, 3)
    print(table(rows, peak))
    if args.json:
        args.json.write_text(json.dumps({"peak_gflops": peak, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
