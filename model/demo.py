"""`python -m model.demo`: train and evaluate GRAD end to end on embedded defaults.

Without `--data` it generates the procedural sample set (see `model.data.sample`), so it runs on a
fresh machine with nothing but the installed package.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.data.sample import make_sample
from model.evaluation.run import evaluate, format_table
from model.inference.inspector import Inspector, ServeOptions
from model.net.config import TrainConfig
from model.settings import ModelSettings
from model.training.run import train


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m model.demo", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="MVTec-layout directory (default: generated sample)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    settings = ModelSettings()
    data = args.data or make_sample(args.out / "sample")
    ckpt = args.out / "model.safetensors"
    meta = train(data, ckpt, TrainConfig(epochs=args.epochs, batch_size=args.batch_size), settings)
    print(
        f"trained {meta.version} on {sum(meta.train_images.values())} images "
        f"in {meta.training['train_seconds']} s"
    )
    inspector = Inspector.from_checkpoint(
        ckpt,
        settings.device,
        settings.backbone_weights,
        serve=ServeOptions(settings.runtime, settings.graph_cache),
    )
    report = evaluate(inspector, data, args.out / "eval")
    print(format_table(report))
    print(
        f"checkpoint: {ckpt}\nreport: {args.out / 'eval' / 'report.json'}\n"
        f"ROC curves: {args.out / 'eval' / 'roc.png'}\nheatmaps: {args.out / 'eval' / 'heatmaps'}"
    )


if __name__ == "__main__":
    main()
