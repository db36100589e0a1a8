"""The precision gate: may this model be served in a reduced precision? Measured, not assumed.

For one checkpoint, one runtime and one reduced precision (`model.inference.precision`), on a
data set in MVTec layout:

1. the reduced form is made: for int8, the exported graph is quantised with its activation
   ranges calibrated on the checkpoint's own held-out normal training images (the split it was
   trained with, rebuilt from its training record), never on test images;
2. the test images are scored in fp32 and in the reduced precision by the same runtime, and
   each class's image AUROC and pixel AUROC compared (the quality the field measures), with the
   verdicts at the calibrated thresholds counted as well (what a line would see change);
3. speed at batch 1 and 8, in interleaved turns: eager torch in fp32, the runtime in fp32, the
   runtime in the reduced precision;
4. the verdict: refused when the mean image AUROC drops by more than 0.005 or the mean pixel
   AUROC by more than 0.01 (`MAX_IMAGE_DROP`, `MAX_PIXEL_DROP`; also any single class by more
   than twice that, so a mean cannot hide one class's loss). A pass puts the judged graph in
   place and writes the approval the runtimes look for (`model.inference.precision.approved`);
   a refusal removes what step 1 made, and any earlier approval of that runtime and precision:
   the last judgement stands.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from model.core.clock import utc_now
from model.data.images import read_image, to_batch
from model.data.mvtec import test_items, train_images
from model.evaluation.run import image_labels, score_items
from model.inference.graph import cached_onnx, onnx_path
from model.inference.inspector import Inspector
from model.inference.precision import (
    Approval,
    PrecisionError,
    approval_path,
    check_supported,
    write_approval,
)
from model.inference.quantize import own_tool, quantize_int8
from model.inference.runtimes import (
    Runtime,
    build_runtime,
    cpu_has_bf16,
    exported_runtime,
    openvino_has_bf16,
)
from model.metrics.curves import auroc
from model.training.split import split_heldout

MAX_IMAGE_DROP = 0.005
MAX_PIXEL_DROP = 0.01
CLASS_FACTOR = 2.0  # one class may lose at most this times the mean's limit


@dataclass(frozen=True)
class ClassQuality:
    images: int
    image_auroc: float
    pixel_auroc: float
    flagged: int  # images above the class threshold


@dataclass(frozen=True)
class GateLimits:
    image_drop: float = MAX_IMAGE_DROP
    pixel_drop: float = MAX_PIXEL_DROP


@dataclass
class GateReport:
    version: str
    runtime: str
    precision: str
    data: str
    calibration_images: int
    limits: GateLimits
    fp32: dict[str, ClassQuality] = field(default_factory=dict)
    reduced: dict[str, ClassQuality] = field(default_factory=dict)
    verdict_flips: int = 0
    speed: dict[str, dict[int, float]] = field(default_factory=dict)  # name -> batch -> img/s
    passed: bool = False
    problems: list[str] = field(default_factory=list)
    quantiser: str = ""  # int8 only: "scope, tool" (`GateOptions.int8_scope`, `int8_tool`)

    def mean(self, which: dict[str, ClassQuality], metric: str) -> float:
        return float(np.mean([getattr(q, metric) for q in which.values()]))

    def drop(self, metric: str) -> float:
        return self.mean(self.fp32, metric) - self.mean(self.reduced, metric)


@dataclass(frozen=True)
class GateOptions:
    limits: GateLimits = GateLimits()
    seconds: float = 4.0  # per speed turn, runtime and batch size
    turns: int = 3
    # Which operations int8 takes (`model.inference.quantize.SCOPES`): the decoder's, measured
    # to keep every verdict where `all` (the backbone too) lost image AUROC (bench/RESULTS.md).
    int8_scope: str = "decoder"
    # Which quantiser makes it (`model.inference.quantize.TOOLS`), or "auto": the runtime's
    # own (`own_tool`: NNCF for OpenVINO, ONNX Runtime's for ONNX Runtime).
    int8_tool: str = "auto"
    # Where the model is judged: a CPU, or a GPU for torch's fp16 / bf16 (and ONNX Runtime's
    # GPU providers), as it will be served.
    device: str = "cpu"


def judge(
    checkpoint: Path,
    data: Path,
    runtime: str,
    precision: str,
    cache_dir: Path,
    options: GateOptions = GateOptions(),
    progress: Callable[[str], None] | None = None,
) -> GateReport:
    """Make the reduced form of `checkpoint` for `runtime`, measure it against fp32 on `data`,
    and approve it or remove it; `progress` is told each step in a line."""
    say = progress or (lambda line: None)
    if options.int8_tool == "auto":  # resolved once: what makes the graph is what the report says
        options = replace(options, int8_tool=own_tool(runtime))
    blob = checkpoint.read_bytes()
    fp32 = Inspector.from_checkpoint(blob, options.device)  # once; the three runtimes share it
    check_supported(runtime, precision, fp32.device)
    torch_fp32 = fp32.runtime
    fp32.runtime = build_runtime(runtime, fp32.graph(), fp32.device, blob, cache_dir)
    calibration = held_out_normals(fp32, data)
    made = make_reduced(fp32, blob, (runtime, precision), cache_dir, calibration, options, say)
    reduced = copy.copy(fp32)
    reduced.runtime = made
    report = GateReport(
        fp32.version, runtime, precision, str(data), len(calibration), options.limits
    )  # fmt: skip
    measure_quality(report, fp32, reduced, data, say)
    runs = {
        "torch fp32": torch_fp32.run,
        f"{runtime} fp32": fp32.runtime.run,
        f"{runtime} {precision}": made.run,
    }
    size = fp32.meta.image_size
    report.speed = measure_speed(runs, size, options.seconds, options.turns, say)
    if precision == "int8":
        report.quantiser = f"{options.int8_scope}, {options.int8_tool}"
    decide(report)
    record(report, blob, cache_dir)
    return report


def held_out_normals(inspector: Inspector, data: Path) -> list[Path]:
    """The checkpoint's held-out normal images, rebuilt from `data` with the split rule its
    training record states (so calibration never sees an image the head was trained on, nor a
    test image)."""
    t = inspector.meta.training
    classes = sorted(inspector.meta.calibration) or None
    _, held = split_heldout(
        train_images(data, classes), t["heldout_fraction"], t["heldout_min"], t["seed"]
    )
    return [p for c in sorted(held) for p in held[c]]


def make_reduced(
    fp32: Inspector,
    blob: bytes,
    served: tuple[str, str],
    cache_dir: Path,
    calibration: list[Path],
    options: GateOptions,
    say: Callable[[str], None],
) -> Runtime:
    """The runtime in its reduced precision (`served`: runtime, precision). For int8, the
    quantised graph is written as a candidate beside its place in the cache and run from there:
    what a worker may load under that name changes only once the gate passed (`record`)."""
    runtime, precision = served
    native = openvino_has_bf16() if runtime == "openvino" else cpu_has_bf16()
    if precision == "bf16" and fp32.device.type == "cpu" and not native:
        raise PrecisionError("this CPU has no bf16 (AVX512-BF16 or AMX): nothing to judge")
    if precision != "int8":
        return build_runtime(runtime, fp32.graph(), fp32.device, blob, cache_dir, precision)
    source = cached_onnx(fp32.graph(), blob, cache_dir)
    say(
        f"quantising to int8 ({options.int8_scope}, {options.int8_tool}), calibrated on "
        f"{len(calibration)} held-out normal images"
    )
    candidate = _candidate(cache_dir, blob, runtime)
    batches = _batches(calibration, fp32.meta.image_size)
    quantize_int8(source, batches, candidate, options.int8_scope, options.int8_tool)
    return exported_runtime(runtime, candidate, fp32.device, cache_dir, "int8")


def _candidate(cache_dir: Path, blob: bytes, runtime: str) -> Path:
    final = onnx_path(cache_dir, blob, "int8", runtime)
    return final.with_name(final.stem + ".candidate.onnx")


def _batches(paths: list[Path], size: int, batch: int = 8) -> Iterator[np.ndarray]:
    for i in range(0, len(paths), batch):
        yield to_batch([read_image(p) for p in paths[i : i + batch]], size).numpy()


def measure_quality(
    report: GateReport, fp32: Inspector, reduced: Inspector, data: Path, say: Callable
) -> None:
    """Each class's image and pixel AUROC in both precisions, and the verdicts that change."""
    for c in sorted(fp32.meta.calibration):
        items = test_items(data, [c])
        if not items:
            continue
        threshold = fp32.meta.calibration[c].threshold
        say(f"scoring {c}: {len(items)} test images, fp32 and {report.precision}")
        scored = [score_items(inspector, items, 16) for inspector in (fp32, reduced)]
        flags = [s[0] > threshold for s in scored]
        report.verdict_flips += int(np.sum(flags[0] != flags[1]))
        for (scores, maps, masks), flagged, into in zip(
            scored, flags, (report.fp32, report.reduced), strict=True
        ):
            into[c] = ClassQuality(
                images=len(items),
                image_auroc=auroc(image_labels(masks), scores),
                pixel_auroc=auroc(masks.ravel(), maps.astype(np.float32).ravel()),
                flagged=int(flagged.sum()),
            )


