"""Quality benchmark: one unified GRAD model on every class of a data set, measured.

    python -m bench.quality --data ../shared/data/industrial --out runs/quality-lite0-crad

Trains (or, with --ckpt, reuses) one model on all classes' `train/good`, evaluates it with
`model.evaluate` (per-class and mean image AUROC, pixel AUROC, AUPRO, FPR and recall at the
calibrated threshold), measures inference throughput (backbone plus head, batch 1 and 32) on
this machine, writes everything to OUT/quality.json and prints a row for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bench.throughput import measure
from model.evaluation.run import evaluate, format_table
from model.inference.inspector import Inspector
from model.net.config import DECODERS, DEFAULT_VARIANT, TrainConfig
from model.settings import ModelSettings
from model.training.fit import SCHEDULES
from model.training.options import THRESHOLD_RULES, TrainOptions
from model.training.run import train


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ckpt", type=Path, help="evaluate this checkpoint instead of training")
    p.add_argument("--epochs", type=int, help="default: the decoder's reference length")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--step-epochs", type=int, default=40)
    p.add_argument("--schedule", choices=SCHEDULES, default="step")
    p.add_argument("--variant", choices=sorted(DECODERS), default=DEFAULT_VARIANT)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--threshold-ratio", type=float, default=0.5)
    p.add_argument("--threshold-rule", choices=THRESHOLD_RULES, default="energy")
    p.add_argument("--no-jitter", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--throughput-seconds", type=float, default=10.0)
    args = p.parse_args(argv)

    settings = ModelSettings(backbone=args.backbone, device=args.device)
    ckpt = args.ckpt or args.out / "model.safetensors"
    if args.ckpt is None:
        cfg = TrainConfig(
            epochs=(
                args.epochs if args.epochs is not None else DECODERS[args.variant].reference_epochs
            ),
            batch_size=args.batch_size,
            seed=args.seed,
            step_epochs=args.step_epochs,
            schedule=args.schedule,
            threshold_ratio=args.threshold_ratio,
        )
        train(
            args.data,
            ckpt,
            cfg,
            settings,
            TrainOptions(
                variant=args.variant,
                threshold_rule=args.threshold_rule,
                jitter=not args.no_jitter,
            ),
        )
    insp = Inspector.from_checkpoint(ckpt, settings.device)
    report = evaluate(insp, args.data, args.out / "eval")
    print(format_table(report))
    speed = {
        f"batch_{b}": measure(
            insp.backbone, insp.head, b, insp.device, args.throughput_seconds, insp.meta.image_size
        )
        for b in (1, 32)
    }
    result = {
        "command": "python -m bench.quality " + " ".join(sys.argv[1:] if argv is None else argv),
        "version": insp.version,
        "variant": insp.meta.variant,
        "backbone": insp.meta.backbone,
        "refine_threshold": insp.meta.refine_threshold,
        "training": insp.meta.training,
        "images_per_s": speed,
        "threads": torch.get_num_threads(),
        "report": report,
    }
    (args.out / "quality.json").write_text(json.dumps(result, indent=2))
    mean, mt = report["mean"], report["classes"].get("magnetic_tile", {})
    nan = float("nan")
    cells = [
        args.out.name,
        f"{mean['image_auroc']:.3f}",
        f"{mean['pixel_auroc']:.3f}",
        f"{mean['aupro']:.3f}",
        f"{mt.get('image_auroc', nan):.3f} / {mt.get('pixel_auroc', nan):.3f}",
        f"{mean['fpr_at_threshold']:.3f} / {mean['recall_at_threshold']:.3f}",
        str(insp.meta.training.get("train_seconds")),
        f"{speed['batch_1']:.1f} / {speed['batch_32']:.1f}",
    ]
    print(
        "\n| run | mean img AUROC | mean px AUROC | mean AUPRO | magnetic_tile img / px "
        "| FPR / recall (mean) | train s | img/s b1 / b32 |"
    )
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
