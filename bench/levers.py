"""Screen the detection-quality levers: each arm trained over seeds, evaluated, one table.

    python -m bench.levers run --data ../shared/data/industrial --out runs/levers \\
        --arms baseline standardise --seeds 0 1
    python -m bench.levers table            # the Markdown table for bench/RESULTS.md

An arm is one lever away from the spec (`ARMS`; the options are `model.train`'s). Each (arm,
seed) trains the screening model (`--variant crad-s`, 40 epochs, learning rate x0.1 at 30,
batch 16: the issue's screening schedule, 2.7x cheaper than the default decoder), evaluates it
with `model.evaluate` on the test images, measures eager-torch throughput at batch 1 and the
scoring graph's GFLOP per image, and writes a summary (the figures the table shows, the
command, the checkpoint's version) into `bench/levers/ARM-sSEED.json`. Those summaries are
committed: a screen spans several sessions (each arm is about an hour of this CPU), and the
table is always made from what a script measured, never typed in.

`--confirm` trains the arms on the default model instead (the default decoder at its spec
length: CRAD, 50 epochs, x0.1 at 40, batch 16, the schedule of the README's default run), the
issue's confirmation of what the screen found; its summaries go to `bench/levers/confirm/`,
beside the screen's and never mixed with them in one table:

    python -m bench.levers run --confirm --data ../shared/data/industrial --arms standardise \
        --seeds 0
    python -m bench.levers table --confirm

An arm that changes only how a map becomes a score (`rescore`) reuses the baseline's weights of
the same seed, recalibrated with its rule (training does not depend on the score), so the
comparison isolates the score.

Run-to-run spread is as large as most single changes (bench.seeds): an arm is judged on the
mean of its seeds with their spread beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.runtimes import flops_per_image
from bench.seeds import pick
from bench.throughput import measure
from model.evaluation.run import evaluate
from model.inference.checkpoint import load_checkpoint, read_meta
from model.inference.inspector import Inspector
from model.net.config import DECODERS, DEFAULT_VARIANT, TrainConfig
from model.settings import ModelSettings
from model.training.options import TrainOptions
from model.training.run import train
from schemas import CheckpointMeta

RESULTS = Path(__file__).resolve().parent / "levers"
VARIANT, EPOCHS, STEP_EPOCHS, BATCH = "crad-s", 40, 30, 16  # the screening schedule


@dataclass(frozen=True)
class Schedule:
    """How an arm is trained: the screen's cheap schedule, or the default model's."""

    name: str
    variant: str
    epochs: int
    step_epochs: int
    batch_size: int = BATCH


SCREEN = Schedule("screen", VARIANT, EPOCHS, STEP_EPOCHS)
CONFIRM = Schedule("confirm", DEFAULT_VARIANT, DECODERS[DEFAULT_VARIANT].reference_epochs, 40)


@dataclass(frozen=True)
class Arm:
    """One lever away from the spec: `TrainOptions` and `ModelSettings` fields to change."""

    name: str
    what: str
    options: dict[str, object] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)
    rescore: bool = False  # the baseline's weights, scored and calibrated by another rule


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("baseline", "the spec: taps 8+16, grids 8/4, raw features, pool-max score"),
        Arm("taps-4-8-16", "taps at strides 4+8+16, 28 x 28 grid", {}, {"tap_strides": (4, 8, 16)}),
        Arm(
            "taps-8-16-32",
            "taps at strides 8+16+32, 28 x 28 grid",
            {},
            {"tap_strides": (8, 16, 32)},
        ),
        Arm("standardise", "features standardised per channel", {"standardise": True}),
        Arm("dropout", "dropout 0.2 on the fused reads, and jitter", {"read_dropout": 0.2}),
        Arm(
            "dropout-no-jitter",
            "dropout 0.2 on the fused reads instead of jitter",
            {"read_dropout": 0.2, "jitter": False},
        ),
        Arm("grids-16-8", "local grid 16, global grid 8", {"local_grid": 16, "global_grid": 8}),
        Arm(
            "standardise-grids-16-8",
            "features standardised per channel, and local grid 16, global grid 8",
            {"standardise": True, "local_grid": 16, "global_grid": 8},
        ),
        Arm(
            "top-1pct",
            "image score: mean of the map's top 1 % (baseline weights)",
            {"image_score": "top-1pct"},
            rescore=True,
        ),
    )
}


def train_arm(arm: Arm, seed: int, args: argparse.Namespace) -> Path:
    """The arm's checkpoint for this seed, trained unless it is already there."""
    sched: Schedule = args.schedule
    root = args.out if sched is SCREEN else args.out / sched.name
    ckpt = root / arm.name / f"seed-{seed}" / "model.safetensors"
    if ckpt.is_file():
        return ckpt
    settings = ModelSettings(device=args.device, **arm.settings)
    if arm.rescore:
        tensors, meta = load_checkpoint(train_arm(ARMS["baseline"], seed, args))
        parent = meta.model_copy(update=arm.options)
        options = TrainOptions(init_from=(tensors, parent), provenance={"weights_of": meta.version})
        cfg = TrainConfig(epochs=0, seed=seed, batch_size=sched.batch_size)
    else:
        options = TrainOptions(variant=sched.variant, **arm.options)  # type: ignore[arg-type]
        cfg = TrainConfig(
            epochs=args.epochs or sched.epochs,
            step_epochs=args.step_epochs or sched.step_epochs,
            batch_size=sched.batch_size,
            seed=seed,
        )
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    train(args.data, ckpt, cfg, settings, options)
    return ckpt