def measure_speed(
    runs: dict[str, Callable], size: int, seconds: float, turns: int, say: Callable
) -> dict[str, dict[int, float]]:
    """Images per second of each run at batch 1 and 8, the median of interleaved turns."""
    rates: dict[str, dict[int, list[float]]] = {n: {1: [], 8: []} for n in runs}
    for turn in range(turns):
        say(f"speed, turn {turn + 1} of {turns}")
        for b in (1, 8):
            x = torch.randint(0, 255, (b, 3, size, size), dtype=torch.uint8)
            for name, run in runs.items():
                rates[name][b].append(images_per_second(run, x, seconds))
    return {n: {b: statistics.median(v) for b, v in per.items()} for n, per in rates.items()}


def images_per_second(run: Callable, x: torch.Tensor, seconds: float) -> float:
    """One turn: `run` on the batch `x` for at least `seconds` (and twice), after a warm-up."""
    run(x)  # warm-up (allocator, lazy initialisation)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        run(x)
        n += 1
    return n * len(x) / (time.perf_counter() - t0)


def decide(report: GateReport) -> None:
    """Pass or refuse on the limits, each problem said in numbers."""
    lim = report.limits
    for metric, limit in (("image_auroc", lim.image_drop), ("pixel_auroc", lim.pixel_drop)):
        drop = report.drop(metric)
        if drop > limit:
            report.problems.append(f"mean {metric} drops by {drop:.4f} (> {limit})")
        for c, before in report.fp32.items():
            d = getattr(before, metric) - getattr(report.reduced[c], metric)
            if d > CLASS_FACTOR * limit:
                report.problems.append(f"{c}: {metric} drops by {d:.4f} (> {CLASS_FACTOR * limit})")
    report.passed = not report.problems


