"""`python -m model.train --data DIR --out CKPT`: one unified GRAD model for every class.

Reads `train/good` of each class only. A seeded share of it is held out: the epoch with the
lowest held-out reconstruction loss is kept, and the per-class thresholds are calibrated on it
(`model.training`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.metrics.calibration import calibration_report
from model.net.config import DECODERS, DEFAULT_VARIANT, HeadConfig, TrainConfig
from model.net.scoring import IMAGE_SCORES
from model.settings import ModelSettings
from model.training.fit import SCHEDULES
from model.training.options import THRESHOLD_RULES, TrainOptions
from model.training.run import train


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="MVTec-layout directory")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    p.add_argument(
        "--epochs",
        type=int,
        help="default: the spec's length for the decoder (grad 100, crad and crad-s 50)",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--variant", choices=sorted(DECODERS), default=DEFAULT_VARIANT)
    p.add_argument("--classes", nargs="*", help="train on these classes only")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=d.schedule,
        help="learning-rate schedule: the spec's StepLR, or cosine annealing over --epochs",
    )
    p.add_argument("--step-epochs", type=int, default=d.step_epochs, help="StepLR period")
    p.add_argument("--heldout-fraction", type=float, default=d.heldout_fraction)
    p.add_argument(
        "--heldout-min",
        type=int,
        default=d.heldout_min,
        help="held-out images per class at least (capped at half the class)",
    )
    p.add_argument("--target-fpr", type=float, default=d.target_fpr)
    p.add_argument(
        "--threshold-ratio",
        type=float,
        default=d.threshold_ratio,
        help="refinement threshold as a fraction of the mean feature energy",
    )
    p.add_argument("--threshold-rule", choices=THRESHOLD_RULES, default="energy")
    p.add_argument("--no-jitter", action="store_true", help="ablation: disable coordinate jitter")
    add_lever_arguments(p)
    p.add_argument(
        "--snapshot-every",
        type=int,
        default=0,
        help="also export the best-so-far model every N epochs",
    )
    p.add_argument(
        "--keep-last",
        action="store_true",
        help="also export the final epoch's model (as <out>-last) beside the selected one",
    )
    p.add_argument("--backbone", help="timm architecture (default from GRAD_BACKBONE)")
    p.add_argument("--backbone-weights", type=Path, help="weights file for the backbone")
    p.add_argument(
        "--image-size",
        type=int,
        help="input side in pixels, a multiple of 16 (default from GRAD_IMAGE_SIZE: 224)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 or auto")
    return p


def add_lever_arguments(p: argparse.ArgumentParser) -> None:
    """The detection-quality levers (bench/RESULTS.md, "Levers"); each defaults to the spec."""
    h = HeadConfig(channels=1)
    g = p.add_argument_group("levers", "each at the spec's value unless given")
    g.add_argument("--taps", type=int, nargs="+", help="backbone strides tapped (spec: 8 16)")
    g.add_argument("--grid-stride", type=int, help="the feature grid's stride, one of the taps")
    g.add_argument("--local-grid", type=int, default=h.local_grid, help="local grid side")
    g.add_argument("--global-grid", type=int, default=h.global_grid, help="global grid side")
    g.add_argument(
        "--standardise",
        action="store_true",
        help="standardise features per channel with the training features' statistics",
    )
    g.add_argument(
        "--read-dropout",
        type=float,
        default=h.read_dropout,
        help="dropout on the fused grid reads during training (e.g. 0.2)",
    )
    g.add_argument("--image-score", choices=IMAGE_SCORES, default=h.image_score)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    overrides = {
        k: v
        for k, v in {
            "backbone": args.backbone,
            "backbone_weights": args.backbone_weights,
            "image_size": args.image_size,
            "device": args.device,
            "tap_strides": tuple(args.taps) if args.taps else None,
            "grid_stride": args.grid_stride,
        }.items()
        if v is not None
    }
    options = TrainOptions(
        variant=args.variant,
        threshold_rule=args.threshold_rule,
        jitter=not args.no_jitter,
        snapshot_every=args.snapshot_every,
        keep_last=args.keep_last,
        local_grid=args.local_grid,
        global_grid=args.global_grid,
        standardise=args.standardise,
        read_dropout=args.read_dropout,
        image_score=args.image_score,
    )
    settings = ModelSettings(**overrides)
    meta = train(args.data, args.out, config_from_args(args), settings, options, args.classes)
    print(
        f"wrote {args.out} (version {meta.version}, best epoch {meta.training['best_epoch']}, "
        f"{meta.training['train_seconds']} s training)"
    )
    for line in calibration_report(meta.calibration):
        print(line)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The schedule a command line asked for; its length is the decoder's unless given."""
    return TrainConfig(
        epochs=args.epochs if args.epochs is not None else DECODERS[args.variant].reference_epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        step_epochs=args.step_epochs,
        schedule=args.schedule,
        heldout_fraction=args.heldout_fraction,
        heldout_min=args.heldout_min,
        target_fpr=args.target_fpr,
        threshold_ratio=args.threshold_ratio,
    )


if __name__ == "__main__":
    main()