def class_figures(c: dict) -> dict[str, object]:
    keys = ("image_auroc", "pixel_auroc", "aupro", "fpr_at_threshold", "recall_at_threshold")
    return {k: c[k] for k in keys} | {"by_defect": c.get("image_auroc_by_defect", {})}


def summarise(arm: Arm, seed: int, meta: CheckpointMeta, report: dict, cost: dict) -> dict:
    """What the table needs of one run, and where it came from."""
    return {
        "arm": arm.name,
        "seed": seed,
        "what": arm.what,
        "version": meta.version,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "schedule": {"variant": meta.variant, "epochs": meta.training.get("epochs")},
        "best_epoch": meta.training.get("best_epoch"),
        "train_seconds": cost["train_seconds"],
        "images_per_s_batch_1": cost["images_per_s"],
        "gflop_per_image": cost["gflop"],
        "heldout_images": dict(meta.heldout_images),
        "mean": {k: report["mean"][k] for k in report["mean"]},
        "classes": {c: class_figures(m) for c, m in report["classes"].items()},
    }


def run_one(arm: Arm, seed: int, args: argparse.Namespace) -> dict:
    """Train (or reuse), evaluate, measure: the run's summary, also written to the results."""
    ckpt = train_arm(arm, seed, args)
    inspector = Inspector.from_checkpoint(ckpt, args.device)
    report = evaluate(inspector, args.data, ckpt.parent / "eval")
    training = inspector.meta.training
    if arm.rescore:  # the weights, and so their training time, are the baseline's
        training = read_meta(train_arm(ARMS["baseline"], seed, args)).training
    cost = {
        "train_seconds": training.get("train_seconds"),
        "images_per_s": measure(inspector.backbone, inspector.head, 1, inspector.device, 5.0),
        "gflop": flops_per_image(inspector.graph().cpu()) / 1e9,
    }
    summary = summarise(arm, seed, inspector.meta, report, cost)
    summary["command"] = "python -m bench.levers " + " ".join(sys.argv[1:])
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{arm.name}-s{seed}.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


# -- the table -----------------------------------------------------------------------------

COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mean image AUROC", ("mean", "image_auroc")),
    ("mean pixel AUROC", ("mean", "pixel_auroc")),
    ("mean AUPRO", ("mean", "aupro")),
    ("magnetic_tile image", ("classes", "magnetic_tile", "image_auroc")),
    ("magnetic_tile pixel", ("classes", "magnetic_tile", "pixel_auroc")),
    ("crack", ("classes", "magnetic_tile", "by_defect", "crack")),
    ("magnetic_tile FPR at threshold", ("classes", "magnetic_tile", "fpr_at_threshold")),
    ("mean recall at threshold", ("mean", "recall_at_threshold")),
)


def cell(values: list[float], digits: int = 3) -> str:
    """Mean of the seeds, with the half-range when there are several."""
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return "—"
    mean = f"{np.mean(v):.{digits}f}"
    return mean if len(v) == 1 else f"{mean} ± {(max(v) - min(v)) / 2:.{digits}f}"


def arm_row(name: str, runs: list[dict]) -> str:
    figures = [cell([pick(r, path) for r in runs]) for _, path in COLUMNS]
    cost = [
        cell([pick(r, ("train_seconds",)) for r in runs], 0),
        cell([pick(r, ("images_per_s_batch_1",)) for r in runs], 1),
        cell([pick(r, ("gflop_per_image",)) for r in runs], 2),
    ]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    return f"| {name} | {seeds} | " + " | ".join(figures + cost) + " |"


def table(results: Path) -> str:
    """Every arm with a summary in `results`, in `ARMS` order (unknown names last)."""
    runs: dict[str, list[dict]] = {}
    for f in sorted(results.glob("*.json")):
        s = json.loads(f.read_text())
        runs.setdefault(s["arm"], []).append(s)
    order = [a for a in ARMS if a in runs] + sorted(set(runs) - set(ARMS))
    head = ["arm", "seeds", *(h for h, _ in COLUMNS), "training s", "img/s b1 (torch)", "GFLOP/img"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [arm_row(a, sorted(runs[a], key=lambda r: r["seed"])) for a in order]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.levers", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train, evaluate and summarise arms over seeds")
    run.add_argument("--data", type=Path, required=True)
    run.add_argument("--out", type=Path, default=Path("runs/levers"))
    run.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=["baseline"])
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    run.add_argument("--device", default="auto")
    run.add_argument("--epochs", type=int, help="the schedule's length unless given")
    run.add_argument("--step-epochs", type=int, help="x0.1 at this epoch (the schedule's)")
    for cmd in (run, sub.add_parser("table", help="the Markdown table of the results")):
        cmd.add_argument("--results", type=Path, help="summaries' folder (the schedule's)")
        cmd.add_argument(
            "--confirm", action="store_true", help="the default model's schedule, not the screen's"
        )
    args = p.parse_args(argv)
    args.schedule = CONFIRM if args.confirm else SCREEN
    if args.results is None:
        args.results = RESULTS / "confirm" if args.confirm else RESULTS
    if args.command == "run":
        for arm in args.arms:
            for seed in args.seeds:
                s = run_one(ARMS[arm], seed, args)
                print(f"{arm} seed {seed}: mean image {s['mean']['image_auroc']:.3f}", flush=True)
    print(table(args.results))


if __name__ == "__main__":
    main()