def record(report: GateReport, blob: bytes, cache_dir: Path) -> None:
    """The last judgement stands. A pass puts the judged int8 graph in its place and writes the
    approval; a refusal removes the candidate, the runtime's int8 graph and its approval."""
    path = approval_path(cache_dir, blob, report.runtime, report.precision)
    int8 = report.precision == "int8"
    final = onnx_path(cache_dir, blob, "int8", report.runtime)
    candidate = _candidate(cache_dir, blob, report.runtime)
    if not report.passed:
        path.unlink(missing_ok=True)
        if int8:
            final.unlink(missing_ok=True)
            candidate.unlink(missing_ok=True)
        return
    if int8:
        os.replace(candidate, final)
    approval = Approval(
        version=report.version,
        runtime=report.runtime,
        precision=report.precision,
        passed=True,
        image_auroc_drop=report.drop("image_auroc"),
        pixel_auroc_drop=report.drop("pixel_auroc"),
        judged_at=utc_now().isoformat(),
    )
    write_approval(path, approval)


def as_json(report: GateReport) -> dict:
    """The report as JSON-ready data (what `model.export --report` writes)."""
    quality = {
        name: {c: vars(q) for c, q in which.items()}
        for name, which in (("fp32", report.fp32), (report.precision, report.reduced))
    }
    return {
        "version": report.version,
        "runtime": report.runtime,
        "precision": report.precision,
        "data": report.data,
        "calibration_images": report.calibration_images,
        "quantiser": report.quantiser,
        "limits": vars(report.limits),
        "quality": quality,
        "mean_image_auroc_drop": report.drop("image_auroc"),
        "mean_pixel_auroc_drop": report.drop("pixel_auroc"),
        "verdict_flips": report.verdict_flips,
        "images_per_second": report.speed,
        "passed": report.passed,
        "problems": report.problems,
    }


def format_report(report: GateReport) -> str:
    """A table a person reads: per class before and after, speed, the verdict."""
    p = report.precision
    lines = [
        f"{report.version} in {p} on {report.runtime} "
        + (f"(int8: {report.quantiser}; " if report.quantiser else "(")
        + f"calibrated on {report.calibration_images} held-out normal images), against fp32:",
        f"{'class':<16}{'images':>7}  image AUROC fp32 -> {p}   pixel AUROC fp32 -> {p}   flagged",
    ]
    for c, a in report.fp32.items():
        b = report.reduced[c]
        lines.append(
            f"{c:<16}{a.images:>7}  {a.image_auroc:.4f} -> {b.image_auroc:.4f}"
            f"{'':>10}{a.pixel_auroc:.4f} -> {b.pixel_auroc:.4f}{'':>10}{a.flagged} -> {b.flagged}"
        )
    lines.append(
        f"{'mean':<23}  drop {report.drop('image_auroc'):+.4f} (limit {report.limits.image_drop})"
        f"{'':>6}drop {report.drop('pixel_auroc'):+.4f} (limit {report.limits.pixel_drop})"
        f"   {report.verdict_flips} verdicts changed"
    )
    base = report.speed.get("torch fp32", {})
    for name, per in report.speed.items():
        rates = ", ".join(
            f"batch {b}: {r:.1f} img/s ({r / base[b]:.2f}x torch fp32)" for b, r in per.items()
        )
        lines.append(f"{name:<24}{rates}")
    lines.append(
        "PASSED: approved for serving"
        if report.passed
        else "REFUSED: " + "; ".join(report.problems)
    )
    return "\n".join(lines)
